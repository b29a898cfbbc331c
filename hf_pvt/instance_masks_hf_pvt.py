"""Instance masks for the image processor: COCO segmentations in, COCO run-length encodings out.

In: a COCO annotation's `segmentation` (polygons, uncompressed RLE `{"size", "counts": [...]}` or compressed RLE
`{"size", "counts": "..."}`) becomes a binary mask of its image, decoded by pycocotools (imported only here and
only when masks are asked for: inference needs no pycocotools). The masks then follow their image through the
processor's geometry: nearest-neighbour resize (MMDetection's `BitmapMasks.rescale` resizes bitmaps the same
way), horizontal flip, zero padding at the bottom and right.

Out: Mask R-CNN's per-instance results become Transformers' instance segmentation format (one map of instance
ids per image plus `segments_info`), and any binary mask becomes COCO's compressed RLE, written here in plain
numpy (the string format of the COCO API, so `pycocotools.mask.decode` reads it back) so that evaluation output
needs no compiled extension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

COCO_INSTANCE_FORMAT = (
    '{"image_id": int, "annotations": [{"bbox": [x, y, width, height], "category_id": int, "iscrowd": 0 or 1, '
    '"segmentation": [[x1, y1, x2, y2, ...], ...] or {"size": [height, width], "counts": [...] or "..."}}, ...]}'
)


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError as error:
        raise ImportError(
            "Decoding COCO polygons and RLE masks for instance segmentation needs pycocotools: `pip install "
            "pycocotools` (or `pip install hf_pvt[examples]`). Inference and post-processing do not need it."
        ) from error
    return mask_api


# ------------------------------------------------------------------------------------------------ COCO -> masks


def decode_segmentation(segmentation: Any, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """A COCO `segmentation` -> (height, width) bool mask of the image.

    Polygons are a list of flat [x1, y1, x2, y2, ...] lists (at least three points each; several polygons form one
    mask); RLE is a dict with `size` = [height, width] of this image and `counts`, a list of run lengths
    (uncompressed, as COCO stores crowd regions) or COCO's compressed string. `where` names the entry in errors.
    """
    mask_api = _mask_api()
    if isinstance(segmentation, dict):
        if not {"size", "counts"} <= set(segmentation):
            raise ValueError(
                f"{where} is a dict, so it must be COCO RLE {{'size': [height, width], 'counts': ...}}, got keys "
                f"{sorted(segmentation)}."
            )
        size = list(np.asarray(segmentation["size"]).reshape(-1).tolist())
        if size != [height, width]:
            raise ValueError(
                f"{where} is an RLE of size {segmentation['size']} but its image is (height, width) = "
                f"({height}, {width}): an RLE must be encoded at its image's size."
            )
        counts = segmentation["counts"]
        if isinstance(counts, (str, bytes)):
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        elif isinstance(counts, (list, tuple, np.ndarray)):
            counts = np.asarray(counts)
            if counts.ndim != 1 or counts.dtype.kind not in "ui" or (counts.size and counts.min() < 0):
                raise ValueError(f"{where}['counts'] must be a list of non-negative run lengths or an RLE string.")
            if counts.sum() != height * width:
                raise ValueError(
                    f"{where}['counts'] covers {counts.sum()} pixels but its size {size} has {height * width}: "
                    "uncompressed RLE runs must add up to height x width (column-major, starting with zeros)."
                )
            rle = mask_api.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
        else:
            raise ValueError(f"{where}['counts'] must be a list of run lengths or an RLE string, got {counts!r:.80}.")
        try:
            return mask_api.decode(rle).astype(bool)
        except Exception as error:  # pycocotools raises bare Exceptions on malformed strings
            raise ValueError(f"{where} is not a valid COCO RLE: {error}") from None
    if isinstance(segmentation, (list, tuple)):
        polygons = []
        for number, polygon in enumerate(segmentation):
            try:
                points = np.asarray(polygon, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                points = None
            if (
                points is None
                or np.asarray(polygon, dtype=object).ndim != 1
                or points.size < 6
                or points.size % 2
                or not np.isfinite(points).all()
            ):
                raise ValueError(
                    f"{where}[{number}] must be a flat list [x1, y1, x2, y2, ...] of at least three points (finite "
                    f"numbers), got {str(polygon)[:80]}."
                )
            polygons.append(points.tolist())
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rles = mask_api.frPyObjects(polygons, height, width)
        return mask_api.decode(mask_api.merge(rles)).astype(bool)
    raise ValueError(
        f"{where} must be COCO polygons (a list of [x1, y1, x2, y2, ...] lists) or RLE (a dict with 'size' and "
        f"'counts'), got {type(segmentation).__name__}."
    )


def decode_instance_masks(
    annotation: dict[str, Any], indices: np.ndarray, height: int, width: int, where: str
) -> np.ndarray:
    """The (n, height, width) bool masks of `annotation["annotations"][i]` for i in `indices` (the objects that the
    box targets kept: crowd regions and boxes without area are already left out)."""
    masks = np.zeros((len(indices), height, width), dtype=bool)
    for row, index in enumerate(indices.tolist()):
        obj = annotation["annotations"][index]
        entry = f"{where}['annotations'][{index}]"
        if "segmentation" not in obj:
            raise ValueError(
                f"{entry} has no 'segmentation': instance segmentation needs every object's mask, in COCO format "
                f"{COCO_INSTANCE_FORMAT}. For boxes only, use HfPvtImageProcessor.for_object_detection()."
            )
        masks[row] = decode_segmentation(obj["segmentation"], height, width, f"{entry}['segmentation']")
    return masks


def masks_for_targets(annotations: Any, targets: list[dict[str, Any]]) -> list[np.ndarray]:
    """Per image, the (n, height, width) bool masks of the objects the box targets kept (`annotation_indices`), at
    the input image's size (`orig_size`)."""
    if isinstance(annotations, dict):
        annotations = [annotations]
    return [
        decode_instance_masks(
            annotation, target["annotation_indices"], *target["orig_size"].tolist(), f"annotations[{i}]"
        )
        for i, (annotation, target) in enumerate(zip(annotations, targets))
    ]


