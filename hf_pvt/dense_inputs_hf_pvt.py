"""Detector inputs, read and checked once for every detection head (RetinaNet, Mask R-CNN).

- `image_sizes`: each image's own (height, width) inside a padded batch, from the image processor's `pixel_mask`;
- `pad_shapes`: those sizes padded to the size divisor, MMDetection's `pad_shape`, which decides the valid anchors;
- `detection_targets`: Transformers' DETR-style `labels` (normalised center_x, center_y, width, height relative to
  `pixel_values`) as absolute (x1, y1, x2, y2) float32 input-pixel boxes, with instance masks for Mask R-CNN, and
  every check a caller's labels need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

# How far outside the image a normalised box may reach, in image widths and heights: a corner beyond -1 or 2 is no
# box on this image (most likely pixel coordinates), and huge finite values would overflow the loss to NaN.
_BOX_REACH = 1.0


def image_sizes(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
    """`(batch, 2)` (height, width) of each image without its bottom/right padding; the whole input without a mask."""
    # Read before the encoder's own checks, so the shape must be right here already.
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"pixel_values must be a (batch, channels, height, width) torch tensor, got "
            f"{type(pixel_values).__name__}; call the image processor with return_tensors='pt' (or torch.from_numpy)."
        )
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must be a (batch, channels, height, width) tensor, got shape {tuple(pixel_values.shape)}; "
            "use the image processor, or add a batch dimension with pixel_values[None]."
        )
    batch_size, _, height, width = pixel_values.shape
    if pixel_mask is None:
        return torch.tensor([[height, width]], device=pixel_values.device).expand(batch_size, 2)
    if not isinstance(pixel_mask, torch.Tensor) or tuple(pixel_mask.shape) != (batch_size, height, width):
        shape = tuple(pixel_mask.shape) if isinstance(pixel_mask, torch.Tensor) else type(pixel_mask).__name__
        raise ValueError(
            f"pixel_mask must be a (batch, height, width) tensor matching pixel_values "
            f"{tuple(pixel_values.shape)}, got {shape}; pass the image processor's pixel_mask, or none for "
            "unpadded images."
        )
    valid = pixel_mask.bool()
    sizes = torch.stack((valid.any(dim=2).sum(dim=1), valid.any(dim=1).sum(dim=1)), dim=1)
    if bool((sizes == 0).any()):
        raise ValueError("pixel_mask marks an image with no valid pixel: every image needs at least one.")
    return sizes


def pad_shapes(sizes: torch.Tensor, input_size: Sequence[int], size_divisor: int = 32) -> list[tuple[int, int]]:
    """MMDetection's `pad_shape` of each image: its size rounded up to `size_divisor`, capped by the batch's padded
    `input_size` (height, width). Anchors centred beyond it are neither positive nor negative."""
    padded = torch.minimum((sizes + size_divisor - 1) // size_divisor * size_divisor, sizes.new_tensor(input_size))
    return [tuple(shape) for shape in padded.tolist()]


def check_class_ids(classes: torch.Tensor, num_labels: int, where: str) -> None:
    """Raise a TypeError unless `classes` hold integers, a ValueError unless they are ids in [0, num_labels)."""
    if not classes.numel():
        return  # no ids, whatever the dtype: `[]` (an image without objects) becomes an empty float tensor
    if classes.dtype == torch.bool or classes.is_complex() or classes.is_floating_point():
        raise TypeError(
            f"{where}: class_labels must hold integer class ids, got dtype {classes.dtype}; give an integer tensor "
            "(e.g. torch.tensor([2, 0]), or .long() on whole-numbered floats)."
        )
    if classes.dtype in (torch.uint16, torch.uint32, torch.uint64):
        # No min/max kernels for these, and 2**63 or more would wrap negative as int64: numpy holds them exactly.
        values = classes.detach().cpu().numpy()
        low, high = int(values.min()), int(values.max())
    else:
        low, high = (int(v) for v in torch.aminmax(classes.long()))
    if low < 0 or high >= num_labels:
        raise ValueError(
            f"{where}: class_labels must be integer ids in [0, {num_labels}), got ids from {low} to {high}; map the "
            "dataset's category ids to contiguous ids (id2label) first."
        )


def _numbers(value: Any, name: str, where: str) -> torch.Tensor:
    """`value` (a tensor, an array or nested lists of numbers) as a tensor, or a TypeError naming the field."""
    if value is None:
        raise TypeError(
            f"{where}['{name}'] is None: give a tensor (shape (0,) or (0, 4) for an image without objects)."
        )
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"{where}['{name}'] must be a tensor, a numpy array or nested lists of numbers, got "
            f"{type(value).__name__} ({str(error).splitlines()[0][:80]})."
        ) from None


def _check_boxes(boxes: torch.Tensor, where: str) -> torch.Tensor:
    """Normalised (center_x, center_y, width, height) boxes as float32, or an error saying what is wrong with them."""
    if boxes.numel() == 0:
        return torch.zeros(boxes.shape, dtype=torch.float32)  # no boxes, whatever the dtype
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"{where}: boxes must hold real numbers, got dtype {boxes.dtype}.")
    boxes = boxes.to(torch.float32)
    if not bool(torch.isfinite(boxes).all()) or bool((boxes[:, 2:] < 0).any()):
        raise ValueError(f"{where}: boxes must be finite with non-negative width and height.")
    centers, sizes = boxes[:, :2], boxes[:, 2:]
    reach = torch.cat((centers - sizes / 2, centers + sizes / 2), dim=1).abs().amax().item()
    if not reach <= 1 + _BOX_REACH:
        raise ValueError(
            f"{where}: boxes must be normalised (center_x, center_y, width, height) in units of pixel_values' width "
            f"and height, as the image processor gives them (values about 0..1), but a box reaches {reach:.3g}: pixel "
            "coordinates? Divide by the image's width and height (and convert corners to centre and size)."
        )
    return boxes


def detection_targets(
    labels: Any, pixel_values: torch.Tensor, num_labels: int, masks: bool = False
) -> list[dict[str, torch.Tensor]]:
    """DETR-style `labels` -> per image `{"boxes": (n, 4) float32 absolute (x1, y1, x2, y2) input pixels,
    "class_labels": (n,) long}` (and `"masks": (n, height, width)` bool with `masks=True`), or a ValueError naming
    the image and what to change.

    `labels` holds one dict per image with `class_labels` `(n,)` and `boxes` `(n, 4)` normalised (center_x,
    center_y, width, height) relative to `pixel_values`' height and width, as the image processor returns them;
    for instance segmentation (`masks=True`) also `masks` `(n, height, width)`, binary, at `pixel_values`' size.
    Boxes are float32 whatever the pixels' dtype (bfloat16 would move a corner near 1000 px by up to 2 px). Boxes of
    zero width or height are dropped, with their masks: such a box overlaps no anchor or proposal, so a detector's
    low-quality match would give it every one, with infinite regression targets (MMDetection's COCO loader never
    passes one on).
    """
    if not isinstance(labels, (list, tuple)) or len(labels) != pixel_values.shape[0]:
        raise ValueError(
            f"labels must be a list with one dict per image ({pixel_values.shape[0]}), got "
            f"{type(labels).__name__} of length {len(labels) if isinstance(labels, (list, tuple)) else '-'}."
        )
    device = pixel_values.device
    height, width = pixel_values.shape[-2:]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
    targets = []
    for index, target in enumerate(labels):
        where = f"labels[{index}]"
        if not isinstance(target, Mapping) or not {"class_labels", "boxes"} <= set(target):
            raise ValueError(
                f"{where} must be a dict with 'class_labels' (n,) and 'boxes' (n, 4), normalised "
                "(center_x, center_y, width, height): the image processor's `labels`."
            )
        boxes = _numbers(target["boxes"], "boxes", where)
        classes = _numbers(target["class_labels"], "class_labels", where)
        if boxes.numel() == 0 and boxes.ndim == 1:
            boxes = boxes.reshape(0, 4)  # `[]`: an image without objects
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or classes.shape != boxes.shape[:1]:
            raise ValueError(
                f"{where}: boxes must be (n, 4) and class_labels (n,), got {tuple(boxes.shape)} and "
                f"{tuple(classes.shape)}."
            )
        check_class_ids(classes, num_labels, where)
        boxes = _check_boxes(boxes, where).to(device)
        centers, sizes = boxes[:, :2], boxes[:, 2:]
        corners = torch.cat((centers - sizes / 2, centers + sizes / 2), dim=1) * scale
        keep = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
        image_target = {"boxes": corners[keep], "class_labels": classes.to(device=device, dtype=torch.long)[keep]}
        if masks:
            image_target["masks"] = _instance_masks(target, index, boxes.shape[0], (height, width), device)[keep]
        targets.append(image_target)
    return targets


def _instance_masks(
    target: Mapping[str, Any], index: int, count: int, size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """The checked `(count, height, width)` bool masks of one image's labels."""
    if "masks" not in target:
        raise ValueError(
            f"labels[{index}] needs 'masks' (n, height, width), binary at pixel_values' size, beside "
            "'class_labels' and 'boxes': the image processor's `labels` for instance segmentation."
        )
    masks = _numbers(target["masks"], "masks", f"labels[{index}]").to(device)
    if tuple(masks.shape) != (count, *size):
        raise ValueError(
            f"labels[{index}]: masks must be (n, height, width) = {(count, *size)}, one per box at pixel_values' "
            f"size, got {tuple(masks.shape)}."
        )
    if masks.numel() and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(f"labels[{index}]: masks must be binary (0/1 or bool).")
    return masks.bool()


__all__ = ["check_class_ids", "detection_targets", "image_sizes", "pad_shapes"]
