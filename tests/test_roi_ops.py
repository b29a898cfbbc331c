"""RoI operations against plain loops that follow the algorithms point by point.

The references below are written for reading, not speed: one box, one bin, one sample at a time, with the rules
of mmcv's RoIAlign kernels (`ROIAlignForward` in `roi_align.cpp`, `bilinear_interpolate`) and of MMDetection's
`_do_paste_mask` spelled out.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from hf_pvt import roi_ops_hf_pvt
from hf_pvt.roi_ops_hf_pvt import (
    crop_and_resize_masks,
    map_rois_to_levels,
    multi_level_roi_align,
    paste_masks,
    roi_align,
)

# ------------------------------------------------------------------------------------------------ references


def bilinear(feature: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """One sample of a (C, H, W) map under mmcv's border rule."""
    _, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(feature.shape[0], dtype=feature.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(math.floor(y)), int(math.floor(x))
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feature[:, y_low, x_low]
        + hy * lx * feature[:, y_low, x_high]
        + ly * hx * feature[:, y_high, x_low]
        + ly * lx * feature[:, y_high, x_high]
    )


def reference_roi_align(feature, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Per box, per bin, per sample, in Python floats (float64)."""
    out_h, out_w = output_size
    feature = feature.double()
    result = torch.zeros(len(rois), feature.shape[1], out_h, out_w, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        start_x, start_y = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        roi_w = x2 * spatial_scale - offset - start_x
        roi_h = y2 * spatial_scale - offset - start_y
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                total = torch.zeros(feature.shape[1], dtype=torch.float64)
                for iy in range(grid_h):
                    y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += bilinear(feature[int(b)], y, x)
                result[k, :, ph, pw] = total / count
    return result


def reference_paste(masks, boxes, height, width, threshold, region="image"):
    """MMDetection's `_do_paste_mask`, one box at a time; region "image" (GPU path) or "box" (CPU skip_empty)."""
    pasted = torch.zeros(len(masks), height, width, dtype=torch.bool)
    for n in range(len(masks)):
        box = boxes[n : n + 1].float()
        if region == "box":
            x0i, y0i = torch.clamp(box.min(dim=0).values.floor()[:2] - 1, min=0).to(torch.int32).tolist()
            x1i = int(torch.clamp(box[:, 2].max().ceil() + 1, max=width))
            y1i = int(torch.clamp(box[:, 3].max().ceil() + 1, max=height))
        else:
            x0i, y0i, x1i, y1i = 0, 0, width, height
        x0, y0, x1, y1 = torch.split(box, 1, dim=1)
        img_y = torch.arange(y0i, y1i, dtype=torch.float32) + 0.5
        img_x = torch.arange(x0i, x1i, dtype=torch.float32) + 0.5
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1
        gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
        gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
        grid = torch.stack([gx, gy], dim=3)
        sampled = F.grid_sample(masks[n : n + 1, None].float(), grid, align_corners=False)[0, 0]
        pasted[n, y0i:y1i, x0i:x1i] = sampled >= threshold
    return pasted


# ------------------------------------------------------------------------------------------------ fixtures


def feature_map(seed=0, n=2, c=3, h=9, w=11, dtype=torch.float64):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def hard_rois(seed=0, n=2, h=9, w=11, scale=1.0):
    """Random boxes plus the awkward ones: partly and wholly outside, zero-size, negative-size, sub-pixel."""
    g = torch.Generator().manual_seed(seed)
    size_h, size_w = h / scale, w / scale
    x1 = torch.rand(12, generator=g, dtype=torch.float64) * size_w * 1.2 - 0.1 * size_w
    y1 = torch.rand(12, generator=g, dtype=torch.float64) * size_h * 1.2 - 0.1 * size_h
    bw = torch.rand(12, generator=g, dtype=torch.float64) * size_w
    bh = torch.rand(12, generator=g, dtype=torch.float64) * size_h
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1).tolist()
    boxes += [
        [-3.0, -2.0, 4.0, 5.0],  # partly outside, top left
        [size_w - 2.0, size_h - 3.0, size_w + 4.0, size_h + 1.5],  # partly outside, bottom right
        [size_w + 3.0, 1.0, size_w + 8.0, 4.0],  # wholly outside, right
        [-9.0, -9.0, -2.5, -1.5],  # wholly outside, top left
        [-1.5, 2.0, -0.8, 6.0],  # outside but within the one-pixel read margin
        [3.0, 2.0, 3.0, 2.0],  # zero size
        [4.0, 3.0, 4.0, 7.0],  # zero width
        [6.0, 5.0, 2.0, 1.0],  # negative size
        [5.0, 2.0, 3.0, 6.5],  # negative width
        [2.3, 3.6, 2.5, 3.7],  # sub-pixel
        [0.0, 0.0, size_w, size_h],  # the whole map
        [size_w - 0.2, size_h - 0.3, size_w, size_h],  # the last pixel's corner
    ]
    boxes = torch.tensor(boxes, dtype=torch.float64)
    batch = torch.arange(len(boxes), dtype=torch.float64) % n
    return torch.cat([batch[:, None], boxes], dim=1)


