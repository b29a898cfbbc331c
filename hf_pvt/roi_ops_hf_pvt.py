"""RoI operations of Mask R-CNN in plain torch: RoIAlign, RoI-to-level mapping, multi-level RoI features, mask
pasting and mask targets.

Self-contained on purpose (torch only, no torchvision, nothing else from hf_pvt): saved model folders ship this
file for `trust_remote_code`.

- `roi_align` has the signature and semantics of `torchvision.ops.roi_align` and of mmcv's `RoIAlign` with
  average pooling (mmcv's kernels `ROIAlignForward` in `ops/csrc/pytorch/cpu/roi_align.cpp` and
  `roi_align_forward_cuda_kernel` with `bilinear_interpolate`).
- `map_rois_to_levels` and `multi_level_roi_align` are MMDetection's `SingleRoIExtractor` (`map_roi_levels`,
  `forward`).
- `paste_masks` is MMDetection's `FCNMaskHead.get_seg_masks` with `_do_paste_mask`.
- `crop_and_resize_masks` is MMDetection's `mask_target_single` with `BitmapMasks.crop_and_resize`.

How RoIAlign is computed here. Bilinear interpolation with mmcv's border rule is separable: the weight of feature
pixel (row, col) for one sample is wy(row) * wx(col), and a sample outside the map has wy = 0 or wx = 0. So a
box's (out_h, out_w) result is Ay @ F @ Ax^T, where Ay (out_h, rows) sums the y-weights of each bin's samples and
F is the box's support (the rows and columns its samples touch) gathered from the map in channels-last layout.
Boxes are grouped by support size and processed in chunks padded to the largest support in the chunk (padding has
weight 0), so the whole op is a few gathers and batched matrix products per chunk, with memory bounded by
`_CHUNK_ELEMENTS`; the sum is divided by the sample count at the end, as the kernels do. The backward pass
recomputes the weights and scatters the transposed products back, so training saves only the rois.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "crop_and_resize_masks",
    "map_rois_to_levels",
    "multi_level_roi_align",
    "paste_masks",
    "roi_align",
]

# Upper bound on the elements of one chunk's temporaries (support crops, sample grids): 2**20 float32 elements are
# 4 MiB, small enough for the CPU caches and for the allocator to reuse (fresh large blocks cost page faults), large
# enough that per-chunk overhead stays small (1000 proposals on a 256-channel FPN take about 150 chunks). A single
# box larger than this is still processed, alone.
_CHUNK_ELEMENTS = 1 << 20

# ------------------------------------------------------------------------------------------------ input checks


def _pair_size(output_size: int | Sequence[int], name: str = "output_size") -> tuple[int, int]:
    values = tuple(output_size) if isinstance(output_size, Sequence) else (output_size, output_size)
    try:
        if len(values) != 2 or any(isinstance(v, bool) for v in values):
            raise TypeError
        size = (operator.index(values[0]), operator.index(values[1]))
    except TypeError:
        raise TypeError(f"`{name}` must be an int or a pair of ints (height, width), got {output_size!r}.") from None
    if min(size) <= 0:
        raise ValueError(f"`{name}` must be positive, got {output_size!r}.")
    return size


def _check_tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    return value


def _check_real_boxes(boxes: Tensor, name: str) -> None:
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"`{name}` must hold real numbers (float or int), got dtype {boxes.dtype}.")


def _check_finite(values: Tensor, name: str) -> None:
    if values.numel() and values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise ValueError(f"`{name}` holds NaN or infinite coordinates; drop or clip those boxes first.")


def _as_rois(boxes: Tensor | Sequence[Tensor], input: Tensor) -> Tensor:
    """`boxes` in either torchvision format -> validated (K, 5) rois on input's device."""
    num_images = input.shape[0]
    if isinstance(boxes, Tensor):
        _check_real_boxes(boxes, "boxes")
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"`boxes` as one tensor must be (K, 5) rows [batch_index, x1, y1, x2, y2], got shape "
                f"{tuple(boxes.shape)}; pass per-image (K_i, 4) boxes as a list of tensors instead."
            )
        rois = boxes
    elif isinstance(boxes, (list, tuple)):
        if len(boxes) > num_images:
            raise ValueError(
                f"`boxes` is a list of {len(boxes)} tensors but `input` holds {num_images} images; give one "
                "(K_i, 4) tensor per image."
            )
        parts = []
        for index, image_boxes in enumerate(boxes):
            where = f"boxes[{index}]"
            _check_tensor(image_boxes, where)
            _check_real_boxes(image_boxes, where)
            if image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
                raise ValueError(f"`{where}` must be (K_i, 4) [x1, y1, x2, y2], got shape {tuple(image_boxes.shape)}.")
            column = torch.full_like(image_boxes[:, :1], index)
            parts.append(torch.cat([column, image_boxes], dim=1))
        if not parts:
            return input.new_zeros((0, 5), dtype=torch.float64 if input.dtype == torch.float64 else torch.float32)
        rois = torch.cat(parts, dim=0)
    else:
        raise TypeError(f"`boxes` must be a (K, 5) tensor or a list of (K_i, 4) tensors, got {type(boxes).__name__}.")
    if rois.device != input.device:
        raise ValueError(f"`boxes` is on {rois.device} but `input` is on {input.device}; move them together.")
    _check_rois_values(rois, num_images, "boxes")
    return rois


