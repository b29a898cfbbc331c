"""Plain-PyTorch reference of the original PVT v1 / PVTv2 models (tests only).

Written from the papers (arXiv 2102.12122, 2106.13797) and the authors' `pvt.py` / `pvt_v2.py`, with attribute
names chosen so that ``state_dict()`` reproduces the keys of their released `.pth` files one for one.
Tests use it two ways: as the numerical ground truth that ``hf_pvt`` must match exactly, and
as a factory for original-layout checkpoints that the converters must accept.

Only eval-mode behaviour is modelled: dropout and drop-path are left out because they are the
identity at inference and the released checkpoints carry no state for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The authors build norm1, norm2, v1's final norm and v2's stage norms with eps=1e-6, but leave
# the patch-embedding norm and the spatial-reduction norm at the PyTorch default (1e-5).
# Exact parity with the released weights needs both values in their places.
BLOCK_EPS = 1e-6
DEFAULT_EPS = 1e-5


def _to_2tuple(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class DWConv(nn.Module):
    """Depthwise 3x3 conv over the token map (PVTv2's MLP); nested to give `.dwconv.dwconv`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        return self.dwconv(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """v1: fc1 -> GELU -> fc2.  v2: fc1 -> [ReLU if linear] -> dwconv -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, version: int, linear: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden) if version == 2 else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.relu = nn.ReLU() if linear else None

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.fc1(x)
        if self.relu is not None:
            x = self.relu(x)
        if self.dwconv is not None:
            x = self.dwconv(x, H, W)
        return self.fc2(self.act(x))


class Attention(nn.Module):
    """Spatial-reduction attention: queries from every token, keys/values from a reduced map."""

    def __init__(
        self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True, linear: bool = False
    ) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        # One Linear for K and V: output rows [:dim] are K, rows [dim:] are V.
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.linear = linear
        self.reduce = linear or sr_ratio > 1
        if linear:
            # Fixed 7x7 pooled keys make the cost linear in the number of tokens.
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.sr = nn.Conv2d(dim, dim, kernel_size=1, stride=1)
            self.norm = nn.LayerNorm(dim, eps=DEFAULT_EPS)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=DEFAULT_EPS)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        hd = C // self.num_heads
        q = self.q(x).reshape(B, N, self.num_heads, hd).permute(0, 2, 1, 3)
        if self.reduce:
            x_ = x.transpose(1, 2).reshape(B, C, H, W)
            if self.linear:
                x_ = self.pool(x_)
            x_ = self.norm(self.sr(x_).reshape(B, C, -1).transpose(1, 2))
            if self.linear:
                x_ = self.act(x_)
        else:
            x_ = x
        kv = self.kv(x_).reshape(B, -1, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        version: int,
        qkv_bias: bool = True,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.attn = Attention(dim, num_heads, sr_ratio, qkv_bias, linear)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), version, linear)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.mlp(self.norm2(x), H, W)


class PatchEmbed(nn.Module):
    """Conv then LayerNorm; v1 uses k = s (non-overlapping), v2 k > s with padding k // 2."""

    def __init__(self, in_chans: int, embed_dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        padding = kernel // 2 if kernel > stride else 0
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride, padding)
        self.norm = nn.LayerNorm(embed_dim, eps=DEFAULT_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


def _resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], H: int, W: int) -> torch.Tensor:
    """Bilinearly resize a stored [1, h0*w0, C] grid to [1, H*W, C]."""
    if (H, W) == grid:
        return pos
    C = pos.shape[-1]
    pos = pos.reshape(1, grid[0], grid[1], C).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(H, W), mode="bilinear", align_corners=False)
    return pos.reshape(1, C, H * W).transpose(1, 2)


