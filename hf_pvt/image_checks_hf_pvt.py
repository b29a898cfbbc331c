"""Input checking for `HfPvtImageProcessor`: every argument, image, map, annotation and model output it is given is
read here, and refused with a ValueError or TypeError that names it and the fix, before the pipeline sees it.

The processor module holds the pipeline itself (resize, flip, crop, rescale, normalise, pad, post-process).
"""

from __future__ import annotations

import base64
import binascii
import os
import urllib.request
from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers.image_utils import (
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    is_pil_image,
    is_torch_tensor,
    is_valid_image,
)

if TYPE_CHECKING:
    import torch

# PIL modes whose pixels are not 8 bits: np.asarray keeps their values, convert("RGB") would saturate them.
PIL_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# ----------------------------------------------------------------------------------------------------------------
# Images and segmentation maps


def flat_image_list(images: Any, expected_ndims: int) -> list:
    """Images (or maps, `expected_ndims=2`) as a flat list: lists of lists flattened, 4-D (3-D) arrays split into
    their items, path/URL/base64 strings opened. Unlike Transformers' `make_flat_list_of_images`, 2-D grayscale
    arrays are images and an empty list is refused with a clear message."""
    if isinstance(images, (list, tuple)):
        flat = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
        if not flat:
            raise ValueError("Got an empty list of images: pass at least one image.")
    else:
        flat = [images]
    result = []
    for image in flat:
        if isinstance(image, str):
            image = open_image_source(image)  # a local path, URL or base64 string
        if not is_valid_image(image):
            raise TypeError(
                f"Unsupported image type {type(image).__name__}: pass a PIL image, a numpy array, a torch "
                "tensor or a path/URL string (or a list of these)."
            )
        is_batch = not is_pil_image(image) and image.ndim == expected_ndims + 1
        if is_batch and expected_ndims == 2 and image.shape[-1] in (1, 3, 4):
            is_batch = False  # an (H, W, 1) map or a colour-coded mask, not a batch of thin maps
        if is_batch:
            result.extend(image)
        else:
            result.append(image)
    return result


def open_image_source(source: str) -> PIL.Image.Image:
    """A path, http(s) URL or base64 string -> PIL image in its stored mode, upright per its EXIF tag.

    Transformers' `load_image` converts to RGB, which saturates 16-bit images and turns class-id maps
    (mode P / L / I) into colours; here the mode is kept and decided on later.
    """
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source) as response:  # follows redirects, raises on HTTP errors
            image = PIL.Image.open(BytesIO(response.read()))
    elif os.path.isfile(source):
        image = PIL.Image.open(source)
    else:
        try:
            encoded = source.split(",", 1)[1] if source.startswith("data:image/") else source
            image = PIL.Image.open(BytesIO(base64.b64decode(encoded, validate=True)))
        except (binascii.Error, ValueError, IndexError, OSError):
            raise ValueError(
                f"Image source {source[:100]!r} is not an existing file, an http(s) URL or a base64-encoded image."
            ) from None
    image.load()
    return PIL.ImageOps.exif_transpose(image)


def high_bit_depth_pil_to_numpy(image: PIL.Image.Image) -> np.ndarray | PIL.Image.Image:
    """16-bit PIL images -> float pixels in [0, 1]; mode F -> its float pixels (range-checked later)."""
    if image.mode in PIL_16_BIT_MODES:
        return np.asarray(image).astype(np.float32) / 65535.0
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("I", "I;32", "I;32L", "I;32B"):
        raise ValueError(
            f"PIL mode {image.mode!r} images hold 32-bit integers with no defined pixel range, so they cannot be "
            "scaled to [0, 1] safely (converting them to RGB would saturate every value above 255). Pass "
            "`np.asarray(image) / max_value` as a float array in [0, 1], or an 8-bit image."
        )
    return image  # CMYK, YCbCr, HSV...: PIL converts these to RGB itself


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16: floats go through float32 (exact for bf16/fp16, harmless for fp32).
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()