def _check_rois_values(rois: Tensor, num_images: int, name: str) -> None:
    if rois.numel() == 0:
        return
    _check_finite(rois, name)
    index = rois[:, 0]
    if rois.is_floating_point() and not bool((index == index.round()).all()):
        raise ValueError(f"The batch indices (column 0) of `{name}` must be whole numbers.")
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= num_images:
        raise ValueError(
            f"The batch indices (column 0) of `{name}` must lie in [0, {num_images - 1}] for {num_images} "
            f"image(s), found values in [{low}, {high}]."
        )


def _check_feature_map(input: object, name: str) -> Tensor:
    _check_tensor(input, name)
    if input.dim() != 4:
        raise ValueError(f"`{name}` must be a (N, C, H, W) feature map, got shape {tuple(input.shape)}.")
    if not input.is_floating_point():
        raise TypeError(f"`{name}` must be a floating point tensor, got dtype {input.dtype}.")
    return input


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64; everything else (float32, half, bfloat16, integer masks) is computed in float32,
    # as MMDetection's `force_fp32` does around its RoI extractor.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_off(device: torch.device):
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _chunks(
    dims: Tensor, padded_cost, budget: int, groups: Tensor | None = None
) -> Iterator[tuple[int, int, list[int]]]:
    """Split rows of `dims` (K, m), already in processing order, into runs whose padded cost fits `budget`.

    A run is padded to the running maximum of each column, so its cost `length * padded_cost(maxima)` grows with
    its length and the longest fitting prefix is a count. Runs do not cross a change of `groups`. Yields
    (start, stop, maxima of the run).
    """
    if groups is None:
        ends = [dims.shape[0]]
    else:
        ends = torch.cumsum(torch.unique_consecutive(groups, return_counts=True)[1], 0).tolist()
    start = 0
    for end in ends:
        while start < end:
            running = torch.cummax(dims[start:end], dim=0).values
            cost = padded_cost(running) * torch.arange(1, running.shape[0] + 1, dtype=torch.float64)
            count = max(1, int((cost <= budget).sum()))
            yield start, start + count, running[count - 1].tolist()
            start += count


# ------------------------------------------------------------------------------------------------ RoIAlign