# ------------------------------------------------------------------------------------------------ roi_align


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, -1, 2])
@pytest.mark.parametrize("output_size", [(3, 4), 2])
def test_roi_align_matches_the_loop(aligned, sampling_ratio, output_size):
    feature = feature_map()
    rois = hard_rois()
    expected = reference_roi_align(feature, rois, roi_ops_hf_pvt._pair_size(output_size), 1.0, sampling_ratio, aligned)
    got = roi_align(feature, rois, output_size, 1.0, sampling_ratio, aligned)
    assert got.shape == expected.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_spatial_scale_and_float32(aligned):
    feature = feature_map(seed=1, h=10, w=7)
    rois = hard_rois(seed=1, h=10, w=7, scale=0.25)
    expected = reference_roi_align(feature, rois, (2, 5), 0.25, 0, aligned)
    got = roi_align(feature.float(), rois.float(), (2, 5), spatial_scale=0.25, sampling_ratio=0, aligned=aligned)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_box_formats_agree_and_list_indexes_images():
    feature = feature_map(n=3)
    per_image = [hard_rois(seed=s)[:, 1:] for s in range(3)]
    per_image[1] = per_image[1][:0]  # an image without boxes
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(per_image)])
    from_list = roi_align(feature, per_image, (3, 2), sampling_ratio=0, aligned=True)
    from_rois = roi_align(feature, rois, (3, 2), sampling_ratio=0, aligned=True)
    assert torch.equal(from_list, from_rois)
    expected = reference_roi_align(feature, rois, (3, 2), 1.0, 0, True)
    torch.testing.assert_close(from_rois, expected, atol=1e-10, rtol=0)


def test_chunking_does_not_change_the_result(monkeypatch):
    feature = feature_map(c=5)
    rois = hard_rois(seed=3)
    whole = roi_align(feature, rois, 3, sampling_ratio=0, aligned=True)
    monkeypatch.setattr(roi_ops_hf_pvt, "_CHUNK_ELEMENTS", 1)  # one box per chunk
    assert torch.equal(roi_align(feature, rois, 3, sampling_ratio=0, aligned=True), whole)
    monkeypatch.setattr(roi_ops_hf_pvt, "_CHUNK_ELEMENTS", 2000)
    torch.testing.assert_close(roi_align(feature, rois, 3, sampling_ratio=0, aligned=True), whole, atol=1e-12, rtol=0)


