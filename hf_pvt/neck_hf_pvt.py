"""The FPN neck shared by every dense head (Semantic FPN, RetinaNet, Mask R-CNN): MMDetection's `FPN` class.

The authors' configs use it three ways, all with `in_channels=[64, 128, 320, 512]` and 256 output channels:

- Semantic FPN (`fpn_pvt_*_ade20k_40k.py`, `num_outs=4`): `HfPvtFeaturePyramid(in_channels, 256)`, strides 4-32;
- RetinaNet (`retinanet_pvt_*_fpn_1x_coco.py`, `start_level=1, add_extra_convs='on_input', num_outs=5`):
  `start_level=1, num_extra_levels=2, extra_levels="conv_on_input"`, strides 8-128;
- Mask R-CNN (`mask_rcnn_pvt_*_fpn_1x_coco.py`, `num_outs=5`): `num_extra_levels=1, extra_levels="max_pool"`,
  strides 4-64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

EXTRA_LEVELS = ("conv_on_input", "max_pool")


class HfPvtFeaturePyramid(nn.Module):
    """FPN: 1x1 lateral convs to one width on the input maps from `start_level` on, a top-down pass of
    nearest-upsample-and-add, 3x3 output convs, then `num_extra_levels` coarser levels, each at half the previous
    level's resolution:

    - `extra_levels="conv_on_input"` (MMDetection's `add_extra_convs='on_input'`): stride-2 3x3 convs, the first on
      the last *input* map, the next ones on the previous extra level, with no ReLU between; their weights follow
      the output convs in `fpn_convs`;
    - `extra_levels="max_pool"` (MMDetection's default, no extra convs): `max_pool2d(kernel_size=1, stride=2)` of the
      previous level, i.e. every other pixel; no weights.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        start_level: int = 0,
        num_extra_levels: int = 0,
        extra_levels: str = "conv_on_input",
    ):
        super().__init__()
        if extra_levels not in EXTRA_LEVELS:
            raise ValueError(f"extra_levels must be one of {EXTRA_LEVELS}, got {extra_levels!r}.")
        if not 0 <= start_level < len(in_channels):
            raise ValueError(f"start_level must index in_channels (0..{len(in_channels) - 1}), got {start_level}.")
        if num_extra_levels < 0:
            raise ValueError(f"num_extra_levels must be 0 or more, got {num_extra_levels}.")
        self.start_level = start_level
        self.num_extra_levels = num_extra_levels
        self.extra_levels = extra_levels
        used_channels = in_channels[start_level:]
        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(channels, out_channels, kernel_size=1) for channels in used_channels
        )
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1) for _ in used_channels
        )
        if extra_levels == "conv_on_input":
            for level in range(num_extra_levels):
                source_channels = in_channels[-1] if level == 0 else out_channels
                self.fpn_convs.append(nn.Conv2d(source_channels, out_channels, kernel_size=3, stride=2, padding=1))

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        inputs = feature_maps[self.start_level :]
        laterals = [conv(feature_map) for conv, feature_map in zip(self.lateral_convs, inputs)]
        for level in range(len(laterals) - 1, 0, -1):
            # Upsample to the finer map's exact size, not by 2: inputs that are no multiple of 32 give odd sizes.
            coarse = F.interpolate(laterals[level], size=laterals[level - 1].shape[-2:], mode="nearest")
            laterals[level - 1] = laterals[level - 1] + coarse
        outputs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
        if self.extra_levels == "max_pool":
            for _ in range(self.num_extra_levels):
                outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
            return outputs
        extra_input = inputs[-1]
        for conv in self.fpn_convs[len(laterals) :]:
            extra_input = conv(extra_input)
            outputs.append(extra_input)
        return outputs

    def extra_repr(self) -> str:
        extra = f"num_extra_levels={self.num_extra_levels}, extra_levels={self.extra_levels!r}"
        return f"start_level={self.start_level}, {extra}"


__all__ = ["HfPvtFeaturePyramid"]
