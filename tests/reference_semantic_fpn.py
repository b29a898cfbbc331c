"""Plain-PyTorch reference of the authors' Semantic FPN segmenters (MMSegmentation v0.13), for tests only.

Written from the papers' setup and MMSegmentation v0.13's behaviour, independently of hf_pvt (it imports nothing from
it). Module names reproduce MMSegmentation's checkpoint keys, so `{'state_dict': model.state_dict()}` is a checkpoint
in the layout of the released `fpn_pvt_*_ade20k_40k` / `fpn_pvtv2_*_ade20k_40k` files:

- `backbone.*`: the classification layout of reference_pvt, without head (and for v1 without cls token and final
  norm), run in dense mode;
- `neck.lateral_convs.{k}.conv.*`, `neck.fpn_convs.{k}.conv.*`: MMSegmentation's `FPN(num_outs=4)`, convs with bias,
  no norm, no activation;
- `decode_head.scale_heads.{i}.{j}.conv.weight` (no bias) and `.bn.{weight,bias,running_mean,running_var,
  num_batches_tracked}`: `FPNHead`, whose level i is an `nn.Sequential` of conv-BN-ReLU modules, each followed by a
  2x bilinear upsample module when the level is coarser than stride 4, so j counts the upsample modules too (the
  stride-32 level has convs at j = 0, 2, 4); `decode_head.conv_seg.*`, a 1x1 conv with bias after Dropout2d.

Inference follows `EncoderDecoder.whole_inference`: the head's stride-4 logits are resized bilinearly
(align_corners=False) to the network input, then again to the original image size, and the argmax is taken there.

The authors' test preprocessing is here as plain numpy: `AlignResize` from the authors' `align_resize.py`
(mmcv's keep-ratio `imrescale` into (2048, 512), then a second resize of each side up to the next multiple of 32;
never padding), both with mmcv's default `cv2.resize(..., INTER_LINEAR)` on 8-bit pixels, then mmcv's `imnormalize`.
`opencv_bilinear` reproduces OpenCV's fixed-point 8-bit bilinear resize. Measured against `cv2.resize(INTER_LINEAR)`
of opencv-python-headless 4.5.5 and 5.1: bit for bit equal (0 of 24.7 million values differ) on the three ADE20K
validation images of tests/fixtures through the whole AlignResize, and on the COCO fixture in colour and grayscale at
enlarging, shrinking and exactly-halving sizes. PIL's bilinear filter is not a substitute: through AlignResize it
differs on 17 % of the values of the enlarged ADE20K images (by up to 2 levels), and when shrinking it antialiases
where OpenCV samples (values up to 95 levels apart at a 3x reduction). JPEG decoding by PIL and by `cv2.imread` gave
identical pixels on the same images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from reference_pvt import build_reference, random_init_
from torch import nn

# MMSegmentation's `ADE20KDataset.CLASSES`, as its checkpoints store them in meta["CLASSES"] (note "bed " with a
# trailing space: that is how the dataset class spells it).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

# The test pipeline of the authors' `configs/_base_/datasets/ade20k.py`.
TEST_SCALE = (2048, 512)  # mmcv (long, short) bounds
SIZE_DIVISOR = 32
MEAN = (123.675, 116.28, 103.53)  # RGB, on 0-255 pixels
STD = (58.395, 57.12, 57.375)


# --------------------------------------------------------------------------------------------------- model


class ConvModule(nn.Module):
    """mmcv's ConvModule in the two forms used here: a plain conv with bias (the FPN neck), or conv without bias,
    BatchNorm under `.bn` (eps 1e-5, momentum 0.1, as SyncBN) and ReLU (the FPN head)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x if self.bn is None else F.relu(self.bn(x))


class SegmentationFPN(nn.Module):
    """MMSegmentation's `FPN(in_channels, out_channels, num_outs=len(in_channels))`: every stage has a lateral 1x1
    conv, coarser laterals are added into finer ones after a nearest resize to the finer size, then 3x3 convs."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3) for _ in in_channels)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [lateral(x) for lateral, x in zip(self.lateral_convs, inputs)]
        for fine in reversed(range(len(laterals) - 1)):
            coarse = F.interpolate(laterals[fine + 1], size=laterals[fine].shape[-2:], mode="nearest")
            laterals[fine] = laterals[fine] + coarse
        return [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]


def _scale_head(in_channels: int, channels: int, stride: int, finest: int) -> nn.Sequential:
    """One level of `FPNHead`: log2(stride / finest) conv-BN-ReLU steps (at least one), each followed by a 2x bilinear
    upsample when the level is coarser than the finest one."""
    steps = max(1, round(math.log2(stride / finest)))
    modules: list[nn.Module] = []
    for step in range(steps):
        modules.append(ConvModule(in_channels if step == 0 else channels, channels, 3, norm=True))
        if stride > finest:
            modules.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*modules)


class FPNHead(nn.Module):
    """`FPNHead(in_channels=[c]*4, feature_strides=strides, channels, dropout_ratio, num_classes, norm_cfg=SyncBN,
    align_corners=False)`."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        strides: Sequence[int] = (4, 8, 16, 32),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.scale_heads = nn.ModuleList(_scale_head(in_channels, channels, s, strides[0]) for s in strides)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        total = self.scale_heads[0](levels[0])
        for head, level in zip(self.scale_heads[1:], levels[1:]):
            total = total + F.interpolate(head(level), size=total.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(total))


