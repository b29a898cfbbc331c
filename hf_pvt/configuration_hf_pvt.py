"""Configuration of the Pyramid Vision Transformer family (PVT v1, PVTv2 and PVTv2-linear)."""

import copy
import functools
import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig
from transformers.dynamic_module_utils import get_relative_import_files

from .variants_hf_pvt import PRESETS, normalize_preset_name

# Patch embedding geometry by version: v1 cuts non-overlapping patches, v2 overlaps them.
_PATCH_SIZES = {1: [4, 2, 2, 2], 2: [7, 3, 3, 3]}
_STRIDES = {1: [4, 2, 2, 2], 2: [4, 2, 2, 2]}
# Written into every config.json so that a saved folder loads with `trust_remote_code=True` through any
# Auto class, whichever class saved it (`HfPvtConfig.save_pretrained` copies these modules next to the weights).
AUTO_MAP = {
    "AutoConfig": "configuration_hf_pvt.HfPvtConfig",
    "AutoModel": "modeling_hf_pvt.HfPvtModel",
    "AutoModelForImageClassification": "modeling_hf_pvt.HfPvtForImageClassification",
    "AutoBackbone": "modeling_hf_pvt.HfPvtBackbone",
    "AutoModelForSemanticSegmentation": "semantic_fpn_hf_pvt.HfPvtForSemanticSegmentation",
    "AutoModelForObjectDetection": "retinanet_hf_pvt.HfPvtForObjectDetection",
    "AutoModelForInstanceSegmentation": "mask_rcnn_hf_pvt.HfPvtForInstanceSegmentation",
    "AutoImageProcessor": "image_processing_hf_pvt.HfPvtImageProcessor",
}
# Architectures that `pipeline("image-segmentation")` serves, and the AUTO_MAP entry of each.
IMAGE_SEGMENTATION_HEADS = {
    "HfPvtForInstanceSegmentation": "AutoModelForInstanceSegmentation",
    "HfPvtForSemanticSegmentation": "AutoModelForSemanticSegmentation",
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
_SEMANTIC_HEAD_NORMS = ("batch_norm", "group_norm")


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
        semantic_head_norm (`str`, defaults to `"batch_norm"`): the Semantic FPN head's normalisation.
            `"batch_norm"` is the authors' (SyncBN in MMSegmentation, running statistics in evaluation; the
            released ADE20K segmenters convert into it); `"group_norm"` (GroupNorm(32), `decoder_head_size` a
            multiple of 32) does not depend on the batch, for fine-tuning at a few images per device. A
            segmentation folder saved before this field existed has no such key and loads as `"group_norm"`,
            which is what it was trained with.
        detection_feat_channels, detection_num_convs: RetinaNet's head (width and depth of its two branches).
        anchor_octave_base_scale, anchor_scales_per_octave, anchor_ratios: RetinaNet's anchors, scales
            `base * 2**(k / scales_per_octave)` times the level's stride, for each height/width ratio.
        focal_loss_alpha, focal_loss_gamma, detection_pos_iou_threshold, detection_neg_iou_threshold:
            RetinaNet's training targets and classification loss (by default the values of the authors'
            `retinanet_pvt_v2_b2_fpn_1x_coco.py` and its siblings: alpha 0.25, gamma 2, IoU 0.5 / 0.4).
        rpn_anchor_scale, rpn_anchor_ratios: Mask R-CNN's RPN anchors, `rpn_anchor_scale` times the level's stride
            (strides 4 to 64) for each height/width ratio (8 and [0.5, 1, 2]: 3 anchors per location).
        rpn_pos_iou_threshold, rpn_neg_iou_threshold: the RPN's anchor assignment (0.7 / 0.3); an anchor that is
            some object's best match is positive too when its IoU reaches the negative threshold.
        rpn_num_samples, rpn_positive_fraction: anchors sampled per image for the RPN loss, at most that fraction
            positive (256, 0.5).
        rpn_train_nms_pre, rpn_test_nms_pre, rpn_nms_iou_threshold, rpn_max_proposals: proposals: per level the
            `nms_pre` best anchors (2000 in training, 1000 in inference), NMS at IoU 0.7 within each level, then the
            best `rpn_max_proposals` (1000) of the image.
        rcnn_fc_channels: width of the box head's two shared fully connected layers (1024).
        rcnn_pos_iou_threshold, rcnn_neg_iou_threshold, rcnn_num_samples, rcnn_positive_fraction: the box head's
            proposal assignment (0.5 / 0.5, a ground truth's best proposal kept from the negative threshold on) and
            sampling (512 per image, at most 0.25 positive; ground-truth boxes join the proposals).
        rcnn_score_threshold, rcnn_nms_iou_threshold, rcnn_max_per_image: detections: (box, class) pairs scoring
            above 0.05, class-wise NMS at IoU 0.5, at most 100 per image.
        mask_head_num_convs, mask_head_channels, mask_threshold: the mask head (4 3x3 convs of 256 channels before
            its upsampling) and the probability from which a pasted mask pixel is foreground (0.5).
            The Mask R-CNN defaults are MMDetection's `mask_rcnn_r50_fpn.py`, which the authors'
            `mask_rcnn_pvt_v2_b2_fpn_1x_coco.py` and its siblings use.
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
    semantic_head_norm: str = "batch_norm"
    detection_feat_channels: int = 256
    detection_num_convs: int = 4
    anchor_octave_base_scale: float | int = 4
    anchor_scales_per_octave: int = 3
    anchor_ratios: list[int | float] | tuple[int | float, ...] = (0.5, 1.0, 2.0)
    focal_loss_alpha: float | int = 0.25
    focal_loss_gamma: float | int = 2.0
    detection_pos_iou_threshold: float | int = 0.5
    detection_neg_iou_threshold: float | int = 0.4
    rpn_anchor_scale: float | int = 8
    rpn_anchor_ratios: list[int | float] | tuple[int | float, ...] = (0.5, 1.0, 2.0)
    rpn_pos_iou_threshold: float | int = 0.7
    rpn_neg_iou_threshold: float | int = 0.3
    rpn_num_samples: int = 256
    rpn_positive_fraction: float | int = 0.5
    rpn_train_nms_pre: int = 2000
    rpn_test_nms_pre: int = 1000
    rpn_nms_iou_threshold: float | int = 0.7
    rpn_max_proposals: int = 1000
    rcnn_fc_channels: int = 1024
    rcnn_pos_iou_threshold: float | int = 0.5
    rcnn_neg_iou_threshold: float | int = 0.5
    rcnn_num_samples: int = 512
    rcnn_positive_fraction: float | int = 0.25
    rcnn_score_threshold: float | int = 0.05
    rcnn_nms_iou_threshold: float | int = 0.5
    rcnn_max_per_image: int = 100
    mask_head_num_convs: int = 4
    mask_head_channels: int = 256
    mask_threshold: float | int = 0.5
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.pvt_version not in (1, 2):
            raise ValueError(f"pvt_version must be 1 (PVT) or 2 (PVTv2), got {self.pvt_version!r}.")
        if self.patch_sizes is None:
            self.patch_sizes = list(_PATCH_SIZES[self.pvt_version])
        if self.strides is None:
            self.strides = list(_STRIDES[self.pvt_version])
        for name in (*_PER_STAGE_FIELDS, "anchor_ratios", "rpn_anchor_ratios"):
            setattr(self, name, list(getattr(self, name)))
        self._check_architecture()
        self._check_mask_rcnn()
        self.stage_names = [f"stage{i}" for i in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)
        self.auto_map = _with_current_modules(getattr(self, "auto_map", None))

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
        if self.semantic_head_norm not in _SEMANTIC_HEAD_NORMS:
            raise ValueError(
                f"semantic_head_norm must be one of {', '.join(map(repr, _SEMANTIC_HEAD_NORMS))}, got "
                f"{self.semantic_head_norm!r}: 'batch_norm' as the authors trained (batches of 16 over 8 GPUs), "
                "'group_norm' for fine-tuning at a few images per device."
            )

    def _check_mask_rcnn(self) -> None:
        """Raise a ValueError naming the Mask R-CNN field that is out of range and its valid range."""
        for name in (
            "rpn_num_samples",
            "rpn_train_nms_pre",
            "rpn_test_nms_pre",
            "rpn_max_proposals",
            "rcnn_fc_channels",
            "rcnn_num_samples",
            "rcnn_max_per_image",
            "mask_head_channels",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.mask_head_num_convs < 0:
            raise ValueError(f"mask_head_num_convs must be 0 or more, got {self.mask_head_num_convs}.")
        if not (_is_real(self.rpn_anchor_scale) and self.rpn_anchor_scale > 0):
            raise ValueError(f"rpn_anchor_scale must be a positive finite number, got {self.rpn_anchor_scale!r}.")
        if not self.rpn_anchor_ratios or not all(_is_real(r) and r > 0 for r in self.rpn_anchor_ratios):
            raise ValueError(
                f"rpn_anchor_ratios must be a non-empty list of positive numbers, got {self.rpn_anchor_ratios}."
            )
        for stage in ("rpn", "rcnn"):
            negative = getattr(self, f"{stage}_neg_iou_threshold")
            positive = getattr(self, f"{stage}_pos_iou_threshold")
            if not (_is_real(negative) and _is_real(positive) and 0 <= negative <= positive <= 1):
                raise ValueError(
                    f"Mask R-CNN's IoU thresholds must satisfy 0 <= {stage}_neg_iou_threshold <= "
                    f"{stage}_pos_iou_threshold <= 1, got {negative!r} and {positive!r}."
                )
        unit_fields = ("rpn_positive_fraction", "rcnn_positive_fraction")
        for name in (*unit_fields, "rpn_nms_iou_threshold", "rcnn_nms_iou_threshold"):
            if not (_is_real(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}.")
        if not (_is_real(self.rcnn_score_threshold) and 0 <= self.rcnn_score_threshold < 1):
            raise ValueError(f"rcnn_score_threshold must be in [0, 1), got {self.rcnn_score_threshold!r}.")
        if not (_is_real(self.mask_threshold) and 0 < self.mask_threshold <= 1):
            raise ValueError(f"mask_threshold must be in (0, 1], got {self.mask_threshold!r}.")

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
        if "semantic_head_norm" not in config_dict and "HfPvtForSemanticSegmentation" in (
            config_dict.get("architectures") or []
        ):
            # A segmentation folder saved before the BatchNorm head existed: its head normalised with GroupNorm.
            config_dict = {**config_dict, "semantic_head_norm": "group_norm"}
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Transformers' dict, plus an `AutoModelForImageSegmentation` entry naming the folder's own head:
        `pipeline("image-segmentation")` loads through that class first, and Mask R-CNN and Semantic FPN folders
        share this configuration class, so one fixed entry would build the wrong head for one of them."""
        output = super().to_dict()
        auto_map = output.get("auto_map")
        heads = [
            IMAGE_SEGMENTATION_HEADS[name]
            for name in output.get("architectures") or ()
            if name in IMAGE_SEGMENTATION_HEADS
        ]
        if isinstance(auto_map, dict) and heads:
            output["auto_map"] = {**auto_map, "AutoModelForImageSegmentation": AUTO_MAP[heads[0]]}
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Transformers' save, then the code of every module `auto_map` names: the heads live in modules of their
        own, and every hf_pvt folder loads through every Auto class with `trust_remote_code=True`."""
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        copy_remote_code(auto_map_modules(self.auto_map or {}), save_directory, missing_ok=True)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> "HfPvtConfig":
        """The configuration of a released model (see `PRESETS`), with any field overridden by `kwargs`."""
        key = normalize_preset_name(name)
        if key not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Known presets: {', '.join(PRESETS)}.")
        return cls(**{**copy.deepcopy(PRESETS[key]), **kwargs})


def _with_current_modules(auto_map: dict[str, str] | None) -> dict[str, str]:
    """`auto_map` (AUTO_MAP when None) with hf_pvt's own classes at today's modules, and hf_pvt's own map completed
    with today's Auto classes. Folders saved before the heads moved out of `modeling_hf_pvt` name them there; those
    folders keep their own copy of that code for `trust_remote_code`, but a configuration loaded from one and saved
    again must name the code saved with it."""
    if auto_map is None:
        return dict(AUTO_MAP)
    current = {reference.rsplit(".", 1)[-1]: reference for reference in AUTO_MAP.values()}
    updated = {
        key: current.get(reference.rsplit(".", 1)[-1], reference) if "--" not in reference else reference
        for key, reference in auto_map.items()
    }
    return {**AUTO_MAP, **updated} if updated.get("AutoConfig") == AUTO_MAP["AutoConfig"] else updated


def auto_map_modules(auto_map: dict[str, str]) -> list[str]:
    """The module names in `auto_map` references: `retinanet_hf_pvt.HfPvtForObjectDetection` -> `retinanet_hf_pvt`."""
    return [reference.split("--")[-1].split(".")[0] for reference in auto_map.values()]


def copy_remote_code(modules: Iterable[str], folder: str | os.PathLike, missing_ok: bool = False) -> list[str]:
    """Copy hf_pvt's `modules` (names without `.py`) and every module they import relatively into `folder`: the
    code Transformers runs with `trust_remote_code=True`. Returns the names of the files copied.

    A module this copy of hf_pvt lacks raises a ValueError, or is skipped with `missing_ok` (a copy loaded from a
    folder with `trust_remote_code` holds only the modules that folder's loads needed)."""
    package_dir = Path(__file__).resolve().parent
    files: list[Path] = []
    for module in dict.fromkeys(modules):
        source = package_dir / f"{module}.py"
        if not source.is_file():
            if missing_ok:
                continue
            raise ValueError(
                f"auto_map names the module {module!r}, which is not part of hf_pvt ({package_dir}); "
                "hf_pvt can only supply its own code."
            )
        files += [source, *map(Path, get_relative_import_files(str(source)))]
    destination = Path(folder)
    for source in dict.fromkeys(files):
        target = destination / source.name
        if source.resolve() != target.resolve():
            # A new file renamed over the target: a link there (a Hub cache snapshot) is replaced, never written
            # through, and a reader never sees half a module.
            staging = target.with_name(f".{source.name}.{os.getpid()}.partial")
            shutil.copyfile(source, staging)
            os.replace(staging, target)
    return sorted({source.name for source in files})


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

# The tables of class names Transformers' pipelines check a model against before they log "The model ... is not
# supported for <task>" at ERROR level (`Pipeline.check_model_type`). They copy the name tables, and the copy drops the
# link to what `AutoModelFor*.register` added, so hf_pvt names its classes in the tables themselves (data, no
# Transformers method is changed). The image-segmentation pipeline merges four tables keyed by model type, later ones
# replacing earlier ones: hf_pvt's entry lives in one of them only, naming both of its segmentation heads.
PIPELINE_TABLES = {
    "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES": ("HfPvtForObjectDetection",),
    "MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES": ("HfPvtForInstanceSegmentation", "HfPvtForSemanticSegmentation"),
}


def register_pipeline_names() -> None:
    """Name hf_pvt's detection and segmentation heads in the tables `pipeline()` checks (see `PIPELINE_TABLES`)."""
    from transformers.models.auto import modeling_auto

    for table, names in PIPELINE_TABLES.items():
        mapping = getattr(modeling_auto, table, None)
        if isinstance(mapping, dict):
            mapping[HfPvtConfig.model_type] = names[0] if len(names) == 1 else names


# Loaded from a folder with trust_remote_code, where `import hf_pvt` (which registers everything) never ran.
if __name__.startswith("transformers_modules."):
    register_pipeline_names()

__all__ = [
    "AUTO_MAP",
    "PIPELINE_TABLES",
    "HfPvtConfig",
    "auto_map_modules",
    "copy_remote_code",
    "register_pipeline_names",
]