def test_many_samples_per_bin_and_sparse_samples():
    """Bins with dozens of samples per axis, and big boxes sampled sparsely by a fixed ratio."""
    feature = feature_map(seed=6, n=1, c=2, h=40, w=50)
    rois = torch.tensor([[0, 0.0, 0.0, 50.0, 40.0], [0, -20.0, 3.5, 70.0, 31.2], [0, 4.2, 1.1, 45.3, 38.9]])
    for sampling_ratio in (0, 3):
        for aligned in (True, False):
            expected = reference_roi_align(feature, rois, (2, 3), 1.0, sampling_ratio, aligned)
            got = roi_align(feature, rois, (2, 3), 1.0, sampling_ratio, aligned)
            torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


def test_layouts_and_autograd_path_agree():
    feature = feature_map(c=6, dtype=torch.float32)
    rois = hard_rois(seed=7).float()
    plain = roi_align(feature, rois, (3, 4), sampling_ratio=0, aligned=True)
    channels_last = feature.contiguous(memory_format=torch.channels_last)
    assert torch.equal(roi_align(channels_last, rois, (3, 4), sampling_ratio=0, aligned=True), plain)
    grads = []
    for layout in (feature, channels_last):
        leaf = layout.clone().requires_grad_()
        with_grad = roi_align(leaf, rois, (3, 4), sampling_ratio=0, aligned=True)
        assert with_grad.requires_grad and torch.equal(with_grad.detach(), plain)
        (with_grad * torch.arange(with_grad.numel()).view_as(with_grad)).sum().backward()
        grads.append(leaf.grad)
    assert grads[0].is_contiguous() and grads[1].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(grads[0], grads[1])
    half = feature.bfloat16().requires_grad_()
    roi_align(half, rois, 3, sampling_ratio=0, aligned=True).float().sum().backward()
    assert half.grad.dtype == torch.bfloat16 and half.grad.shape == half.shape


def test_empty_boxes():
    feature = feature_map()
    assert roi_align(feature, torch.zeros(0, 5), (2, 3)).shape == (0, 3, 2, 3)
    assert roi_align(feature, [torch.zeros(0, 4), torch.zeros(0, 4)], 4).shape == (0, 3, 4, 4)
    assert roi_align(feature, [], 4).shape == (0, 3, 4, 4)
    rois = hard_rois()[:3]
    assert not roi_align(feature[:, :, :0], rois, 2).any()  # an empty map reads as zeros
    assert roi_align(feature[:, :0], rois, 2).shape == (3, 0, 2, 2)


def test_gradcheck():
    feature = feature_map(n=2, c=1, h=5, w=6).requires_grad_()
    rois = torch.tensor(
        [[0, 0.3, 0.7, 4.2, 3.9], [1, -1.2, 2.1, 3.3, 6.5], [0, 3.1, 1.2, 3.6, 1.9], [1, 1.0, 1.0, 5.9, 4.9]],
        dtype=torch.float64,
    )
    for aligned in (True, False):
        assert torch.autograd.gradcheck(lambda f, a=aligned: roi_align(f, rois, (2, 3), 1.0, 0, a), (feature,))


def test_deterministic_forward_and_backward():
    feature = feature_map(c=4, dtype=torch.float32).requires_grad_()
    rois = hard_rois(seed=5).float()
    grads, outputs = [], []
    for _ in range(2):
        out = roi_align(feature, rois, 3, sampling_ratio=0, aligned=True)
        (grad,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), feature)
        outputs.append(out)
        grads.append(grad)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(grads[0], grads[1])


