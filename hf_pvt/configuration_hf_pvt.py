"""Configuration of the Pyramid Vision Transformer family (PVT v1, PVTv2 and PVTv2-linear)."""

import copy
import functools
import math
import re
from typing import Any

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers.activations import ACT2FN
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
    "AutoModelForObjectDetection": "modeling_hf_pvt.HfPvtForObjectDetection",
    "AutoImageProcessor": "image_processing_hf_pvt.HfPvtImageProcessor",
}
_PROBABILITY_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "drop_path_rate",
    "classifier_dropout_prob",
)
_PER_STAGE_FIELDS = (
    "hidden_sizes",
    "depths",
    "num_attention_heads",
    "mlp_ratios",
    "sr_ratios",
    "patch_sizes",
    "strides",
)
# Sizes that must be at least 1 (depths may be 0: an empty stage is a patch embedding alone).
_POSITIVE_FIELDS = (
    "num_channels",
    "image_size",
    "decoder_hidden_size",
    "decoder_head_size",
    "detection_feat_channels",
    "anchor_scales_per_octave",
)
_POSITIVE_REAL_FIELDS = ("layer_norm_eps", "embedding_layer_norm_eps", "anchor_octave_base_scale", "focal_loss_gamma")
# Model types of other PVT ports: their folders hold other key names, so they must go through the converter.
_FOREIGN_PVT_TYPES = ("pvt", "pvt_v2", "timm_wrapper")