def check_pixel_array(
    image: np.ndarray, input_data_format: str | ChannelDimension | None, where: str = ""
) -> np.ndarray:
    """Validate a numpy image and bring it to uint8 or float32; errors say what to change.

    `where` names the input's origin in the messages, e.g. " (a PIL image in mode 'F')".
    """
    if image.ndim == 3:
        if input_data_format is not None:
            channels = image.shape[0 if ChannelDimension(input_data_format) == ChannelDimension.FIRST else -1]
            valid = channels in (1, 3, 4)
        else:
            valid = image.shape[0] in (1, 3, 4) or image.shape[-1] in (1, 3, 4)
        if not valid:
            raise ValueError(
                f"Images must have 1 (grayscale), 3 (RGB) or 4 (RGBA) channels in the first or last axis, got shape "
                f"{image.shape}. Convert the image to RGB first, or pass a list for a batch of 2-D grayscale images."
            )
    elif image.ndim != 2:
        raise ValueError(
            f"An image must be a 2-D (H, W) or 3-D (C, H, W) / (H, W, C) array, got shape {image.shape}. "
            "Pass a batch as a list or a 4-D array."
        )
    if image.dtype.kind in "ui":
        if image.size and (image.min() < 0 or image.max() > 255):
            raise ValueError(
                f"Integer pixel values must lie in [0, 255], got [{image.min()}, {image.max()}]. Convert the image "
                "to 8 bits first, or pass 16-bit pixels as floats in [0, 1] (pixels / 65535)."
            )
        return image.astype(np.uint8, copy=False)
    if image.dtype.kind == "f":
        if image.size and not np.isfinite(image).all():
            raise ValueError(
                f"Float pixel values must be finite, got NaN or infinity{where}. Replace them (e.g. with "
                "np.nan_to_num) before preprocessing."
            )
        if image.size and (image.min() < 0 or image.max() > 1):
            raise ValueError(
                f"Float pixel values must lie in [0, 1], got [{image.min():.3g}, {image.max():.3g}]{where}. Pass "
                "uint8 pixels or floats scaled to [0, 1] (divide by 255 for 8-bit values); float inputs must not be "
                "normalized already."
            )
        return image.astype(np.float32, copy=False)
    raise ValueError(f"Unsupported pixel dtype {image.dtype}: pass uint8 pixels or floats in [0, 1].")


def segmentation_map_array(seg_map: Any) -> np.ndarray:
    """One class-id map -> (1, H, W) array, uint8 when it fits (PIL's fast 8-bit path)."""
    if is_torch_tensor(seg_map):
        seg_map = tensor_to_numpy(seg_map)
    if is_pil_image(seg_map) and seg_map.mode in PIL_16_BIT_MODES:
        seg_map = np.asarray(seg_map).astype(np.int64)  # big-endian I;16B arrives as ">u2"
    seg_map = np.asarray(seg_map)
    if seg_map.ndim == 3 and 1 in (seg_map.shape[0], seg_map.shape[-1]):
        seg_map = seg_map.reshape(seg_map.shape[1:] if seg_map.shape[0] == 1 else seg_map.shape[:-1])
    if seg_map.ndim != 2:
        raise ValueError(
            f"A segmentation map must be a 2-D (height, width) array of class ids, got shape {seg_map.shape}. "
            "Map colour-coded masks to class ids first."
        )
    if seg_map.dtype.kind not in "uif" or (
        seg_map.dtype.kind == "f" and not (np.isfinite(seg_map).all() and np.all(seg_map == np.round(seg_map)))
    ):
        raise ValueError(f"A segmentation map must hold integer class ids, got dtype {seg_map.dtype}.")
    seg_map = seg_map.astype(np.int64)
    if seg_map.size and seg_map.min() >= 0 and seg_map.max() <= 255:
        seg_map = seg_map.astype(np.uint8)
    return seg_map[None]


def check_maps_match_images(images: list[np.ndarray], maps: list[np.ndarray]) -> None:
    """One segmentation map per image, of the image's size."""
    if len(maps) != len(images):
        raise ValueError(
            f"Got {len(images)} images but {len(maps)} segmentation maps: pass one (H, W) map per image "
            "(a 3-D array is read as a batch of maps)."
        )
    for image, seg_map in zip(images, maps):
        if image.shape[-2:] != seg_map.shape[-2:]:
            raise ValueError(
                f"A segmentation map of size {seg_map.shape[-2:]} does not match its image of size "
                f"{image.shape[-2:]} (height, width): they must share one geometry."
            )


