"""Configuration of the Pyramid Vision Transformer family (PVT v1, PVTv2 and PVTv2-linear)."""

from __future__ import annotations

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig

# Every released model shares heads [1, 2, 5, 8] and sr_ratios [8, 4, 2, 1]; a preset is a row of data.
_V1 = {"pvt_version": 1, "hidden_sizes": [64, 128, 320, 512], "mlp_ratios": [8, 8, 4, 4]}
_V2 = {"pvt_version": 2, "hidden_sizes": [64, 128, 320, 512], "mlp_ratios": [8, 8, 4, 4]}
PRESETS: dict[str, dict[str, Any]] = {
    "pvt-tiny": {**_V1, "depths": [2, 2, 2, 2]},
    "pvt-small": {**_V1, "depths": [3, 4, 6, 3]},
    "pvt-medium": {**_V1, "depths": [3, 4, 18, 3]},
    "pvt-large": {**_V1, "depths": [3, 8, 27, 3]},
    "pvt-v2-b0": {**_V2, "hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2]},
    "pvt-v2-b1": {**_V2, "depths": [2, 2, 2, 2]},
    "pvt-v2-b2": {**_V2, "depths": [3, 4, 6, 3]},
    "pvt-v2-b2-li": {**_V2, "depths": [3, 4, 6, 3], "linear_attention": True},
    "pvt-v2-b3": {**_V2, "depths": [3, 4, 18, 3]},
    "pvt-v2-b4": {**_V2, "depths": [3, 8, 27, 3]},
    "pvt-v2-b5": {**_V2, "depths": [3, 6, 40, 3], "mlp_ratios": [4, 4, 4, 4]},
}

# Patch embedding geometry by version: v1 cuts non-overlapping patches, v2 overlaps them.
_PATCH_SIZES = {1: [4, 2, 2, 2], 2: [7, 3, 3, 3]}
_STRIDES = {1: [4, 2, 2, 2], 2: [4, 2, 2, 2]}
# Written into every config.json so that a saved folder loads with `trust_remote_code=True` through any
# Auto class, whichever class saved it (`save_pretrained` copies these modules next to the weights).
AUTO_MAP = {
    "AutoConfig": "configuration_hf_pvt.HfPvtConfig",
    "AutoModel": "modeling_hf_pvt.HfPvtModel",
    "AutoModelForImageClassification": "modeling_hf_pvt.HfPvtForImageClassification",
    "AutoBackbone": "modeling_hf_pvt.HfPvtBackbone",
    "AutoModelForSemanticSegmentation": "modeling_hf_pvt.HfPvtForSemanticSegmentation",
    "AutoImageProcessor": "image_processing_hf_pvt.HfPvtImageProcessor",
}
_PROBABILITY_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "drop_path_rate",
    "classifier_dropout_prob",
)
_PER_STAGE_FIELDS = ("depths", "num_attention_heads", "mlp_ratios", "sr_ratios", "patch_sizes", "strides")


def normalize_preset_name(name: str) -> str:
    """`pvt_v2_b2`, `PVT-V2-B2` and `org/pvt-v2-b2` all name the preset `pvt-v2-b2`."""
    return name.rsplit("/", 1)[-1].lower().replace("_", "-")