def normalize_preset_name(name: str) -> str:
    """`pvt_v2_b2`, `PVT-V2-B2` and `org/pvt-v2-b2` all name the preset `pvt-v2-b2`."""
    return name.rsplit("/", 1)[-1].lower().replace("_", "-")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
            `decoder_hidden_size` is also the width of RetinaNet's FPN.
        detection_feat_channels, detection_num_convs: RetinaNet's head (width and depth of its two branches).
        anchor_octave_base_scale, anchor_scales_per_octave, anchor_ratios: RetinaNet's anchors, scales
            `base * 2**(k / scales_per_octave)` times the level's stride, for each height/width ratio.
        focal_loss_alpha, focal_loss_gamma, detection_pos_iou_threshold, detection_neg_iou_threshold:
            RetinaNet's training targets and classification loss (SPEC §6 values by default).
        out_features, out_indices: the stages a backbone returns.
    Use [`HfPvtConfig.from_preset`] for the released models. Every field is checked when the
    configuration is built: a wrong type raises TypeError, an inconsistent value ValueError, each
    naming the field and the fix.
    """

    model_type = "hf_pvt"

    pvt_version: int = 2
    linear_attention: bool = False
    num_channels: int = 3
    image_size: int = 224
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 320, 512)
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    num_attention_heads: list[int] | tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: list[int | float] | tuple[int | float, ...] = (8, 8, 4, 4)
    sr_ratios: list[int] | tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: list[int] | tuple[int, ...] | None = None
    strides: list[int] | tuple[int, ...] | None = None
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    initializer_range: float | int = 0.02
    layer_norm_eps: float | int = 1e-6
    embedding_layer_norm_eps: float | int = 1e-5
    decoder_hidden_size: int = 256
    decoder_head_size: int = 128
    classifier_dropout_prob: float | int = 0.1
    semantic_loss_ignore_index: int = 255
    detection_feat_channels: int = 256
    detection_num_convs: int = 4
    anchor_octave_base_scale: float | int = 4
    anchor_scales_per_octave: int = 3
    anchor_ratios: list[int | float] | tuple[int | float, ...] = (0.5, 1.0, 2.0)
    focal_loss_alpha: float | int = 0.25
    focal_loss_gamma: float | int = 2.0
    detection_pos_iou_threshold: float | int = 0.5
    detection_neg_iou_threshold: float | int = 0.4
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.pvt_version not in (1, 2):
            raise ValueError(f"pvt_version must be 1 (PVT) or 2 (PVTv2), got {self.pvt_version!r}.")
        if self.patch_sizes is None:
            self.patch_sizes = list(_PATCH_SIZES[self.pvt_version])
        if self.strides is None:
            self.strides = list(_STRIDES[self.pvt_version])
        for name in (*_PER_STAGE_FIELDS, "anchor_ratios"):
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
            smallest = 0 if name == "depths" else 1
            if not all(_is_real(v) and v >= smallest for v in values) or (name == "mlp_ratios" and 0 in values):
                kind = "zero or positive" if name == "depths" else "positive finite"
                raise ValueError(f"{name} must hold {kind} values, got {values}.")
        for stage, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads), start=1):
            if width % heads:
                raise ValueError(
                    f"Stage {stage}: hidden size {width} is not divisible by {heads} attention heads; "
                    "choose a head count that divides the width."
                )
        for stage, (width, ratio) in enumerate(zip(self.hidden_sizes, self.mlp_ratios), start=1):
            if int(width * ratio) < 1:
                raise ValueError(f"Stage {stage}: mlp_ratio {ratio} leaves the MLP of width {width} no hidden unit.")
        for name in _POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.detection_num_convs < 0:
            raise ValueError(f"detection_num_convs must be 0 or more, got {self.detection_num_convs}.")
        for name in _POSITIVE_REAL_FIELDS:
            if not (_is_real(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive finite number, got {getattr(self, name)!r}.")
        if not (_is_real(self.initializer_range) and self.initializer_range >= 0):
            raise ValueError(f"initializer_range must be a finite number >= 0, got {self.initializer_range!r}.")
        if not self.anchor_ratios or not all(_is_real(r) and r > 0 for r in self.anchor_ratios):
            raise ValueError(f"anchor_ratios must be a non-empty list of positive numbers, got {self.anchor_ratios}.")
        if not 0 <= self.detection_neg_iou_threshold <= self.detection_pos_iou_threshold <= 1:
            raise ValueError(
                "RetinaNet's IoU thresholds must satisfy 0 <= detection_neg_iou_threshold <= "
                f"detection_pos_iou_threshold <= 1, got {self.detection_neg_iou_threshold} and "
                f"{self.detection_pos_iou_threshold}."
            )
        if not 0 <= self.focal_loss_alpha <= 1:
            raise ValueError(f"focal_loss_alpha must be in [0, 1], got {self.focal_loss_alpha}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act {self.hidden_act!r} is unknown; use one of {', '.join(sorted(ACT2FN))}.")
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
            if not (_is_real(getattr(self, name)) and 0.0 <= getattr(self, name) < 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}.")

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
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "HfPvtConfig":
        """Refuse other ports' configurations: their fields and weights do not mean what hf_pvt's do."""
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            hint = (
                "Convert the checkpoint first: `hf-pvt-convert <folder> <new_folder>` writes an hf_pvt folder."
                if model_type in _FOREIGN_PVT_TYPES
                else "It is not a PVT model of this library."
            )
            raise ValueError(f"This configuration has model_type {model_type!r}, not 'hf_pvt'. {hint}")
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> "HfPvtConfig":
        """The configuration of a released model (see `PRESETS`), with any field overridden by `kwargs`."""
        key = normalize_preset_name(name)
        if key not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Known presets: {', '.join(PRESETS)}.")
        return cls(**{**copy.deepcopy(PRESETS[key]), **kwargs})


def _type_errors_as_type_error(init):
    """Report a field of the wrong type as a TypeError that names the field and the expected type (the strict
    dataclass's own error type is neither TypeError nor ValueError, which is what callers catch)."""

    @functools.wraps(init)
    def checked_init(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except StrictDataclassFieldValidationError as error:
            field = re.search(r"field '(\w+)'", str(error))
            name = field.group(1) if field else "the field"
            raise TypeError(
                f"HfPvtConfig: {error}\nGive {name} a value of the annotated type (e.g. 3, not '3'; "
                "true/false, not 'false'; a list of ints for per-stage fields)."
            ) from error

    return checked_init


HfPvtConfig.__init__ = _type_errors_as_type_error(HfPvtConfig.__init__)

__all__ = ["PRESETS", "HfPvtConfig", "normalize_preset_name"]