def _axis_geometry(
    start: Tensor, end: Tensor, size: int, bins: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per box, along one axis: first bin edge, bin size, samples per bin, first row of the support, its length.

    The arithmetic follows the kernels' order of operations so that the sample grid matches them in float32.
    """
    offset = 0.5 if aligned else 0.0
    start = start * spatial_scale - offset
    end = end * spatial_scale - offset
    length = end - start
    if not aligned:  # legacy (torchvision aligned=False, mmcv aligned=False): a roi is at least one pixel
        length = length.clamp(min=1.0)
    bin_size = length / bins
    if sampling_ratio > 0:
        grid = torch.full(start.shape, sampling_ratio, dtype=torch.long, device=start.device)
    else:  # ceil(roi size / output size); a size <= 0 gives no samples, hence a zero output
        grid = torch.ceil(bin_size).clamp(min=0).long()
    divisor = grid.clamp(min=1).to(start.dtype)
    # The extreme samples, computed exactly as `_axis_weights` computes every sample (each step is monotonic).
    first = start + 0.5 * bin_size / divisor
    last = start + (bins - 1) * bin_size + (grid.to(start.dtype) - 0.5) * bin_size / divisor
    low, high = torch.minimum(first, last), torch.maximum(first, last)
    # The rows a sample reads: floor of its clamped coordinate and the row after it, inside the map.
    row0 = low.clamp(min=0, max=size - 1).floor()
    row1 = (high.clamp(min=0, max=size - 1).floor() + 1).clamp(max=size - 1)
    touches = (grid > 0) & (high >= -1) & (low <= size)
    row0 = torch.where(touches, row0, torch.zeros_like(row0)).long()
    span = torch.where(touches, row1.long() - row0 + 1, torch.zeros_like(row0))
    return start, bin_size, grid, row0, span


def _accumulate(target: Tensor, index: Tensor, values: Tensor) -> None:
    """target[index] += values along dim 0, repeated indices summed in a fixed order (deterministic)."""
    if target.is_cuda:  # index_put_ with accumulate sorts the indices on CUDA (index_add_ uses atomics there)
        target.index_put_((index,), values, accumulate=True)
    else:  # index_add_ adds index after index on the CPU (index_put_ may accumulate in parallel there)
        target.index_add_(0, index, values)


def _axis_weights(
    start: Tensor, bin_size: Tensor, grid: Tensor, row0: Tensor, span: Tensor, size: int, bins: int
) -> Tensor:
    """(K, bins, max span): each bin's summed bilinear sample weights on rows row0 .. row0 + span - 1 of its box.

    Built from the samples (two taps each), K * bins * max span in memory: at most the boxes' outputs times the
    map's larger side.
    """
    dtype, device = start.dtype, start.device
    num, width = start.shape[0], int(span.max()) if span.numel() else 0
    weights = torch.zeros(num * bins * width, dtype=dtype, device=device)
    samples = grid.clamp(min=1).cpu()
    order = torch.argsort(samples, stable=True)
    step = torch.arange(bins, dtype=dtype, device=device).view(1, bins, 1)
    for first, stop, (max_grid,) in _chunks(samples[order, None], lambda d: bins * d[:, 0], _CHUNK_ELEMENTS):
        boxes = order[first:stop].to(device)
        sample = torch.arange(max_grid, dtype=dtype, device=device).view(1, 1, max_grid)
        box_start, box_bin = start[boxes].view(-1, 1, 1), bin_size[boxes].view(-1, 1, 1)
        box_grid = grid[boxes].view(-1, 1, 1)
        pos = box_start + step * box_bin + (sample + 0.5) * box_bin / box_grid.clamp(min=1).to(dtype)
        # mmcv's bilinear_interpolate: outside [-1, size] a sample reads 0; below 0 it reads row 0; from size-1 on
        # it reads row size-1 alone.
        valid = (pos >= -1) & (pos <= size) & (sample < box_grid)
        pos = pos.clamp(min=0)
        low = pos.floor()
        at_edge = low >= size - 1
        low = torch.where(at_edge, torch.full_like(low, size - 1), low)
        frac = torch.where(at_edge, torch.zeros_like(pos), pos - low)
        high = torch.where(at_edge, low, low + 1)
        zero = torch.zeros((), dtype=dtype, device=device)
        base = (boxes.view(-1, 1, 1) * bins + step.long()) * width
        last = (span[boxes].view(-1, 1, 1) - 1).expand_as(low)
        first_row = row0[boxes].view(-1, 1, 1)
        # Taps of valid samples lie inside the support by construction; the clamp only keeps any rounding
        # surprise inside the box's own row of the table.
        index_low = base + torch.minimum((low.long() - first_row).clamp(min=0), last)
        index_high = base + torch.minimum((high.long() - first_row).clamp(min=0), last)
        _accumulate(
            weights,
            torch.cat([index_low.flatten(), index_high.flatten()]),
            torch.cat([torch.where(valid, 1 - frac, zero).flatten(), torch.where(valid, frac, zero).flatten()]),
        )
    return weights.view(num, bins, width)


class _Chunk(NamedTuple):
    rois: Tensor  # (Kc,) positions in the rois tensor
    weights_y: Tensor  # (Kc, out_h, span_h)
    weights_x: Tensor  # (Kc, out_w, span_w)
    index: Tensor  # (Kc * span_h * span_w,) rows of the channels-last map
    count: Tensor  # (Kc, 1, 1, 1) samples per bin


def _plan(
    rois: Tensor,
    members: Tensor,
    shape: tuple[int, int, int, int],
    spatial_scale: float,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Iterator[_Chunk]]:
    """How rois[members] are pooled from an (N, H, W, C) map: the members that sample it, and their chunks.

    Members whose samples all miss the map (or that have none) are left out: their output is zero. Chunks hold
    boxes of similar support height (within a factor 2**0.25) sorted by support width, so that little of a chunk
    is padding.
    """
    _, height, width, channels = shape
    out_h, out_w = output_size
    with torch.no_grad():
        geometry = rois.detach()[members].to(dtype)
        y_start, y_bin, y_grid, y_row0, y_span = _axis_geometry(
            geometry[:, 2], geometry[:, 4], height, out_h, spatial_scale, sampling_ratio, aligned
        )
        x_start, x_bin, x_grid, x_col0, x_span = _axis_geometry(
            geometry[:, 1], geometry[:, 3], width, out_w, spatial_scale, sampling_ratio, aligned
        )
        active = torch.nonzero((y_span > 0) & (x_span > 0)).flatten()
        members, batch = members[active], geometry[active, 0].long()
        y_row0, y_span, x_col0, x_span, y_grid, x_grid = (
            t[active] for t in (y_row0, y_span, x_col0, x_span, y_grid, x_grid)
        )
        weights_y = _axis_weights(y_start[active], y_bin[active], y_grid, y_row0, y_span, height, out_h)
        weights_x = _axis_weights(x_start[active], x_bin[active], x_grid, x_col0, x_span, width, out_w)
        count = (y_grid * x_grid).clamp(min=1).to(dtype)
        spans = torch.stack([y_span, x_span], dim=1).cpu()
    height_class = torch.floor(4 * torch.log2(spans[:, 0].double()))
    order = torch.argsort(height_class * (width + 1) + spans[:, 1], stable=True)
    spans, height_class = spans[order], height_class[order]

    def padded_cost(d: Tensor) -> Tensor:  # the crop and the product after the y contraction
        return channels * d[:, 1].double() * (d[:, 0] + out_h)

    def chunks() -> Iterator[_Chunk]:
        for first, stop, (span_h, span_w) in _chunks(spans, padded_cost, _CHUNK_ELEMENTS, height_class):
            boxes = order[first:stop].to(members.device)
            with torch.no_grad():
                # Rows past a box's own support (padding up to the chunk's span) have weight 0; they are clamped
                # into the map so that the gather stays in bounds.
                rows = (y_row0[boxes, None] + torch.arange(span_h, device=boxes.device)).clamp(max=height - 1)
                cols = (x_col0[boxes, None] + torch.arange(span_w, device=boxes.device)).clamp(max=width - 1)
                index = (batch[boxes, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
            yield _Chunk(
                members[boxes],
                weights_y[boxes, :, :span_h],
                weights_x[boxes, :, :span_w],
                index.flatten(),
                count[boxes].view(-1, 1, 1, 1),
            )

    return members, chunks()


def _channels_last_rows(feature_map: Tensor) -> Tensor:
    """(N, C, H, W) -> (N*H*W, C): one row per pixel, so that a box's window is a gather of whole rows."""
    num, channels, height, width = feature_map.shape
    rows = feature_map.permute(0, 2, 3, 1)
    if rows.is_contiguous():  # a channels_last map: free
        rows = rows.reshape(-1, channels)
    else:  # one 2-D transpose per image, much faster on the CPU than a 4-D permuted copy
        planes = feature_map.reshape(num, channels, height * width)
        rows = torch.empty((num, height * width, channels), dtype=feature_map.dtype, device=feature_map.device)
        for image in range(num):
            rows[image].copy_(planes[image].t())
        rows = rows.view(-1, channels)
    return rows.view(torch.uint8) if rows.dtype == torch.bool else rows


def _rows_to_map(rows: Tensor, shape: torch.Size, channels_last: bool) -> Tensor:
    """Inverse of `_channels_last_rows`: (N*H*W, C) -> (N, C, H, W), in channels-last or contiguous layout."""
    num, channels, height, width = shape
    if channels_last:
        return rows.view(num, height, width, channels).permute(0, 3, 1, 2)
    planes = torch.empty((num, channels, height * width), dtype=rows.dtype, device=rows.device)
    for image in range(num):
        planes[image].copy_(rows.view(num, height * width, channels)[image].t())
    return planes.view(num, channels, height, width)


def _members(rois: Tensor, levels: Tensor | None, level: int) -> Tensor:
    if levels is None:
        return torch.arange(rois.shape[0], device=rois.device)
    return torch.nonzero(levels == level).flatten()


def _pool(
    feature_maps: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    spatial_scales: Sequence[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    dtype: torch.dtype,
) -> Tensor:
    """RoIAlign of each roi on its level's map (every roi on map 0 when `levels` is None); no autograd here."""
    out_h, out_w = output_size
    channels = feature_maps[0].shape[1]
    result = torch.empty((rois.shape[0], channels, out_h, out_w), dtype=dtype, device=rois.device)
    written = torch.zeros(rois.shape[0], dtype=torch.bool, device=rois.device)
    for level, feature_map in enumerate(feature_maps):
        members = _members(rois, levels, level)
        if members.numel() == 0 or feature_map.numel() == 0:  # nothing to read: those rois stay zero
            continue
        flat = _channels_last_rows(feature_map)
        shape = (feature_map.shape[0], *feature_map.shape[2:], channels)
        active, chunks = _plan(
            rois, members, shape, spatial_scales[level], output_size, sampling_ratio, aligned, dtype
        )
        written[active] = True
        for chunk in chunks:
            span_h, span_w = chunk.weights_y.shape[2], chunk.weights_x.shape[2]
            crop = flat.index_select(0, chunk.index).to(dtype).view(-1, span_h, span_w * channels)
            pooled = torch.bmm(chunk.weights_y, crop).view(-1, out_h, span_w, channels)  # y contracted
            if out_w <= channels:  # repeating the x weights per output row costs less than a transpose
                pooled = torch.matmul(chunk.weights_x.unsqueeze(1), pooled).permute(0, 3, 1, 2)
            else:  # few channels (masks): move the width to the front instead
                pooled = pooled.transpose(1, 2).reshape(-1, span_w, out_h * channels)
                pooled = torch.bmm(chunk.weights_x, pooled).view(-1, out_w, out_h, channels).permute(0, 3, 2, 1)
            result.index_copy_(0, chunk.rois, pooled.div_(chunk.count.view(-1, 1, 1, 1)))
    result.index_fill_(0, torch.nonzero(~written).flatten(), 0)
    return result


def _pool_backward(
    grad: Tensor,
    shapes: Sequence[torch.Size],
    rois: Tensor,
    levels: Tensor | None,
    spatial_scales: Sequence[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    dtype: torch.dtype,
    needs: Sequence[bool],
) -> list[Tensor | None]:
    """Gradient of `_pool` with respect to each map, as (N*H*W, C) rows: the transposed products, scattered back."""
    out_h, out_w = output_size
    grads: list[Tensor | None] = []
    for level, shape in enumerate(shapes):
        if not needs[level]:
            grads.append(None)
            continue
        num, channels, height, width = shape
        grad_rows = torch.zeros((num * height * width, channels), dtype=dtype, device=grad.device)
        members = _members(rois, levels, level)
        if members.numel() and grad_rows.numel():
            _, chunks = _plan(
                rois,
                members,
                (num, height, width, channels),
                spatial_scales[level],
                output_size,
                sampling_ratio,
                aligned,
                dtype,
            )
            for chunk in chunks:
                span_w = chunk.weights_x.shape[2]
                upstream = grad.index_select(0, chunk.rois).to(dtype).permute(0, 2, 3, 1) / chunk.count
                partial = torch.matmul(chunk.weights_x.transpose(1, 2).unsqueeze(1), upstream)  # (Kc, oh, Sw, C)
                crop = torch.bmm(chunk.weights_y.transpose(1, 2), partial.reshape(-1, out_h, span_w * channels))
                _accumulate(grad_rows, chunk.index, crop.reshape(-1, channels))
        grads.append(grad_rows)
    return grads


class _RoIAlignFunction(torch.autograd.Function):
    """`_pool` with a backward that recomputes the (cheap) weights instead of saving the crops."""

    @staticmethod
    def forward(ctx, rois, levels, settings, *feature_maps):
        spatial_scales, output_size, sampling_ratio, aligned, dtype = settings
        device = feature_maps[0].device
        with _autocast_off(device):
            result = _pool(feature_maps, rois, levels, spatial_scales, output_size, sampling_ratio, aligned, dtype)
        ctx.save_for_backward(rois, levels)
        ctx.settings = settings
        ctx.maps = [(m.shape, m.dtype, m.permute(0, 2, 3, 1).is_contiguous()) for m in feature_maps]
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rois, levels = ctx.saved_tensors
        spatial_scales, output_size, sampling_ratio, aligned, dtype = ctx.settings
        needs = ctx.needs_input_grad[3:]
        with _autocast_off(grad.device):
            grads = _pool_backward(
                grad,
                [shape for shape, _, _ in ctx.maps],
                rois,
                levels,
                spatial_scales,
                output_size,
                sampling_ratio,
                aligned,
                dtype,
                needs,
            )
        # Each gradient takes the layout of its map (channels-last, or contiguous by one transpose per image).
        grads = [
            g if g is None else _rows_to_map(g.to(map_dtype), shape, channels_last)
            for g, (shape, map_dtype, channels_last) in zip(grads, ctx.maps)
        ]
        return (None, None, None, *grads)


def _roi_align_levels(
    feature_maps: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    spatial_scales: Sequence[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    dtype = _compute_dtype(feature_maps[0].dtype)
    settings = (tuple(spatial_scales), output_size, sampling_ratio, aligned, dtype)
    if torch.is_grad_enabled() and any(m.requires_grad for m in feature_maps):
        result = _RoIAlignFunction.apply(rois, levels, settings, *feature_maps)
    else:
        with _autocast_off(rois.device):
            result = _pool(feature_maps, rois, levels, spatial_scales, output_size, sampling_ratio, aligned, dtype)
    return result.to(feature_maps[0].dtype)


def roi_align(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign with average pooling: `torchvision.ops.roi_align`'s signature, mmcv `RoIAlign`'s numbers.

    Args:
        input: (N, C, H, W) floating point feature map.
        boxes: a (K, 5) tensor of rows [batch_index, x1, y1, x2, y2], or a list of (K_i, 4) tensors
            [x1, y1, x2, y2], one per image (the i-th tensor belongs to image i). Coordinates are in the input
            image's pixels; `spatial_scale` maps them onto the feature map.
        output_size: out_h and out_w, an int or a pair (h, w).
        spatial_scale: feature map size / image size, e.g. 1 / stride.
        sampling_ratio: samples per bin along each axis; <= 0 means adaptive: ceil(roi size / output size), which
            is 0 (no samples, zero output) for a roi of size <= 0.
        aligned: True shifts the scaled box corners by -0.5 (pixel centres at half-integers, mmcv
            `RoIAlign(aligned=True)` as MMDetection's Mask R-CNN uses it; no minimum roi size). False is the
            legacy rule: no shift, and roi width and height are raised to at least 1.

    Per bin, a sampling_ratio x sampling_ratio grid (or the adaptive one) of points at the grid cells' centres is
    interpolated bilinearly; a point with y < -1 or y > H (x likewise) reads 0, a coordinate below 0 is read at
    0, and one at or beyond H-1 reads row H-1 alone. The bin value is the mean over the points.

    Returns a (K, C, out_h, out_w) tensor in the boxes' order. float64 input is computed in float64, any other
    floating dtype (float32, float16, bfloat16, also under autocast) in float32, and the result is returned in
    the input's dtype (MMDetection's `force_fp32(out_fp16=True)` on its RoI extractor does the same).
    Differentiable with respect to `input` (not to `boxes`) and deterministic. A channels-last `input` is read
    as it is; any other is copied once to that layout. Unlike mmcv's CPU kernel, a
    negative-size box in aligned mode is not an error: with adaptive sampling it gives zeros, as on CUDA.
    """
    _check_feature_map(input, "input")
    out_h, out_w = _pair_size(output_size)
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)):
        raise TypeError(f"`spatial_scale` must be a number, got {type(spatial_scale).__name__}.")
    if not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"`spatial_scale` must be a finite positive number (1 / stride), got {spatial_scale}.")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise TypeError(f"`sampling_ratio` must be an int (<= 0 for adaptive), got {sampling_ratio!r}.")
    if not isinstance(aligned, bool):
        raise TypeError(f"`aligned` must be a bool, got {aligned!r}.")
    rois = _as_rois(boxes, input)
    return _roi_align_levels([input], rois, None, [float(spatial_scale)], (out_h, out_w), sampling_ratio, aligned)


# ------------------------------------------------------------------------------------------------ FPN levels


def map_rois_to_levels(boxes: Tensor, num_levels: int = 4, finest_scale: float = 56) -> Tensor:
    """Pyramid level of each box, MMDetection's `SingleRoIExtractor.map_roi_levels`.

    `boxes` is (K, 4) [x1, y1, x2, y2] or (K, 5) rois with a leading batch index. With scale = sqrt(w * h)
    (w = x2 - x1, h = y2 - y1, no +1), level = floor(log2(scale / finest_scale + 1e-6)) clamped to
    [0, num_levels - 1]: with finest_scale 56, scale < 112 goes to level 0, [112, 224) to 1, [224, 448) to 2,
    and the rest to 3 (the 1e-6 moves each threshold down by a few 1e-5). Computed in the boxes' floating dtype
    (float32 for integers), as MMDetection does, so that boxes at a threshold land where they land there. A box
    with w * h < 0 (mmdet: NaN, no level, zero features) goes to level 0, where aligned adaptive RoIAlign gives
    it zeros as well.

    Returns a (K,) int64 tensor.
    """
    _check_tensor(boxes, "boxes")
    _check_real_boxes(boxes, "boxes")
    if boxes.dim() != 2 or boxes.shape[1] not in (4, 5):
        raise ValueError(f"`boxes` must be (K, 4) boxes or (K, 5) rois, got shape {tuple(boxes.shape)}.")
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"`num_levels` must be a positive int, got {num_levels!r}.")
    if isinstance(finest_scale, bool) or not isinstance(finest_scale, (int, float)) or not finest_scale > 0:
        raise ValueError(f"`finest_scale` must be a positive number, got {finest_scale!r}.")
    _check_finite(boxes, "boxes")
    coords = boxes[:, -4:]
    if not coords.is_floating_point():
        coords = coords.float()
    area = ((coords[:, 2] - coords[:, 0]) * (coords[:, 3] - coords[:, 1])).clamp(min=0)
    levels = torch.floor(torch.log2(torch.sqrt(area) / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def multi_level_roi_align(
    feature_maps: Sequence[Tensor],
    rois: Tensor,
    output_size: int | Sequence[int],
    strides: Sequence[float],
    sampling_ratio: int = 0,
    aligned: bool = True,
    finest_scale: float = 56,
) -> Tensor:
    """RoI features from a feature pyramid, MMDetection's `SingleRoIExtractor.forward`.

    Each (K, 5) roi [batch_index, x1, y1, x2, y2] is pooled by `roi_align` from the level `map_rois_to_levels`
    gives it (spatial scale 1 / that level's stride); the defaults are Mask R-CNN's (mmcv `RoIAlign` with
    sampling_ratio 0 and aligned True, finest scale 56). With one map every roi uses it. `feature_maps` are
    (N, C, H_l, W_l) with the same N, C, dtype and device; `strides` has one entry per map. Maps in
    `torch.channels_last` memory format are read as they are; others are copied once to that layout.

    Returns (K, C, out_h, out_w) in the rois' order and the maps' dtype; (0, C, out_h, out_w) for no rois.
    """
    if not isinstance(feature_maps, (list, tuple)) or not feature_maps:
        raise TypeError("`feature_maps` must be a non-empty list of (N, C, H, W) tensors, one per level.")
    for level, feature_map in enumerate(feature_maps):
        _check_feature_map(feature_map, f"feature_maps[{level}]")
    first = feature_maps[0]
    for level, feature_map in enumerate(feature_maps[1:], start=1):
        if feature_map.shape[:2] != first.shape[:2] or feature_map.dtype != first.dtype:
            raise ValueError(
                f"`feature_maps[{level}]` is {tuple(feature_map.shape)} {feature_map.dtype} but level 0 is "
                f"{tuple(first.shape)} {first.dtype}; every level needs the same batch size, channels and dtype."
            )
        if feature_map.device != first.device:
            raise ValueError("`feature_maps` must all be on one device.")
    if not isinstance(strides, Sequence) or len(strides) != len(feature_maps):
        raise ValueError(f"`strides` must give one stride per feature map ({len(feature_maps)}), got {strides!r}.")
    for stride in strides:
        if isinstance(stride, bool) or not isinstance(stride, (int, float)) or not stride > 0:
            raise ValueError(f"`strides` must be positive numbers, got {strides!r}.")
    out_h, out_w = _pair_size(output_size)
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise TypeError(f"`sampling_ratio` must be an int (<= 0 for adaptive), got {sampling_ratio!r}.")
    _check_tensor(rois, "rois")
    _check_real_boxes(rois, "rois")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"`rois` must be (K, 5) rows [batch_index, x1, y1, x2, y2], got shape {tuple(rois.shape)}.")
    if rois.device != first.device:
        raise ValueError(f"`rois` is on {rois.device} but `feature_maps` are on {first.device}.")
    _check_rois_values(rois, first.shape[0], "rois")
    # One map: every roi uses it, as SingleRoIExtractor does (and as the level rule with one level says).
    levels = map_rois_to_levels(rois, len(feature_maps), finest_scale) if len(feature_maps) > 1 else None
    scales = [1.0 / float(stride) for stride in strides]
    return _roi_align_levels(list(feature_maps), rois, levels, scales, (out_h, out_w), sampling_ratio, aligned)


# ------------------------------------------------------------------------------------------------ masks


def paste_masks(masks: Tensor, boxes: Tensor, image_size: Sequence[int], threshold: float = 0.5) -> Tensor:
    """Paste per-box mask probabilities into an image and binarise them: MMDetection's
    `FCNMaskHead.get_seg_masks` with `_do_paste_mask`.

    Args:
        masks: (N, h, w) (or (N, 1, h, w)) probabilities, e.g. sigmoid of the 28x28 mask logits of each box's class.
        boxes: (N, 4) [x1, y1, x2, y2] in the pixels of the target image.
        image_size: (H, W) of the target image.
        threshold: a pixel is in the mask when its interpolated probability is >= threshold (mmdet's
            `mask_thr_binary`, 0.5 for Mask R-CNN). Must be > 0.

    Pixel (row, col) samples mask `n` at its centre: y = (row + 0.5 - y1) / (y2 - y1) * 2 - 1 (x likewise) in
    `F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`, computed in float32 as mmdet
    does. Each mask is sampled only over its box grown by half a mask cell (plus a pixel) - beyond it
    grid_sample reads only zero padding - so the result equals mmdet's full-image (GPU) paste exactly, at a
    fraction of the work; mmdet's CPU paste (the box grown by one pixel) agrees with it for any threshold >= 0.5.
    Boxes of zero or negative width or height paste nothing. (mmdet turns the infinities of its division by a zero
    width into the mask's centre column, so its full-image paste fills the box's rows across the whole image, and
    its negative-size boxes paste a mirrored mask; decoded and clipped detections have neither.)

    Returns an (N, H, W) bool tensor. Memory is bounded: masks are pasted in chunks of similar box sizes.
    """
    _check_tensor(masks, "masks")
    _check_tensor(boxes, "boxes")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"`masks` must be (N, h, w) mask probabilities, got shape {tuple(masks.shape)}.")
    if not masks.is_floating_point():
        raise TypeError(f"`masks` must be floating point probabilities, got dtype {masks.dtype}.")
    _check_real_boxes(boxes, "boxes")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != masks.shape[0]:
        raise ValueError(
            f"`boxes` must be (N, 4) [x1, y1, x2, y2] with one box per mask ({masks.shape[0]}), got shape "
            f"{tuple(boxes.shape)}."
        )
    if boxes.device != masks.device:
        raise ValueError(f"`boxes` is on {boxes.device} but `masks` is on {masks.device}.")
    height, width = _pair_size(image_size, "image_size")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"`threshold` must be a number > 0 (mmdet uses 0.5), got {threshold!r}.")
    _check_finite(boxes, "boxes")
    count, mask_h, mask_w = masks.shape
    device = masks.device
    result = torch.zeros((count, height, width), dtype=torch.bool, device=device)
    if count == 0 or mask_h == 0 or mask_w == 0:
        return result
    boxes = boxes.float()
    with torch.no_grad(), _autocast_off(device):
        x1, y1, x2, y2 = boxes.unbind(dim=1)
        box_w, box_h = x2 - x1, y2 - y1
        # Pixels whose centre lies within half a mask cell of the box read a non-zero value; one more pixel of
        # margin on each side absorbs rounding.
        col0 = torch.floor(x1 - box_w / (2 * mask_w)).clamp(min=-1, max=width) - 1
        col1 = torch.ceil(x2 + box_w / (2 * mask_w)).clamp(min=-1, max=width) + 1
        row0 = torch.floor(y1 - box_h / (2 * mask_h)).clamp(min=-1, max=height) - 1
        row1 = torch.ceil(y2 + box_h / (2 * mask_h)).clamp(min=-1, max=height) + 1
        col0, row0 = col0.clamp(min=0).long(), row0.clamp(min=0).long()
        col1, row1 = col1.clamp(max=width).long(), row1.clamp(max=height).long()
        proper = (box_w > 0) & (box_h > 0)
        span_h = torch.where(proper, (row1 - row0).clamp(min=0), torch.zeros_like(row0))
        span_w = torch.where(proper, (col1 - col0).clamp(min=0), torch.zeros_like(col0))
        active = torch.nonzero((span_h > 0) & (span_w > 0)).flatten()
        dims = torch.stack([span_h, span_w], dim=1)[active].cpu()

        def padded_cost(d: Tensor) -> Tensor:
            return d[:, 0].double() * d[:, 1].double()

        order = torch.argsort(padded_cost(dims), stable=True)
        dims, active = dims[order], active[order.to(device)]
        flat = result.view(-1)
        for start, stop, (rows, cols) in _chunks(dims, padded_cost, _CHUNK_ELEMENTS // 4):
            chosen = active[start:stop]
            row_index = row0[chosen, None] + torch.arange(rows, device=device)
            col_index = col0[chosen, None] + torch.arange(cols, device=device)
            # mmdet: img = arange(...).float32 + 0.5; (img - x1) / (x2 - x1) * 2 - 1 - the same float32 steps.
            grid_y = (row_index.float() + 0.5 - y1[chosen, None]) / box_h[chosen, None] * 2 - 1
            grid_x = (col_index.float() + 0.5 - x1[chosen, None]) / box_w[chosen, None] * 2 - 1
            grid = torch.stack(
                [grid_x[:, None, :].expand(-1, rows, cols), grid_y[:, :, None].expand(-1, rows, cols)], dim=3
            )
            sampled = F.grid_sample(masks[chosen, None].float(), grid, align_corners=False)[:, 0]
            inside = (torch.arange(rows, device=device) < span_h[chosen, None])[:, :, None] & (
                torch.arange(cols, device=device) < span_w[chosen, None]
            )[:, None, :]
            keep = (sampled >= threshold) & inside
            pixel = (chosen[:, None, None] * height + row_index[:, :, None]) * width + col_index[:, None, :]
            flat[pixel[keep]] = True
    return result


def crop_and_resize_masks(
    gt_masks: Tensor,
    boxes: Tensor,
    mask_indices: Tensor,
    output_size: int | Sequence[int],
    clip_boxes: bool = True,
) -> Tensor:
    """Mask R-CNN training targets: MMDetection's `mask_target_single` with `BitmapMasks.crop_and_resize`.

    Args:
        gt_masks: (G, H, W) binary ground-truth masks of one image (bool, integer or float 0/1).
        boxes: (P, 4) positive proposals [x1, y1, x2, y2] in the same pixels.
        mask_indices: (P,) index into `gt_masks` of each proposal's assigned ground truth.
        output_size: target size, 28 for Mask R-CNN.
        clip_boxes: clip the proposals to [0, W] x [0, H] first, as `mask_target_single` does.

    Each target is RoIAlign of the assigned mask (as float) over the proposal with aligned=True,
    sampling_ratio=0 (adaptive), spatial scale 1, binarised by value >= 0.5 (mmdet's
    `roi_align(masks, rois, out_shape, 1.0, 0, 'avg', True)` then `targets >= 0.5`). The masks are never
    converted to float as a whole: only each proposal's support is.

    Returns a (P, out_h, out_w) tensor of 0.0 / 1.0 in the boxes' floating dtype (float32 for integer boxes), as
    mmdet's targets are float.
    """
    _check_tensor(gt_masks, "gt_masks")
    _check_tensor(boxes, "boxes")
    _check_tensor(mask_indices, "mask_indices")
    if gt_masks.dim() != 3:
        raise ValueError(f"`gt_masks` must be (G, H, W) binary masks, got shape {tuple(gt_masks.shape)}.")
    if gt_masks.is_complex():
        raise TypeError(f"`gt_masks` must be bool, integer or float, got dtype {gt_masks.dtype}.")
    _check_real_boxes(boxes, "boxes")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"`boxes` must be (P, 4) [x1, y1, x2, y2], got shape {tuple(boxes.shape)}.")
    if mask_indices.dim() != 1 or mask_indices.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"`mask_indices` must be (P,) with one index per box ({boxes.shape[0]}), got shape "
            f"{tuple(mask_indices.shape)}."
        )
    if mask_indices.is_floating_point() or mask_indices.dtype == torch.bool or mask_indices.is_complex():
        raise TypeError(f"`mask_indices` must be an integer tensor, got dtype {mask_indices.dtype}.")
    if not (gt_masks.device == boxes.device == mask_indices.device):
        raise ValueError("`gt_masks`, `boxes` and `mask_indices` must be on one device.")
    out_h, out_w = _pair_size(output_size)
    _check_finite(boxes, "boxes")
    dtype = boxes.dtype if boxes.dtype in (torch.float32, torch.float64) else torch.float32
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, out_h, out_w), dtype=dtype)
    num_masks, height, width = gt_masks.shape
    low, high = int(mask_indices.min()), int(mask_indices.max())
    if low < 0 or high >= num_masks:
        raise ValueError(
            f"`mask_indices` must lie in [0, {num_masks - 1}] for {num_masks} ground-truth mask(s), found values "
            f"in [{low}, {high}]."
        )
    boxes = boxes.to(dtype)
    if clip_boxes:
        limits = boxes.new_tensor([width, height, width, height])
        boxes = torch.minimum(boxes.clamp(min=0), limits)
    rois = torch.cat([mask_indices.to(dtype)[:, None], boxes], dim=1)
    with torch.no_grad(), _autocast_off(boxes.device):
        targets = _pool([gt_masks.unsqueeze(1)], rois, None, [1.0], (out_h, out_w), 0, True, dtype)
    return (targets[:, 0] >= 0.5).to(dtype)