def test_half_precision_and_autocast():
    feature = feature_map(c=4, dtype=torch.float32)
    rois = hard_rois(seed=2).float()
    expected = roi_align(feature, rois, 3, sampling_ratio=0, aligned=True)
    bf16 = roi_align(feature.bfloat16(), rois, 3, sampling_ratio=0, aligned=True)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), expected, atol=3e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = roi_align(feature, rois, 3, sampling_ratio=0, aligned=True)
    assert under_autocast.dtype == torch.float32  # computed in float32 whatever autocast says
    torch.testing.assert_close(under_autocast, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda f, r: roi_align(f[0], r, 2), ValueError, "(N, C, H, W)"),
        (lambda f, r: roi_align(f.long(), r, 2), TypeError, "floating point"),
        (lambda f, r: roi_align(f, r[:, 1:], 2), ValueError, "list of tensors"),
        (lambda f, r: roi_align(f, r[None], 2), ValueError, "(K, 5)"),
        (lambda f, r: roi_align(f, [r[:, 1:]] * 3, 2), ValueError, "2 images"),
        (lambda f, r: roi_align(f, [r], 2), ValueError, "(K_i, 4)"),
        (lambda f, r: roi_align(f, r.numpy(), 2), TypeError, "list of (K_i, 4)"),
        (lambda f, r: roi_align(f, r.bool(), 2), TypeError, "real numbers"),
        (lambda f, r: roi_align(f, r + torch.tensor([2.0, 0, 0, 0, 0]), 2), ValueError, "[0, 1]"),
        (lambda f, r: roi_align(f, r - torch.tensor([1.0, 0, 0, 0, 0]), 2), ValueError, "[0, 1]"),
        (lambda f, r: roi_align(f, r + torch.tensor([0.5, 0, 0, 0, 0]), 2), ValueError, "whole numbers"),
        (lambda f, r: roi_align(f, r * torch.tensor([1, math.nan, 1, 1, 1]), 2), ValueError, "NaN or infinite"),
        (lambda f, r: roi_align(f, r * torch.tensor([1, 1, 1, math.inf, 1]), 2), ValueError, "NaN or infinite"),
        (lambda f, r: roi_align(f, r, 0), ValueError, "positive"),
        (lambda f, r: roi_align(f, r, (2, -1)), ValueError, "positive"),
        (lambda f, r: roi_align(f, r, (2, 2, 2)), TypeError, "pair of ints"),
        (lambda f, r: roi_align(f, r, 2.0), TypeError, "pair of ints"),
        (lambda f, r: roi_align(f, r, (True, 2)), TypeError, "pair of ints"),
        (lambda f, r: roi_align(f, r, 2, spatial_scale=0.0), ValueError, "spatial_scale"),
        (lambda f, r: roi_align(f, r, 2, spatial_scale=math.inf), ValueError, "spatial_scale"),
        (lambda f, r: roi_align(f, r, 2, sampling_ratio=1.5), TypeError, "sampling_ratio"),
        (lambda f, r: roi_align(f, r, 2, aligned=1), TypeError, "aligned"),
    ],
)
def test_roi_align_errors(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(feature_map(), hard_rois()[:4])


# ------------------------------------------------------------------------------------------------ levels


def test_level_mapping_at_the_thresholds():
    sides = [0.0, 1.0, 111.0, 111.99, 112.0, 112.01, 223.9, 224.0, 447.9, 448.0, 896.0, 1e4]
    boxes = torch.tensor([[10.0, 20.0, 10.0 + s, 20.0 + s] for s in sides])
    assert map_rois_to_levels(boxes).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    # Non-square: the geometric mean decides (2 x 6272 has scale exactly 112); rois with a batch column work too.
    rois = torch.tensor([[0, 0, 0, 2, 6272.0], [1, 0, 0, 2, 6271.0], [0, 5, 5, 1, 1]])
    assert map_rois_to_levels(rois).tolist() == [1, 0, 0]  # a negative-size box goes to level 0
    assert map_rois_to_levels(boxes, num_levels=2, finest_scale=28).tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert map_rois_to_levels(boxes[:0]).shape == (0,)
    assert map_rois_to_levels(boxes.long()).tolist() == map_rois_to_levels(boxes.trunc()).tolist()


def test_level_mapping_errors():
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        map_rois_to_levels(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="num_levels"):
        map_rois_to_levels(torch.zeros(3, 4), num_levels=0)
    with pytest.raises(ValueError, match="finest_scale"):
        map_rois_to_levels(torch.zeros(3, 4), finest_scale=-1)
    with pytest.raises(ValueError, match="NaN"):
        map_rois_to_levels(torch.tensor([[0.0, 0.0, math.nan, 1.0]]))


def pyramid(seed=0, n=2, c=3, size=(64, 96), strides=(4, 8, 16, 32)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, size[0] // s, size[1] // s, generator=g, dtype=torch.float64) for s in strides]


def proposals(seed=0, k=40, n=2, size=(64, 96), max_side=80.0):
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.rand(k, 2, generator=g, dtype=torch.float64) * math.log(max_side / 2)) * 2
    corner = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([size[1], size[0]]) - 4
    batch = torch.randint(0, n, (k, 1), generator=g).double()
    return torch.cat([batch, corner, corner + side], dim=1)


def test_multi_level_equals_per_level_roi_align():
    maps, strides = pyramid(), (4, 8, 16, 32)
    rois = proposals()
    levels = map_rois_to_levels(rois, 4, finest_scale=5)
    assert len(set(levels.tolist())) == 4  # every level is exercised
    got = multi_level_roi_align(maps, rois, (7, 5), strides, finest_scale=5)
    assert got.shape == (len(rois), 3, 7, 5)
    for k in range(len(rois)):
        level = int(levels[k])
        expected = roi_align(maps[level], rois[k : k + 1], (7, 5), 1 / strides[level], 0, True)
        torch.testing.assert_close(got[k : k + 1], expected, atol=1e-12, rtol=0)
    # One map: every roi uses it, whatever its size.
    single = multi_level_roi_align(maps[:1], rois, 3, strides[:1])
    assert torch.equal(single, roi_align(maps[0], rois, 3, 0.25, 0, True))


def test_multi_level_gradcheck():
    maps = [m[:, :1].clone().requires_grad_() for m in pyramid(size=(32, 32), strides=(4, 8))]
    rois = torch.tensor([[0, 1.0, 2.0, 9.5, 7.0], [1, 3.0, 0.5, 30.0, 29.0], [0, -2.0, 14.0, 15.0, 33.0]])
    assert map_rois_to_levels(rois, 2, finest_scale=8).tolist() == [0, 1, 1]
    assert torch.autograd.gradcheck(
        lambda a, b: multi_level_roi_align([a, b], rois, (2, 3), (4, 8), finest_scale=8), tuple(maps)
    )


def test_multi_level_empty_dtype_and_errors():
    maps = pyramid()
    assert multi_level_roi_align(maps, torch.zeros(0, 5), 7, (4, 8, 16, 32)).shape == (0, 3, 7, 7)
    half = [m.bfloat16() for m in maps]
    assert multi_level_roi_align(half, proposals(k=5), 7, (4, 8, 16, 32)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="one stride per feature map"):
        multi_level_roi_align(maps, proposals(), 7, (4, 8, 16))
    with pytest.raises(ValueError, match="same batch size"):
        multi_level_roi_align([maps[0], maps[1][:, :2]], proposals(), 7, (4, 8))
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        multi_level_roi_align(maps, proposals()[:, 1:], 7, (4, 8, 16, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        multi_level_roi_align(maps, proposals() + torch.tensor([5.0, 0, 0, 0, 0]), 7, (4, 8, 16, 32))
    with pytest.raises(TypeError, match="non-empty list"):
        multi_level_roi_align([], proposals(), 7, ())


# ------------------------------------------------------------------------------------------------ masks


def paste_cases(seed=0, height=37, width=53):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(10, 28, 28, generator=g)
    boxes = torch.tensor(
        [
            [3.2, 4.7, 30.1, 20.9],
            [-10.0, -6.5, 12.3, 9.9],  # partly outside, top left
            [40.5, 25.0, 70.0, 50.0],  # partly outside, bottom right
            [10.1, 10.2, 10.9, 10.6],  # smaller than a pixel
            [20.0, 5.0, 22.0, 30.0],  # thin
            [0.0, 0.0, 53.0, 37.0],  # the whole image
            [60.0, 40.0, 80.0, 50.0],  # wholly outside
            [-50.0, 0.0, 200.0, 37.0],  # much wider than the image
            [5.5, 5.5, 5.5, 15.0],  # zero width
            [7.0, 9.0, 5.0, 20.0],  # negative width
        ]
    )
    return masks, boxes


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.9])
def test_paste_masks_matches_the_full_image_paste(threshold):
    masks, boxes = paste_cases()
    got = paste_masks(masks, boxes, (37, 53), threshold)
    assert got.dtype == torch.bool and got.shape == (10, 37, 53)
    proper = slice(0, 8)  # the last two boxes are degenerate
    assert torch.equal(got[proper], reference_paste(masks[proper], boxes[proper], 37, 53, threshold))
    assert not got[8:].any()
    if threshold >= 0.5:  # mmdet's CPU paste, which stops one pixel past the box, agrees from 0.5 on
        inside = [0, 1, 2, 3, 4, 5, 7]  # (its region is empty, and arange fails, for a box wholly outside)
        assert torch.equal(got[inside], reference_paste(masks[inside], boxes[inside], 37, 53, threshold, "box"))


def test_paste_masks_large_masks_chunked(monkeypatch):
    masks, boxes = paste_cases(seed=1)
    masks = (masks > 0.3).float() * 0.4 + 0.3  # values near the threshold on both sides
    whole = paste_masks(masks, boxes, (37, 53))
    monkeypatch.setattr(roi_ops_hf_pvt, "_CHUNK_ELEMENTS", 4)
    assert torch.equal(paste_masks(masks, boxes, (37, 53)), whole)
    assert torch.equal(whole[:8], reference_paste(masks[:8], boxes[:8], 37, 53, 0.5))
    # A box much larger than its 28x28 mask: pixels half a mask cell past the box edge still read the mask.
    big = torch.tensor([[10.0, 10.0, 290.0, 290.0]])
    full = torch.ones(1, 28, 28)
    pasted = paste_masks(full, big, (300, 300), 0.2)
    assert torch.equal(pasted, reference_paste(full, big, 300, 300, 0.2))
    assert pasted[0, 150, :10].sum() > 0  # columns left of x1 = 10 are in at threshold 0.2


def test_paste_masks_inputs():
    masks, boxes = paste_cases()
    assert paste_masks(masks[:0], boxes[:0], (5, 6)).shape == (0, 5, 6)
    assert torch.equal(paste_masks(masks[:, None], boxes, (37, 53)), paste_masks(masks, boxes, (37, 53)))
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        paste_masks(masks[0], boxes, (37, 53))
    with pytest.raises(ValueError, match="one box per mask"):
        paste_masks(masks, boxes[:3], (37, 53))
    with pytest.raises(ValueError, match="image_size"):
        paste_masks(masks, boxes, (0, 53))
    with pytest.raises(TypeError, match="image_size"):
        paste_masks(masks, boxes, (37.0, 53))
    with pytest.raises(ValueError, match="threshold"):
        paste_masks(masks, boxes, (37, 53), threshold=0.0)
    with pytest.raises(ValueError, match="NaN"):
        paste_masks(masks[:1], torch.tensor([[0.0, 0.0, math.inf, 3.0]]), (37, 53))
    with pytest.raises(TypeError, match="floating point"):
        paste_masks(masks.bool(), boxes, (37, 53))


def rectangle_masks():
    gt = torch.zeros(2, 60, 80, dtype=torch.bool)
    gt[0, 10:30, 20:50] = True  # rows 10..29, columns 20..49: the box [20, 10, 50, 30]
    gt[1, 40:, 60:] = True  # touches the bottom right corner
    return gt


def test_crop_and_resize_masks_on_a_rectangle():
    gt = rectangle_masks()
    boxes = torch.tensor(
        [
            [20.0, 10.0, 50.0, 30.0],  # exactly the rectangle
            [5.0, 0.0, 65.0, 40.0],  # the rectangle in the middle, a quarter of the box each way
            [20.0, 10.0, 35.0, 30.0],  # the left half of the rectangle
            [50.0, 30.0, 100.0, 70.0],  # the second mask, box past the image (clipped to 80 x 60)
        ]
    )
    indices = torch.tensor([0, 0, 0, 1])
    targets = crop_and_resize_masks(gt, boxes, indices, 28)
    assert targets.shape == (4, 28, 28) and targets.dtype == torch.float32
    assert targets[0].all() and targets[2].all()
    expected = torch.zeros(28, 28)
    expected[7:21, 7:21] = 1  # the box is twice the rectangle: its middle half
    assert torch.equal(targets[1], expected)
    # Clipped to [50, 30, 80, 60]; the mask starts at column 60 and row 40. Aligned, bin 9 of 28 spans
    # 49.5 + [9, 10] * 30 / 28 = [59.14, 60.21]: its two samples read 0.41 and 0.95, mean 0.68; bin 8 reads 0.
    # The corner bin (9, 9) reads 0.68 * 0.68 < 0.5.
    corner = torch.zeros(28, 28)
    corner[9:, 9:] = 1
    corner[9, 9] = 0
    assert torch.equal(targets[3], corner)


def test_crop_and_resize_masks_is_thresholded_roi_align():
    g = torch.Generator().manual_seed(4)
    gt = torch.rand(3, 30, 40, generator=g) > 0.5
    boxes = proposals(seed=4, k=12, n=1, size=(30, 40), max_side=30.0)[:, 1:]
    indices = torch.randint(0, 3, (12,), generator=g)
    clipped = torch.minimum(boxes.clamp(min=0), torch.tensor([40.0, 30.0, 40.0, 30.0]))
    rois = torch.cat([indices[:, None].double(), clipped], dim=1)
    soft = reference_roi_align(gt[:, None].double(), rois, (14, 14), 1.0, 0, True)[:, 0]
    got = crop_and_resize_masks(gt, boxes, indices, 14)
    assert got.dtype == torch.float64
    assert torch.equal(got, (soft >= 0.5).double())
    assert torch.equal(crop_and_resize_masks(gt.to(torch.uint8), boxes, indices, 14), got)
    unclipped_rois = torch.cat([indices[:, None].double(), boxes], dim=1)
    unclipped = reference_roi_align(gt[:, None].double(), unclipped_rois, (14, 14), 1.0, 0, True)[:, 0]
    assert torch.equal(crop_and_resize_masks(gt, boxes, indices, 14, clip_boxes=False), (unclipped >= 0.5).double())


def test_crop_and_resize_masks_inputs():
    gt = rectangle_masks()
    boxes = torch.tensor([[20.0, 10.0, 50.0, 30.0]])
    assert crop_and_resize_masks(gt, boxes[:0], torch.zeros(0, dtype=torch.long), 28).shape == (0, 28, 28)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        crop_and_resize_masks(gt, boxes, torch.tensor([2]), 28)
    with pytest.raises(ValueError, match="one index per box"):
        crop_and_resize_masks(gt, boxes, torch.tensor([0, 1]), 28)
    with pytest.raises(TypeError, match="integer tensor"):
        crop_and_resize_masks(gt, boxes, torch.tensor([0.0]), 28)
    with pytest.raises(ValueError, match=r"\(G, H, W\)"):
        crop_and_resize_masks(gt[0], boxes, torch.tensor([0]), 28)
    with pytest.raises(ValueError, match="NaN"):
        crop_and_resize_masks(gt, boxes * math.nan, torch.tensor([0]), 28)