class PyramidVisionTransformer(nn.Module):
    """PVT v1 (`version=1`) or PVTv2 (`version=2`, optionally `linear=True` for b2-li)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        depths: tuple[int, ...] = (3, 4, 6, 3),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        version: int = 2,
        linear: bool = False,
    ) -> None:
        super().__init__()
        assert version in (1, 2), f"version must be 1 or 2, got {version}"
        assert not (linear and version == 1), "the linear variant exists only for PVTv2"
        self.version = version
        self.num_classes = num_classes
        self.embed_dims = list(embed_dims)
        h, w = _to_2tuple(img_size)
        self.grids: list[tuple[int, int]] = []  # v1's stored position-embedding grids
        in_dims = [in_chans, *embed_dims[:3]]
        for i, dim in enumerate(embed_dims):
            n = i + 1
            if version == 1:
                kernel = stride = 4 if i == 0 else 2
            else:
                kernel, stride = (7, 4) if i == 0 else (3, 2)
            h, w = h // stride, w // stride
            self.grids.append((h, w))
            setattr(self, f"patch_embed{n}", PatchEmbed(in_dims[i], dim, kernel, stride))
            if version == 1:
                # Stage 4 stores one leading slot for the cls token ahead of the spatial grid.
                num_pos = h * w + (1 if i == 3 else 0)
                setattr(self, f"pos_embed{n}", nn.Parameter(torch.zeros(1, num_pos, dim)))
            blocks = [
                Block(dim, num_heads[i], mlp_ratios[i], sr_ratios[i], version, qkv_bias, linear)
                for _ in range(depths[i])
            ]
            setattr(self, f"block{n}", nn.ModuleList(blocks))
            if version == 2:
                setattr(self, f"norm{n}", nn.LayerNorm(dim, eps=BLOCK_EPS))
        if version == 1:
            self.norm = nn.LayerNorm(embed_dims[3], eps=BLOCK_EPS)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[3]))
        self.head = nn.Linear(embed_dims[3], num_classes) if num_classes > 0 else nn.Identity()

    # --- internals -------------------------------------------------------------------------

    def _forward_v1(
        self, x: torch.Tensor, dense: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        B = x.shape[0]
        maps: list[torch.Tensor] = []
        cls = None
        for n in range(1, 5):
            x, H, W = getattr(self, f"patch_embed{n}")(x)
            pos = getattr(self, f"pos_embed{n}")
            if n == 4:
                # The cls slot has no place on the grid, so it stays out of the resize.
                cls_pos, pos = pos[:, :1], pos[:, 1:]
            pos = _resize_pos_embed(pos, self.grids[n - 1], H, W)
            if n == 4 and not dense:
                x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
                pos = torch.cat((cls_pos, pos), dim=1)
            x = x + pos
            for blk in getattr(self, f"block{n}"):
                x = blk(x, H, W)
            if n == 4 and not dense:
                x = self.norm(x)
                cls, x = x[:, 0], x[:, 1:]
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
            maps.append(x)
        return maps, cls

    def _forward_v2(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        B = x.shape[0]
        maps: list[torch.Tensor] = []
        for n in range(1, 5):
            x, H, W = getattr(self, f"patch_embed{n}")(x)
            for blk in getattr(self, f"block{n}"):
                x = blk(x, H, W)
            tokens = getattr(self, f"norm{n}")(x)
            x = tokens.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
            maps.append(x)
        return maps, tokens

    # --- public API -------------------------------------------------------------------------

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs as (B, C_i, H_i, W_i) maps along the classification path.

        v2: after each stage norm. v1: stages 1-3 straight out of their blocks; stage 4 the
        spatial tokens (cls dropped) after the final `norm`.
        """
        if self.version == 1:
            return self._forward_v1(x, dense=False)[0]
        return self._forward_v2(x)[0]

    def forward_dense(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four maps as the authors' detection/segmentation backbones produce them.

        v1: no cls token at stage 4 (only pos_embed4[:, 1:] is used) and no final norm.
        v2: identical to `forward_stages`.
        """
        if self.version == 1:
            return self._forward_v1(x, dense=True)[0]
        return self._forward_v2(x)[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: v1 the normed cls token, v2 the mean of the normed stage-4 tokens."""
        if self.version == 1:
            cls = self._forward_v1(x, dense=False)[1]
            assert cls is not None
            return cls
        return self._forward_v2(x)[1].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class PyramidVisionTransformerV1(PyramidVisionTransformer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "version": 1})