def check_image_size(image: np.ndarray) -> None:
    if 0 in image.shape[-2:]:
        raise ValueError(
            f"Got an image of size {tuple(image.shape[-2:])} (height, width): images need at least one pixel "
            "in each dimension."
        )


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def check_size(size: SizeDict | dict | None) -> None:
    size = dict(size) if size is not None else {}
    if set(size) not in ({"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"height", "width"}):
        raise ValueError(
            f'size must be {{"shortest_edge": n}}, {{"shortest_edge": n, "longest_edge": m}} or {{"height": h, '
            f'"width": w}}, got {size}.'
        )
    if not all(_is_positive_int(v) for v in size.values()):
        raise ValueError(
            f'size must hold positive integers, got {size}: e.g. size={{"shortest_edge": 256}} or '
            'size={"height": 512, "width": 512}.'
        )
    if "longest_edge" in size and size["longest_edge"] < size["shortest_edge"]:
        raise ValueError(f"size['longest_edge'] must be at least size['shortest_edge'], got {size}.")


def check_height_width(size: SizeDict | dict | None, name: str) -> None:
    size = dict(size) if size is not None else {}
    if set(size) != {"height", "width"} or not all(_is_positive_int(v) for v in size.values()):
        raise ValueError(
            f'{name} must be {{"height": h, "width": w}} with positive integers (or one positive int for a square), '
            f"got {size}."
        )


def check_padding(pad_size_divisor: Any, pad_size: SizeDict | dict | None) -> None:
    if not _is_positive_int(pad_size_divisor):
        raise ValueError(
            f"pad_size_divisor must be a positive integer (1 pads to the batch's largest image), got "
            f"{pad_size_divisor!r}."
        )
    if pad_size is not None:
        check_height_width(pad_size, "pad_size")


RESIZE_BACKENDS = ("pil", "opencv")


def check_resize_options(align_to_multiple_of: Any, resize_backend: Any, resample: Any) -> None:
    """The semantic-segmentation resize options: a positive multiple (or None), a known backend, and bilinear
    resampling for the OpenCV backend (the only filter it reproduces)."""
    if align_to_multiple_of is not None and not _is_positive_int(align_to_multiple_of):
        raise ValueError(
            f"align_to_multiple_of must be a positive integer (32 for the authors' AlignResize) or None, got "
            f"{align_to_multiple_of!r}."
        )
    if resize_backend not in RESIZE_BACKENDS:
        raise ValueError(f"resize_backend must be 'pil' or 'opencv', got {resize_backend!r}.")
    if resize_backend == "opencv" and resample is not None and int(resample) != int(PILImageResampling.BILINEAR):
        raise ValueError(
            f"resize_backend='opencv' reproduces OpenCV's bilinear resize only, but resample is {resample!r}: set "
            "resample=PILImageResampling.BILINEAR (2), or resize_backend='pil'."
        )


def check_logits_stride(logits_stride: Any) -> None:
    if logits_stride is not None and not _is_positive_int(logits_stride):
        raise ValueError(
            f"logits_stride must be a positive integer (4 for hf_pvt's Semantic FPN) or None, got {logits_stride!r}."
        )


def check_image_std(image_std: Any) -> None:
    """A zero or non-finite std would turn every pixel into inf/NaN without a word."""
    try:
        std = np.atleast_1d(np.asarray(image_std, dtype=np.float64))
    except (TypeError, ValueError):
        std = np.array([np.nan])
    if not np.all(np.isfinite(std) & (std > 0)):
        raise ValueError(f"image_std must hold positive finite values, got {image_std}.")


def check_stackable(data: dict[str, list[np.ndarray]]) -> None:
    """Arrays of one key must share a shape to become one tensor."""
    for key, arrays in data.items():
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(
                f"The {key} of this batch have different sizes {sorted({a.shape for a in arrays})}, so they "
                'cannot be stacked: use do_pad=True, a fixed size ({"height": h, "width": w}) or '
                "do_center_crop=True, or process the images one at a time."
            )


def check_detection_postprocess_arguments(
    threshold: Any, nms_pre: Any, iou_threshold: Any, max_per_image: Any
) -> None:
    """`post_process_object_detection`'s settings: integer counts, thresholds in [0, 1]."""
    for name, value in (("nms_pre", nms_pre), ("max_per_image", max_per_image)):
        if not is_int(value):
            raise TypeError(f"{name} must be an integer (<= 0 keeps everything), got {value!r}.")
    for name, value in (("threshold", threshold), ("iou_threshold", iou_threshold)):
        if not isinstance(value, (int, float, np.number)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")


# ----------------------------------------------------------------------------------------------------------------
# Detection annotations


COCO_DETECTION_FORMAT = (
    '{"image_id": int, "annotations": [{"bbox": [x, y, width, height], "category_id": int, "iscrowd": 0 or 1}, ...]}'
)
# Ids travel as int64 tensors; a larger Python int would overflow numpy's conversion (OverflowError).
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def prepare_detection_targets(annotations: Any, image_sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """COCO detection annotations -> per image {"boxes": (n, 4) absolute xyxy float64, "class_labels", ...}.

    As Transformers' DETR processor: crowd boxes are left out, boxes are clipped to the image and boxes
    without area after clipping are dropped. Malformed entries raise, naming the entry.
    """
    if isinstance(annotations, dict):
        annotations = [annotations]
    if not isinstance(annotations, (list, tuple)):
        raise TypeError(
            f"annotations must be one dict per image in COCO detection format {COCO_DETECTION_FORMAT}, got "
            f"{type(annotations).__name__}."
        )
    if len(annotations) != len(image_sizes):
        raise ValueError(
            f"Got {len(image_sizes)} images but {len(annotations)} annotations: pass one annotation dict per image "
            "(an image without objects has an empty 'annotations' list)."
        )
    targets = []
    for index, (annotation, (height, width)) in enumerate(zip(annotations, image_sizes)):
        where = f"annotations[{index}]"
        if (
            not isinstance(annotation, dict)
            or "image_id" not in annotation
            or not isinstance(annotation.get("annotations"), (list, tuple))
        ):
            found = sorted(annotation) if isinstance(annotation, dict) else type(annotation).__name__
            raise ValueError(f"{where} must be a dict in COCO detection format {COCO_DETECTION_FORMAT}, got {found}.")
        image_id = annotation["image_id"]
        if not is_int(image_id):
            raise TypeError(f"{where}['image_id'] must be an integer, got {image_id!r}.")
        if not _INT64_MIN <= int(image_id) <= _INT64_MAX:
            raise ValueError(
                f"{where}['image_id'] {image_id} does not fit in int64 (labels carry it as an int64 tensor): use ids "
                f"in [{_INT64_MIN}, {_INT64_MAX}], e.g. the image's index in the dataset."
            )
        boxes, class_labels, indices = [], [], []
        for number, obj in enumerate(annotation["annotations"]):
            entry = f"{where}['annotations'][{number}]"
            if not isinstance(obj, dict) or "bbox" not in obj or "category_id" not in obj:
                found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(
                    f"{entry} must be a dict with 'bbox' [x, y, width, height] and 'category_id', got {found}."
                )
            try:
                bbox = np.asarray(obj["bbox"], dtype=np.float64)
            except (TypeError, ValueError):
                bbox = None
            if bbox is None or bbox.shape != (4,) or not np.isfinite(bbox).all():
                raise ValueError(
                    f"{entry}['bbox'] must be 4 finite numbers [x, y, width, height], got {obj['bbox']!r}."
                )
            if bbox[2] < 0 or bbox[3] < 0:
                raise ValueError(
                    f"{entry}['bbox'] {obj['bbox']!r} has a negative width or height: COCO boxes are [x, y, width, "
                    "height] with (x, y) the top-left corner; convert corner boxes [x1, y1, x2, y2] first."
                )
            category_id = obj["category_id"]
            if not is_int(category_id) or category_id < 0:
                raise ValueError(f"{entry}['category_id'] must be a non-negative integer, got {category_id!r}.")
            if int(category_id) > _INT64_MAX:
                raise ValueError(
                    f"{entry}['category_id'] {category_id} does not fit in int64 (class labels are int64): map the "
                    "dataset's category ids to the model's contiguous class ids 0..num_labels-1 first."
                )
            iscrowd = obj.get("iscrowd", 0)
            if not is_int(iscrowd, allow_bool=True) or iscrowd not in (0, 1):
                raise ValueError(f"{entry}['iscrowd'] must be 0 or 1, got {iscrowd!r}.")
            if iscrowd:
                continue  # crowd regions are not instances to detect (DETR and mmdet leave them out)
            boxes.append([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]])
            class_labels.append(int(category_id))
            indices.append(number)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        targets.append(
            {
                "boxes": boxes[keep],
                "class_labels": np.asarray(class_labels, dtype=np.int64).reshape(-1)[keep],
                "image_id": np.asarray([image_id], dtype=np.int64),
                "orig_size": np.asarray([height, width], dtype=np.int64),
                # which annotations the boxes are, so that instance masks follow the same selection
                "annotation_indices": np.asarray(indices, dtype=np.int64)[keep],
            }
        )
    return targets


# ----------------------------------------------------------------------------------------------------------------
# Post-processing inputs


def check_target_sizes(target_sizes: Any, batch_size: int, what: str) -> list[tuple[int, int]] | None:
    """`target_sizes` as a list of (height, width) int pairs, one per image; None stays None."""
    if target_sizes is None:
        return None
    if hasattr(target_sizes, "tolist"):  # a (B, 2) tensor or array
        target_sizes = target_sizes.tolist()
    if len(target_sizes) != batch_size:
        raise ValueError(
            f"Got {len(target_sizes)} target sizes for a batch of {batch_size} {what}: pass one (height, width) "
            "per image."
        )
    sizes = []
    for size in target_sizes:
        size = size.tolist() if hasattr(size, "tolist") else size
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_positive_whole(s) for s in size)):
            raise ValueError(
                f"Each entry of target_sizes must be a (height, width) pair of positive integers, got {size!r}."
            )
        sizes.append((int(size[0]), int(size[1])))
    return sizes


def semantic_logits(outputs: Any) -> torch.Tensor:
    """The segmentation logits of a model output, a dict, or a `return_dict=False` tuple."""
    if isinstance(outputs, dict):  # ModelOutput is a dict too
        logits = outputs.get("logits")
    elif isinstance(outputs, (tuple, list)):
        items = list(outputs)
        if items and is_torch_tensor(items[0]) and items[0].ndim == 0:
            items = items[1:]  # (loss, logits, ...) when the model was given labels
        logits = items[0] if items else None
    elif is_torch_tensor(outputs):
        logits = outputs
    else:
        logits = getattr(outputs, "logits", None)
    if not is_torch_tensor(logits) or logits.ndim != 4:
        found = f"shape {tuple(logits.shape)}" if is_torch_tensor(logits) else type(logits).__name__
        raise TypeError(
            f"outputs must be a segmentation model's output with logits of shape (batch, num_labels, height, "
            f"width) (a ModelOutput, a dict with 'logits', or the return_dict=False tuple); got logits {found}."
        )
    return logits


def semantic_logits_sizes(outputs: Any, logits: torch.Tensor) -> list[tuple[int, int]] | None:
    """The `logits_sizes` of a segmentation output (where each image's logits are in a padded batch), checked against
    `logits`; None when the output has none (then every image's logits fill the map)."""
    sizes = outputs.get("logits_sizes") if isinstance(outputs, dict) else getattr(outputs, "logits_sizes", None)
    if sizes is None:
        return None
    height, width = logits.shape[-2:]
    fits = (
        is_torch_tensor(sizes)
        and tuple(sizes.shape) == (len(logits), 2)
        and not (sizes.is_floating_point() or sizes.is_complex())
        and all(0 < h <= height and 0 < w <= width for h, w in sizes.tolist())
    )
    if not fits:
        found = sizes.tolist() if is_torch_tensor(sizes) else type(sizes).__name__
        raise ValueError(
            f"outputs.logits_sizes must be (batch, 2) = ({len(logits)}, 2) positive integer (height, width) pairs "
            f"within the logits' {height}x{width}, got {found}."
        )
    return [(int(h), int(w)) for h, w in sizes.tolist()]


DETECTION_FIELDS = ("logits", "pred_box_deltas", "anchors", "spatial_shapes", "image_sizes")
_DETECTION_OUTPUT = (
    "outputs must be HfPvtForObjectDetection's output (a ModelOutput, a dict of its fields, or the return_dict=False "
    "tuple): logits (batch, anchors, num_labels), pred_box_deltas (batch, anchors, 4), anchors (batch, anchors, 4), "
    "spatial_shapes (batch, levels, 2) and image_sizes (batch, 2); or per-level tuples of logits (batch, A * "
    "num_labels, h, w) and pred_box_deltas (batch, A * 4, h, w) with anchors (h * w * A, 4) and image_sizes, as "
    "hf_pvt's ONNX export and earlier versions give them"
)


def detection_fields(outputs: Any) -> tuple[int, Any, torch.Tensor]:
    """(batch size, `levels(i)`, image_sizes) of a RetinaNet output, checked so that post-processing can neither fail
    inside nor misread it; `levels(i)` gives image i's per-level (logits, deltas, anchors) for `retinanet_postprocess`.

    Two layouts: the model's, one row per anchor (`logits` (B, N, C), `pred_box_deltas` (B, N, 4), `anchors` (B, N,
    4) or (N, 4), `spatial_shapes` (B, L, 2) or (L, 2)); and per-level maps (tuples of (B, A * C, h, w) logits and
    (B, A * 4, h, w) deltas, per-level (h * w * A, 4) anchors), as the ONNX export returns them."""
    if isinstance(outputs, dict):  # ModelOutput is a dict too
        fields = {name: outputs.get(name) for name in DETECTION_FIELDS}
    elif isinstance(outputs, (tuple, list)):
        items = list(outputs)
        if items and is_torch_tensor(items[0]) and items[0].ndim == 0:
            items = items[1:]  # the loss, when the model was given labels ...
        if items and isinstance(items[0], dict):
            items = items[1:]  # ... and the loss_dict after it
        per_level = ("logits", "pred_box_deltas", "anchors", "image_sizes")
        names = DETECTION_FIELDS if items and is_torch_tensor(items[0]) else per_level
        fields = dict(zip(names, items + [None] * len(names)))
    else:
        fields = {name: getattr(outputs, name, None) for name in DETECTION_FIELDS}
    logits, image_sizes = fields.get("logits"), fields.get("image_sizes")
    required = ("logits", "pred_box_deltas", "anchors", "image_sizes")
    required += () if isinstance(logits, (tuple, list)) else ("spatial_shapes",)
    missing = [name for name in required if fields.get(name) is None]
    has_boxes = outputs.get("pred_boxes") if isinstance(outputs, dict) else getattr(outputs, "pred_boxes", None)
    if missing and has_boxes is not None:
        raise TypeError(
            "outputs hold logits and pred_boxes, a DETR-style detector's output (DETR, Conditional/Deformable DETR, "
            "RT-DETR on an hf_pvt backbone): HfPvtImageProcessor post-processes hf_pvt's RetinaNet. Use that model's "
            "own processor (DetrImageProcessorPil, ...), and save its folder with it so that pipeline() does too."
        )
    if missing:
        raise TypeError(f"{_DETECTION_OUTPUT}; missing {missing}.")
    if isinstance(logits, (tuple, list)):
        batch_size, levels = _per_level_maps(fields)
    elif is_torch_tensor(logits):
        batch_size, levels = _flat_levels(fields)
    else:
        raise TypeError(f"{_DETECTION_OUTPUT}; got logits of type {type(logits).__name__}.")
    if not is_torch_tensor(image_sizes) or tuple(image_sizes.shape) != (batch_size, 2):
        found = tuple(image_sizes.shape) if is_torch_tensor(image_sizes) else type(image_sizes).__name__
        raise ValueError(f"outputs.image_sizes must be (batch, 2) = ({batch_size}, 2), got {found}.")
    if image_sizes.numel() and (
        image_sizes.is_floating_point() or image_sizes.is_complex() or bool((image_sizes < 1).any())
    ):
        raise ValueError(f"outputs.image_sizes must hold positive integer (height, width) pairs, got {image_sizes}.")
    return batch_size, levels, image_sizes.long()


def _float_field(value: Any, name: str) -> torch.Tensor:
    if not is_torch_tensor(value):
        raise TypeError(f"{_DETECTION_OUTPUT}; got {name} of type {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(f"outputs.{name} must be floating point, got dtype {value.dtype}.")
    if value.numel() and not bool(value.isfinite().all()):
        raise ValueError(
            f"outputs.{name} hold NaN or infinite values: the model diverged or its weights are damaged; detections "
            "from them would be meaningless."
        )
    return value


def _flat_levels(fields: dict[str, Any]) -> tuple[int, Any]:
    import torch

    logits = _float_field(fields["logits"], "logits")
    if logits.ndim != 3 or logits.shape[1] == 0 or logits.shape[2] == 0:
        raise ValueError(
            f"outputs.logits must be (batch, anchors, num_labels) with at least one anchor and one label, got "
            f"{tuple(logits.shape)}."
        )
    batch_size, num_anchors, _ = logits.shape
    deltas = _float_field(fields["pred_box_deltas"], "pred_box_deltas")
    if tuple(deltas.shape) != (batch_size, num_anchors, 4):
        raise ValueError(
            f"outputs.pred_box_deltas must be (batch, anchors, 4) = ({batch_size}, {num_anchors}, 4), one row per "
            f"row of logits, got {tuple(deltas.shape)}."
        )
    anchors = _float_field(fields["anchors"], "anchors")
    if tuple(anchors.shape) not in ((batch_size, num_anchors, 4), (num_anchors, 4)):
        raise ValueError(
            f"outputs.anchors must be (batch, anchors, 4) = ({batch_size}, {num_anchors}, 4) (or ({num_anchors}, 4) "
            f"shared by the batch), one per row of logits, got {tuple(anchors.shape)}."
        )
    shapes = fields["spatial_shapes"]
    if not is_torch_tensor(shapes):
        raise TypeError(f"{_DETECTION_OUTPUT}; got spatial_shapes of type {type(shapes).__name__}.")
    if shapes.ndim == 2:
        shapes = shapes.unsqueeze(0).expand(batch_size, *shapes.shape)
    if shapes.ndim != 3 or shapes.shape[0] != batch_size or shapes.shape[2] != 2 or shapes.shape[1] == 0:
        raise ValueError(
            f"outputs.spatial_shapes must be (batch, levels, 2) = ({batch_size}, levels, 2), the (height, width) of "
            f"each level's map, got {tuple(fields['spatial_shapes'].shape)}."
        )
    if shapes.is_floating_point() or shapes.is_complex() or bool((shapes < 1).any()):
        raise ValueError(f"outputs.spatial_shapes must hold positive integer sizes, got {shapes[0].tolist()}.")
    counts_per_image = []
    for row in shapes.tolist():
        locations = [h * w for h, w in row]
        if num_anchors % sum(locations):
            raise ValueError(
                f"outputs.spatial_shapes {row} give {sum(locations)} locations, which do not divide the {num_anchors} "
                "anchors of the logits into whole anchors per location: they are not this output's levels."
            )
        counts_per_image.append([n * (num_anchors // sum(locations)) for n in locations])

    def levels(index: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        counts = counts_per_image[index]
        image_anchors = anchors[index] if anchors.ndim == 3 else anchors
        return (
            list(torch.split(logits[index], counts)),
            list(torch.split(deltas[index], counts)),
            list(torch.split(image_anchors, counts)),
        )

    return batch_size, levels


def _per_level_maps(fields: dict[str, Any]) -> tuple[int, Any]:
    logits, deltas, anchors = fields["logits"], fields["pred_box_deltas"], fields["anchors"]
    for name, value in (("logits", logits), ("pred_box_deltas", deltas), ("anchors", anchors)):
        if not isinstance(value, (tuple, list)) or not value or not all(is_torch_tensor(t) for t in value):
            raise TypeError(f"{_DETECTION_OUTPUT}; got {name} of type {type(value).__name__} with per-level logits.")
        for level in value:
            _float_field(level, name)
    if not len(logits) == len(deltas) == len(anchors):
        raise ValueError(
            f"outputs hold {len(logits)} levels of logits, {len(deltas)} of pred_box_deltas and {len(anchors)} "
            "of anchors: they must match."
        )
    batch_size, num_labels = logits[0].shape[0] if logits[0].ndim == 4 else -1, None
    for level, (cls, reg, level_anchors) in enumerate(zip(logits, deltas, anchors)):
        if cls.ndim != 4 or cls.shape[0] != batch_size:
            raise ValueError(
                f"outputs.logits[{level}] must be a (batch, anchors * num_labels, height, width) map with the batch "
                f"of level 0, got {tuple(cls.shape)}."
            )
        locations = cls.shape[2] * cls.shape[3]
        per_location = level_anchors.shape[0] // max(locations, 1) if level_anchors.ndim == 2 else 0
        whole = level_anchors.ndim == 2 and per_location >= 1 and per_location * locations == level_anchors.shape[0]
        if not whole or level_anchors.shape[1] != 4:
            raise ValueError(
                f"outputs.anchors[{level}] must be (height * width * anchors per location, 4) for the level's "
                f"{cls.shape[2]}x{cls.shape[3]} map, got {tuple(level_anchors.shape)}."
            )
        expected = per_location * num_labels if num_labels is not None else None
        if cls.shape[1] % per_location or cls.shape[1] == 0 or (expected is not None and cls.shape[1] != expected):
            raise ValueError(
                f"outputs.logits[{level}] has {cls.shape[1]} channels, which is not {per_location} anchors per "
                f"location x " + (f"{num_labels} labels (those of level 0)." if num_labels else "a number of labels.")
            )
        num_labels = cls.shape[1] // per_location
        if tuple(reg.shape) != (batch_size, 4 * per_location, *cls.shape[2:]):
            raise ValueError(
                f"outputs.pred_box_deltas[{level}] must be (batch, 4 * anchors per location, height, width) = "
                f"{(batch_size, 4 * per_location, *cls.shape[2:])}, got {tuple(reg.shape)}."
            )

    def levels(index: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        return [level[index] for level in logits], [level[index] for level in deltas], list(anchors)

    return batch_size, levels


def is_int(value: Any, allow_bool: bool = False) -> bool:
    return isinstance(value, (int, np.integer)) and (allow_bool or not isinstance(value, bool))


def _is_positive_int(value: Any) -> bool:
    return is_int(value) and value > 0


def _is_positive_whole(value: Any) -> bool:
    # target sizes may come from a float tensor: 480.0 is a size, 480.5 is not
    if isinstance(value, (float, np.floating)):
        return value > 0 and float(value).is_integer()
    return _is_positive_int(value)


__all__ = [
    "COCO_DETECTION_FORMAT",
    "PIL_16_BIT_MODES",
    "RESIZE_BACKENDS",
    "check_detection_postprocess_arguments",
    "check_height_width",
    "check_image_size",
    "check_image_std",
    "check_logits_stride",
    "check_maps_match_images",
    "check_padding",
    "check_pixel_array",
    "check_resize_options",
    "check_size",
    "check_stackable",
    "check_target_sizes",
    "detection_fields",
    "flat_image_list",
    "high_bit_depth_pil_to_numpy",
    "is_int",
    "open_image_source",
    "prepare_detection_targets",
    "segmentation_map_array",
    "semantic_logits",
    "semantic_logits_sizes",
    "tensor_to_numpy",
]