@strict(accept_kwargs=True)
class HfPvtConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    One configuration for every Pyramid Vision Transformer: v1 (PVT), v2 (PVTv2) and v2's linear
    spatial-reduction variant differ only by `pvt_version` and `linear_attention`.

    Args:
        pvt_version (`int`, defaults to 2): 1 for PVT (non-overlapping patches, learned position
            embeddings, cls token), 2 for PVTv2 (overlapping patches, convolutional MLP, mean pooling).
        linear_attention (`bool`, defaults to `False`): v2 only. Keys/values come from a 7x7 average
            pool in every stage instead of a strided convolution (the `-li` models).
        image_size (`int`): the square input size the v1 position embeddings are stored for; any
            other size is served by resizing them. Unused by v2.
        hidden_sizes, depths, num_attention_heads, mlp_ratios, sr_ratios (`list[int]`, one per stage).
        patch_sizes, strides (`list[int]`, optional): patch-embedding kernels and strides; by default
            those of the chosen version.
        layer_norm_eps (`float`, 1e-6): epsilon of the block, stage and final norms.
        embedding_layer_norm_eps (`float`, 1e-5): epsilon of the patch-embedding and spatial-reduction
            norms. The authors' code leaves these at PyTorch's default, and exact parity needs it.
        decoder_hidden_size, decoder_head_size, classifier_dropout_prob, semantic_loss_ignore_index:
            the Semantic FPN segmentation head (FPN width, head width, dropout, ignored label).
        out_features, out_indices: the stages a backbone returns.
    Use [`HfPvtConfig.from_preset`] for the released models.
    """

    model_type = "hf_pvt"

    pvt_version: int = 2
    linear_attention: bool = False
    num_channels: int = 3
    image_size: int = 224
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 320, 512)
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    num_attention_heads: list[int] | tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: list[int] | list[float] | tuple[int | float, ...] = (8, 8, 4, 4)
    sr_ratios: list[int] | tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: list[int] | tuple[int, ...] | None = None
    strides: list[int] | tuple[int, ...] | None = None
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    embedding_layer_norm_eps: float = 1e-5
    decoder_hidden_size: int = 256
    decoder_head_size: int = 128
    classifier_dropout_prob: float | int = 0.1
    semantic_loss_ignore_index: int = 255
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.pvt_version not in (1, 2):
            raise ValueError(f"pvt_version must be 1 (PVT) or 2 (PVTv2), got {self.pvt_version!r}.")
        if self.patch_sizes is None:
            self.patch_sizes = list(_PATCH_SIZES[self.pvt_version])
        if self.strides is None:
            self.strides = list(_STRIDES[self.pvt_version])
        self.hidden_sizes = list(self.hidden_sizes)
        for name in _PER_STAGE_FIELDS:
            setattr(self, name, list(getattr(self, name)))
        self._check_architecture()
        self.stage_names = [f"stage{i}" for i in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(AUTO_MAP)

    def _check_architecture(self) -> None:
        """Raise a ValueError naming the inconsistent fields and how to fix them."""
        num_stages = len(self.hidden_sizes)
        if num_stages == 0:
            raise ValueError("hidden_sizes is empty: give one width per stage, e.g. [64, 128, 320, 512].")
        for name in _PER_STAGE_FIELDS:
            values = getattr(self, name)
            if len(values) != num_stages:
                raise ValueError(
                    f"{name} has {len(values)} entries but hidden_sizes has {num_stages}: "
                    f"give exactly one value per stage."
                )
            if any(v <= 0 for v in values if name != "depths") or any(v < 0 for v in values):
                raise ValueError(f"{name} must hold positive values, got {values}.")
        for stage, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads), start=1):
            if width % heads:
                raise ValueError(
                    f"Stage {stage}: hidden size {width} is not divisible by {heads} attention heads; "
                    "choose a head count that divides the width."
                )
        if self.linear_attention and self.pvt_version != 2:
            raise ValueError("linear_attention exists only in PVTv2: set pvt_version=2 or linear_attention=False.")
        if self.pvt_version == 1:
            if self.sr_ratios[-1] != 1:
                raise ValueError(
                    "PVT v1 prepends a cls token in the last stage, which spatial reduction cannot reshape: "
                    f"the last sr_ratio must be 1, got {self.sr_ratios[-1]}."
                )
            if self.patch_sizes != self.strides:
                raise ValueError("PVT v1 patch embeddings do not overlap: patch_sizes must equal strides.")
            if self.image_size % self.total_stride:
                raise ValueError(
                    f"image_size {self.image_size} must be a multiple of the total stride {self.total_stride} "
                    "so that every stage's position-embedding grid is whole."
                )
        for name in _PROBABILITY_FIELDS:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")

    @property
    def num_stages(self) -> int:
        return len(self.hidden_sizes)

    @property
    def total_stride(self) -> int:
        total = 1
        for stride in self.strides:
            total *= stride
        return total

    @property
    def num_hidden_layers(self) -> int:
        return sum(self.depths)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> HfPvtConfig:
        """The configuration of a released model (see `PRESETS`), with any field overridden by `kwargs`."""
        key = normalize_preset_name(name)
        if key not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Known presets: {', '.join(PRESETS)}.")
        return cls(**{**copy.deepcopy(PRESETS[key]), **kwargs})


__all__ = ["PRESETS", "HfPvtConfig", "normalize_preset_name"]