class PyramidVisionTransformerV2(PyramidVisionTransformer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "version": 2})


_WIDE = [64, 128, 320, 512]


def _variant(
    version: int, dims: list[int], mlp: list[int], depths: list[int], linear: bool = False
) -> dict[str, Any]:
    # Fresh lists per row, so editing one variant's kwargs cannot leak into another.
    return {
        "num_heads": [1, 2, 5, 8],
        "sr_ratios": [8, 4, 2, 1],
        "qkv_bias": True,
        "version": version,
        "embed_dims": list(dims),
        "mlp_ratios": list(mlp),
        "depths": list(depths),
        "linear": linear,
    }


# The 11 released models (the papers' classification tables).
VARIANTS: dict[str, dict[str, Any]] = {
    "pvt_tiny": _variant(1, _WIDE, [8, 8, 4, 4], [2, 2, 2, 2]),
    "pvt_small": _variant(1, _WIDE, [8, 8, 4, 4], [3, 4, 6, 3]),
    "pvt_medium": _variant(1, _WIDE, [8, 8, 4, 4], [3, 4, 18, 3]),
    "pvt_large": _variant(1, _WIDE, [8, 8, 4, 4], [3, 8, 27, 3]),
    "pvt_v2_b0": _variant(2, [32, 64, 160, 256], [8, 8, 4, 4], [2, 2, 2, 2]),
    "pvt_v2_b1": _variant(2, _WIDE, [8, 8, 4, 4], [2, 2, 2, 2]),
    "pvt_v2_b2": _variant(2, _WIDE, [8, 8, 4, 4], [3, 4, 6, 3]),
    "pvt_v2_b2_li": _variant(2, _WIDE, [8, 8, 4, 4], [3, 4, 6, 3], linear=True),
    "pvt_v2_b3": _variant(2, _WIDE, [8, 8, 4, 4], [3, 4, 18, 3]),
    "pvt_v2_b4": _variant(2, _WIDE, [8, 8, 4, 4], [3, 8, 27, 3]),
    "pvt_v2_b5": _variant(2, _WIDE, [4, 4, 4, 4], [3, 6, 40, 3]),
}


def build_reference(
    name_or_kwargs: str | Mapping[str, Any], **overrides: Any
) -> PyramidVisionTransformer:
    """Build a reference model in eval mode from a VARIANTS name or a kwargs mapping."""
    kwargs = dict(VARIANTS[name_or_kwargs] if isinstance(name_or_kwargs, str) else name_or_kwargs)
    kwargs.update(overrides)
    return PyramidVisionTransformer(**kwargs).eval()


@torch.no_grad()
def random_init_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter with non-trivial random values, deterministically from `seed`.

    The original init leaves biases at 0 and LayerNorms at 1/0, which would hide mix-ups of
    biases, norms or epsilons in a parity test; every tensor here is random instead.
    """
    g = torch.Generator().manual_seed(seed)

    def fill(p: torch.Tensor, std: float, mean: float = 0.0) -> None:
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        p.copy_((noise * std + mean).to(p.dtype))

    done: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            fill(m.weight, 0.02)
        elif isinstance(m, nn.Conv2d):
            # The authors' fan-out scaling keeps the depthwise conv from shrinking the signal.
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            fill(m.weight, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.LayerNorm):
            fill(m.weight, 0.1, mean=1.0)
        else:
            continue
        done.add(id(m.weight))
        if m.bias is not None:
            fill(m.bias, 0.05)
            done.add(id(m.bias))
    for p in model.parameters():  # position embeddings, cls token
        if id(p) not in done:
            fill(p, 0.02)
    return model
