"""The FPN neck (hf_pvt/neck_hf_pvt.py) in the three forms of the authors' configs: Semantic FPN (4 levels),
RetinaNet (start level 1, two stride-2 convs on the input) and Mask R-CNN (a fifth level max-pooled from the
fourth)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_pvt.neck_hf_pvt import HfPvtFeaturePyramid

IN_CHANNELS = [8, 16, 24, 32]


def _maps(height: int = 45, width: int = 62) -> list[torch.Tensor]:
    """Stage maps of a 45x62 input's encoder (odd sizes, as inputs that are no multiple of 32 give)."""
    generator = torch.Generator().manual_seed(0)
    sizes, maps = (height, width), []
    for channels in IN_CHANNELS:
        sizes = (-(-sizes[0] // 2), -(-sizes[1] // 2)) if maps else (-(-height // 4), -(-width // 4))
        maps.append(torch.randn(1, channels, *sizes, generator=generator))
    return maps


def test_mask_rcnn_neck_adds_a_max_pooled_fifth_level():
    """MMDetection's FPN(num_outs=5) without extra convs: levels from every stage, then max_pool2d(kernel 1,
    stride 2) of the last output, i.e. its every other pixel, with no weights of its own."""
    torch.manual_seed(0)
    neck = HfPvtFeaturePyramid(IN_CHANNELS, 12, num_extra_levels=1, extra_levels="max_pool")
    plain = HfPvtFeaturePyramid(IN_CHANNELS, 12)
    plain.load_state_dict(neck.state_dict())  # the same weights: the fifth level adds none
    assert set(neck.state_dict()) == {f"{kind}.{k}.{p}" for kind in ("lateral_convs", "fpn_convs") for k in range(4)
                                      for p in ("weight", "bias")}  # fmt: skip
    maps = _maps()
    with torch.no_grad():
        outputs, expected = neck(maps), plain(maps)
    assert len(outputs) == 5
    for ours, theirs in zip(outputs, expected):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    torch.testing.assert_close(outputs[4], outputs[3][..., ::2, ::2], atol=0, rtol=0)
    torch.testing.assert_close(outputs[4], F.max_pool2d(outputs[3], kernel_size=1, stride=2), atol=0, rtol=0)
    assert [tuple(level.shape[-2:]) for level in outputs] == [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]


def test_retinanet_neck_convolves_the_last_input_then_the_previous_level():
    torch.manual_seed(0)
    neck = HfPvtFeaturePyramid(IN_CHANNELS, 12, start_level=1, num_extra_levels=2, extra_levels="conv_on_input")
    assert len(neck.lateral_convs) == 3 and len(neck.fpn_convs) == 5
    assert neck.fpn_convs[3].in_channels == IN_CHANNELS[-1] and neck.fpn_convs[4].in_channels == 12
    maps = _maps()
    with torch.no_grad():
        outputs = neck(maps)
        p6 = neck.fpn_convs[3](maps[-1])
        torch.testing.assert_close(outputs[3], p6, atol=0, rtol=0)
        torch.testing.assert_close(outputs[4], neck.fpn_convs[4](p6), atol=0, rtol=0)  # no ReLU between
    assert [tuple(level.shape[-2:]) for level in outputs] == [(6, 8), (3, 4), (2, 2), (1, 1), (1, 1)]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="extra_levels must be one of"):
        HfPvtFeaturePyramid(IN_CHANNELS, 12, num_extra_levels=1, extra_levels="max-pool")
    with pytest.raises(ValueError, match="start_level"):
        HfPvtFeaturePyramid(IN_CHANNELS, 12, start_level=4)
    with pytest.raises(ValueError, match="num_extra_levels"):
        HfPvtFeaturePyramid(IN_CHANNELS, 12, num_extra_levels=-1)