class SemanticFpnReference(nn.Module):
    """The authors' Semantic FPN: a PVT backbone in dense mode, the FPN neck and FPNHead; MMSegmentation's keys."""

    def __init__(
        self,
        backbone_kwargs: Mapping[str, Any],
        num_classes: int = 150,
        fpn_channels: int = 256,
        channels: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.backbone = build_reference({**backbone_kwargs, "num_classes": 0})
        if self.backbone.version == 1:
            # The authors' segmentation backbone (segmentation/pvt.py) defines neither.
            del self.backbone.cls_token
            del self.backbone.norm
        self.neck = SegmentationFPN(self.backbone.embed_dims, fpn_channels)
        self.decode_head = FPNHead(fpn_channels, channels, num_classes, dropout=dropout)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The decode head's logits (B, num_classes, ~H/4, ~W/4)."""
        return self.decode_head(self.neck(self.backbone.forward_dense(pixel_values)))

    def encode_decode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`EncoderDecoder.encode_decode`: the logits resized to the network input."""
        logits = self(pixel_values)
        return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def whole_inference(self, pixel_values: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """`EncoderDecoder.whole_inference(rescale=True)`: then resized again, to the original (height, width)."""
        logits = self.encode_decode(pixel_values)
        return F.interpolate(logits, size=tuple(original_size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def simple_test(self, pixel_values: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """The class map (B, H, W) at the original size (the softmax before the argmax changes nothing)."""
        return self.whole_inference(pixel_values, original_size).argmax(dim=1)


@torch.no_grad()
def random_semantic_fpn_(model: SemanticFpnReference, seed: int = 0) -> SemanticFpnReference:
    """Random non-trivial weights: the backbone as reference_pvt's `random_init_`; convs at a scale that keeps
    activations of order one, random biases; BatchNorm with random affine parameters and random running statistics
    (means of either sign, variances well away from 1) and a trained-looking `num_batches_tracked`, so a head that
    normalised with batch statistics, ignored the affine part or swapped mean and variance would not match."""
    random_init_(model.backbone, seed)
    generator = torch.Generator().manual_seed(seed + 1)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std + mean

    for module in (*model.neck.modules(), *model.decode_head.modules()):
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            module.weight.copy_(normal(module.weight.shape, math.sqrt(1.0 / fan_in)))
            if module.bias is not None:
                module.bias.copy_(normal(module.bias.shape, 0.1))
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(normal(module.weight.shape, 0.2, mean=1.0))
            module.bias.copy_(normal(module.bias.shape, 0.2))
            module.running_mean.copy_(normal(module.running_mean.shape, 0.3))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) * 1.5 + 0.25)
            module.num_batches_tracked.fill_(int(torch.randint(1000, 40000, (1,), generator=generator)))
    # A wider spread of class biases than the convs give, so the argmax is not decided by noise alone.
    conv_seg = model.decode_head.conv_seg
    conv_seg.bias.copy_(normal(conv_seg.bias.shape, 0.5))
    return model.eval()


def mmseg_checkpoint(
    model: SemanticFpnReference, class_names: Sequence[str] | None = ADE20K_CLASSES, with_optimizer: bool = True
) -> dict[str, Any]:
    """What MMSegmentation v0.13's `save_checkpoint` writes at the end of a 40k-iteration run: the state dict, a
    `meta` (versions, config text, class names and palette) and the optimizer's state."""
    meta: dict[str, Any] = {
        "mmcv_version": "1.3.0",
        "mmseg_version": "0.13.0+unknown",
        "config": "model = dict(type='EncoderDecoder', neck=dict(type='FPN'), decode_head=dict(type='FPNHead'))",
        "iter": 40000,
        "epoch": 0,
        "seed": 0,
    }
    if class_names is not None:
        meta["CLASSES"] = tuple(class_names)
        meta["PALETTE"] = [[(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(len(class_names))]
    checkpoint: dict[str, Any] = {"meta": meta, "state_dict": dict(model.state_dict())}
    if with_optimizer:
        checkpoint["optimizer"] = {
            "state": {},
            "param_groups": [{"lr": 0.0, "weight_decay": 1e-4, "params": list(range(len(checkpoint["state_dict"])))}],
        }
    return checkpoint


# --------------------------------------------------------------------------------------------------- preprocessing


def rescale_size(width: int, height: int, scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """mmcv's `rescale_size` for a (long, short) bound: the largest keep-ratio size inside it, each side rounded
    half up (`int(side * factor + 0.5)`). Returns (width, height), as mmcv does."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def _bilinear_taps(source: int, target: int, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    """OpenCV's sampling positions for one axis: half-pixel centres, float32 arithmetic, 11-bit fixed-point weights
    rounded one by one. Horizontally a position outside the image is moved onto the border pixel with weight 1;
    vertically the weights stay as computed and only the row indices are clamped."""
    position = ((np.arange(target, dtype=np.float64) + 0.5) * (source / target) - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = (position - first.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        low, high = first < 0, first >= source - 1
        fraction[low | high] = 0
        first[low] = 0
        first[high] = source - 1
    one = np.float32(2048)
    weight0 = np.rint((np.float32(1) - fraction) * one).astype(np.int64)
    weight1 = np.rint(fraction * one).astype(np.int64)
    return np.clip(first, 0, source - 1), np.clip(first + 1, 0, source - 1), weight0, weight1


def opencv_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)` for 8-bit (H, W) or (H, W, C) images:
    no antialiasing, a horizontal pass kept in 11-bit fixed point, and a vertical pass in the rounding of OpenCV's
    vectorised path (each product shifted down before the sum, then rounded by 2 bits)."""
    if image.dtype != np.uint8:
        raise TypeError(f"opencv_bilinear takes uint8 images, got {image.dtype}")
    planar = image.ndim == 2
    pixels = (image[..., None] if planar else image).astype(np.int64)
    x0, x1, a0, a1 = _bilinear_taps(pixels.shape[1], width, clamp_weights=True)
    y0, y1, b0, b1 = _bilinear_taps(pixels.shape[0], height, clamp_weights=False)
    rows = pixels[:, x0] * a0[None, :, None] + pixels[:, x1] * a1[None, :, None]  # scaled by 2**11
    top, bottom = rows[y0], rows[y1]
    mixed = (((top >> 4) * b0[:, None, None]) >> 16) + (((bottom >> 4) * b1[:, None, None]) >> 16)
    out = np.clip((mixed + 2) >> 2, 0, 255).astype(np.uint8)
    return out[..., 0] if planar else out


def align_resize(
    image: np.ndarray, scale: tuple[int, int] = TEST_SCALE, size_divisor: int = SIZE_DIVISOR
) -> np.ndarray:
    """The authors' `AlignResize(keep_ratio=True, size_divisor=32)` on an (H, W, 3) uint8 image: keep-ratio into
    `scale`, then each side resized (not padded) up to the next multiple of `size_divisor`."""
    height, width = image.shape[:2]
    new_width, new_height = rescale_size(width, height, scale)
    image = opencv_bilinear(image, new_width, new_height)
    aligned_height = math.ceil(new_height / size_divisor) * size_divisor
    aligned_width = math.ceil(new_width / size_divisor) * size_divisor
    return opencv_bilinear(image, aligned_width, aligned_height)


def normalize(image: np.ndarray) -> torch.Tensor:
    """mmcv's `imnormalize` (float32, subtract the mean, multiply by 1 / std) as a (1, 3, H, W) tensor."""
    pixels = image.astype(np.float32)
    mean = np.array(MEAN, dtype=np.float64).reshape(1, 1, 3)
    inverse_std = 1 / np.array(STD, dtype=np.float64).reshape(1, 1, 3)
    pixels = ((pixels - mean) * inverse_std).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def test_pipeline(image: Image.Image | np.ndarray | str) -> tuple[torch.Tensor, tuple[int, int]]:
    """The authors' ADE20K test pipeline: (pixel_values (1, 3, H32, W32), original (height, width))."""
    if isinstance(image, str):
        image = Image.open(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return normalize(align_resize(image)), tuple(image.shape[:2])


# Not a pytest test, despite the name (it is MMSegmentation's).
test_pipeline.__test__ = False