# ------------------------------------------------------------------------------------------------ geometry


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, h, w) masks -> (n, height, width) by nearest neighbour at pixel centres (source pixel
    floor((i + 0.5) * h / height)), the sampling PIL's NEAREST filter uses."""
    old_height, old_width = masks.shape[-2:]
    if (old_height, old_width) == (height, width):
        return masks
    rows = np.minimum(((np.arange(height) + 0.5) * old_height / height).astype(np.int64), old_height - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * old_width / width).astype(np.int64), old_width - 1)
    return masks[:, rows[:, None], cols[None, :]]


def place_masks(masks: np.ndarray, size: tuple[int, int], canvas: tuple[int, int], flipped: bool) -> np.ndarray:
    """Masks of the input image -> the processed image: resized to `size`, mirrored left-right when `flipped`
    (after the resize, as the image), zero-padded at the bottom and right to `canvas` (as `pixel_values`)."""
    masks = resize_masks(masks, *size)
    if flipped:
        masks = masks[..., ::-1]
    out = np.zeros((len(masks), *canvas), dtype=bool)
    out[:, : size[0], : size[1]] = masks
    return out


# ------------------------------------------------------------------------------------------------ masks -> COCO


def encode_rle(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """A (height, width) binary mask -> COCO compressed RLE `{"size": [height, width], "counts": str}`.

    The COCO API's format: run lengths over the column-major pixels starting with a run of zeros, each count
    after the second stored as the difference to the count two before, written 5 bits per character (offset 48,
    bit 0x20 = more characters follow). `pycocotools.mask.decode` and COCOeval read it as their own.
    """
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle takes one (height, width) mask, got shape {mask.shape}.")
    height, width = mask.shape
    flat = mask.astype(bool).ravel(order="F")
    # Run boundaries: where the value changes; the first run counts zeros (0 when the mask starts with a one).
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    chars = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        while True:
            chunk = value & 0x1F
            value >>= 5  # arithmetic shift: negative differences end at -1
            more = value != -1 if chunk & 0x10 else value != 0
            chars.append(chr(chunk + 48 + (0x20 if more else 0)))
            if not more:
                break
    return {"size": [height, width], "counts": "".join(chars)}


def mask_box(mask: np.ndarray) -> list[float]:
    """The [x, y, width, height] pixel box enclosing a binary mask ([0, 0, 0, 0] when empty), as COCO's toBbox."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


# ------------------------------------------------------------------------------------------------ results -> maps


def instance_segmentation_map(
    masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, overlap_mask_area_threshold: float
) -> tuple[torch.Tensor, list[dict[str, Any]], list[int]]:
    """Per-instance masks (k, H, W) bool, best first -> one (H, W) int64 map of instance ids and its segments.

    Instances are placed best first, each on the pixels still free; one whose free pixels are not more than
    `overlap_mask_area_threshold` times its own area is left out (as Transformers' DETR/MaskFormer processors use
    the parameter) and takes no pixels. -1 marks pixels of no instance (Transformers' Mask2Former convention);
    ids count the placed instances from 0. Returns the map, `segments_info` and the placed instances' indices.
    """
    import torch

    height, width = masks.shape[-2:]
    segmentation = torch.full((height, width), -1, dtype=torch.int64, device=masks.device)
    taken = torch.zeros((height, width), dtype=torch.bool, device=masks.device)
    segments, kept = [], []
    for index in range(len(masks)):
        mask = masks[index]
        area = int(mask.sum())
        visible = mask & ~taken
        visible_area = int(visible.sum())
        if area == 0 or visible_area == 0 or not visible_area / area > overlap_mask_area_threshold:
            continue  # a dropped instance takes no pixels: the instances below it show there
        taken |= mask
        segment_id = len(segments)
        segmentation[visible] = segment_id
        segments.append(
            {
                "id": segment_id,
                "label_id": int(labels[index]),
                "was_fused": False,
                "score": round(float(scores[index]), 6),
            }
        )
        kept.append(index)
    return segmentation, segments, kept


def semantic_as_segments(segmentation: torch.Tensor) -> dict[str, Any]:
    """A semantic (H, W) map of class ids in the instance format: one segment per class present, id = label id,
    score None. The image-segmentation pipeline turns this into exactly what its semantic subtask gives."""
    import torch

    classes = torch.unique(segmentation).tolist()
    return {
        "segmentation": segmentation,
        "segments_info": [{"id": c, "label_id": c, "was_fused": False, "score": None} for c in classes],
    }


# ------------------------------------------------------------------------------------------------ post-processing


def is_instance_output(outputs: Any) -> bool:
    """Whether `outputs` hold Mask R-CNN detections (`pred_mask_logits`, evaluation mode)."""
    if isinstance(outputs, dict):  # ModelOutput is a dict too
        return outputs.get("pred_mask_logits") is not None
    return getattr(outputs, "pred_mask_logits", None) is not None


def instance_batch_size(outputs: Any) -> int:
    """The number of images in a Mask R-CNN output (a pipeline's per-image slice counts one)."""
    image_sizes = outputs.get("image_sizes") if isinstance(outputs, dict) else getattr(outputs, "image_sizes", None)
    if image_sizes is None or not hasattr(image_sizes, "shape") or image_sizes.shape[-1:] != (2,):
        raise TypeError(
            "outputs must be HfPvtForInstanceSegmentation's output in evaluation mode (with pred_boxes, pred_scores, "
            "pred_labels, pred_mask_logits and image_sizes (batch, 2)); call model.eval() before inference."
        )
    return int(image_sizes.reshape(-1, 2).shape[0])


def single_pair_as_list(target_sizes: Any, batch_size: int) -> Any:
    """One (height, width) pair for a one-image batch -> [(height, width)].

    Transformers' pipelines slice a batch of outputs into one-image outputs, and with them each image's target
    size: a list of pairs can arrive as the bare pair.
    """
    if batch_size == 1 and target_sizes is not None:
        values = target_sizes.tolist() if hasattr(target_sizes, "tolist") else target_sizes
        if isinstance(values, (list, tuple)) and len(values) == 2 and all(np.ndim(v) == 0 for v in values):
            return [tuple(values)]
    return target_sizes


def check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def instance_results(
    outputs: Any,
    threshold: float,
    mask_threshold: float,
    target_sizes: Any,
    return_rle: bool,
) -> list[dict[str, Any]]:
    """Every instance of every image, each with its own whole mask (see `post_process_instances`)."""
    from .image_checks_hf_pvt import check_target_sizes
    from .mask_rcnn_hf_pvt import mask_rcnn_postprocess

    threshold = check_probability("threshold", threshold)
    mask_threshold = check_probability("mask_threshold", mask_threshold)
    batch_size = instance_batch_size(outputs)
    sizes = check_target_sizes(single_pair_as_list(target_sizes, batch_size), batch_size, "images")
    results = []
    for index in range(batch_size):
        found = mask_rcnn_postprocess(
            outputs,
            image_index=index,
            target_size=sizes[index] if sizes is not None else None,
            threshold=threshold,
            mask_threshold=mask_threshold,
        )
        if return_rle:
            found["rles"] = [encode_rle(mask) for mask in found["masks"]]
        results.append(found)
    return results


def instance_segmentation_results(
    outputs: Any,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    target_sizes: Any,
    return_coco_annotation: bool,
    return_binary_maps: bool,
    semantic_postprocess: Any,
) -> list[dict[str, Any]]:
    """Transformers' instance segmentation format (see `post_process_instance_segmentation`)."""
    import torch

    if return_coco_annotation and return_binary_maps:
        raise ValueError("return_coco_annotation and return_binary_maps cannot both be True: choose one form.")
    overlap_mask_area_threshold = check_probability("overlap_mask_area_threshold", overlap_mask_area_threshold)
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if not is_instance_output(outputs) and isinstance(logits, torch.Tensor) and logits.ndim == 4:
        # A semantic segmentation output (Semantic FPN, UperNet, ... saved with this processor class): the
        # image-segmentation pipeline asks for instances first whenever the processor offers them.
        sizes = single_pair_as_list(target_sizes, len(logits))
        results = [semantic_as_segments(m) for m in semantic_postprocess(outputs, target_sizes=sizes)]
    else:
        results = []
        for found in instance_results(outputs, threshold, mask_threshold, target_sizes, return_rle=False):
            order = torch.argsort(found["scores"], descending=True, stable=True)
            masks, scores, labels = found["masks"][order], found["scores"][order], found["labels"][order]
            segmentation, segments, kept = instance_segmentation_map(
                masks, scores, labels, overlap_mask_area_threshold
            )
            results.append({"segmentation": segmentation, "segments_info": segments, "_masks": masks[kept]})
    for result in results:
        masks = result.pop("_masks", None)
        if return_coco_annotation:
            result["segmentation"] = [encode_rle(result["segmentation"] == s["id"]) for s in result["segments_info"]]
        elif return_binary_maps:
            if masks is None:
                masks = torch.stack([result["segmentation"] == s["id"] for s in result["segments_info"]])
            result["segmentation"] = masks
    return results
