"""What a checkpoint is: its architecture (read off the tensors' shapes), the released variant it matches, the task
it converts to, and whether its head is the authors' published one.

`sources.py` has read the file and renamed it into the authors' layout before any of this; `convert.py` builds the
model from the answers.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from hf_pvt import HfPvtConfig
from hf_pvt.variants_hf_pvt import PRESETS, preset_differences

from .ade20k_labels import ADE20K_LABELS
from .coco_labels import COCO_DETECTION_LABELS
from .imagenet_labels import IMAGENET_1K_LABELS
from .layouts import MASK_RCNN_MARKERS, MASK_RCNN_PREFIXES, RETINANET_MARKERS, SEMANTIC_FPN_MARKERS
from .sources import ConversionError, Source

# RetinaNet fields read off a detector's tensors; with the anchor settings (not visible in shapes, the authors'
# are hf_pvt's defaults) they must equal the defaults for a card to state the authors' box AP.
_RETINANET_FIELDS = ("decoder_hidden_size", "detection_feat_channels", "detection_num_convs")
# The layers only MMDetection's RetinaHead has (retina_cls, retina_reg).
RETINANET_PREFIX = "bbox_head.retina_"
_ANCHOR_FIELDS = ("anchor_octave_base_scale", "anchor_scales_per_octave", "anchor_ratios")
# Mask R-CNN fields read off the tensors, and the RPN anchor settings (not visible in shapes): all must equal
# hf_pvt's defaults (MMDetection's `mask_rcnn_r50_fpn.py`) for a card to state the authors' box and mask AP.
_MASK_RCNN_FIELDS = ("decoder_hidden_size", "rcnn_fc_channels", "mask_head_channels", "mask_head_num_convs")
_RPN_ANCHOR_FIELDS = ("rpn_anchor_scale", "rpn_anchor_ratios")


def _as_ratio(hidden: int, width: int) -> int | float:
    ratio = hidden / width
    return int(ratio) if ratio.is_integer() else ratio


def detect_architecture(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Read the configuration fields the tensors determine off an original-layout dict: every identity field of
    `hf_pvt.variants_hf_pvt` but the attention heads (and the fields no checkpoint changes: strides, activation,
    norm epsilons), which leave no trace in the shapes."""
    stages = sorted(int(m.group(1)) for key in tensors if (m := re.fullmatch(r"patch_embed(\d)\.proj\.weight", key)))
    if not stages or stages != list(range(1, len(stages) + 1)):
        raise ConversionError(
            f"Cannot read the architecture: expected patch_embed1..N.proj.weight, found stages {stages}. "
            "Is this a PVT checkpoint?"
        )
    embeds = [tensors[f"patch_embed{i}.proj.weight"] for i in stages]
    if any(embed.ndim != 4 for embed in embeds):
        raise ConversionError("patch_embed*.proj.weight must be 4-D convolution kernels; is this a PVT checkpoint?")
    widths = [int(w.shape[0]) for w in embeds]
    has_pos = any(key.startswith("pos_embed") for key in tensors)
    has_dwconv = any(".mlp.dwconv." in key for key in tensors)
    if has_pos and has_dwconv:
        raise ConversionError("The checkpoint mixes v1 position embeddings and v2 depthwise MLP convolutions.")
    if not has_pos and not has_dwconv:
        raise ConversionError(
            "Cannot tell PVT v1 from v2: the checkpoint has neither pos_embed* nor mlp.dwconv tensors."
        )
    version = 1 if has_pos else 2

    depths, mlp_ratios, sr_kernels = [], [], []
    for i, width in zip(stages, widths):
        blocks = {int(m.group(1)) for key in tensors if (m := re.match(rf"block{i}\.(\d+)\.", key))}
        depths.append(max(blocks) + 1 if blocks else 0)
        fc1 = tensors.get(f"block{i}.0.mlp.fc1.weight")
        mlp_ratios.append(_as_ratio(int(fc1.shape[0]), width) if fc1 is not None and fc1.ndim == 2 else 4)
        sr = tensors.get(f"block{i}.0.attn.sr.weight")
        sr_kernels.append(int(sr.shape[-1]) if sr is not None and sr.ndim == 4 else None)
    # Linear SRA reduces in every stage with a 1x1 convolution; strided SRA leaves the last stage unreduced.
    linear = version == 2 and all(k == 1 for k in sr_kernels)
    architecture: dict[str, Any] = {
        "pvt_version": version,
        "linear_attention": linear,
        "num_channels": int(embeds[0].shape[1]),
        "hidden_sizes": widths,
        "depths": depths,
        "mlp_ratios": mlp_ratios,
        "patch_sizes": [int(w.shape[-1]) for w in embeds],
        "qkv_bias": "block1.0.attn.q.bias" in tensors,
    }
    if not linear:
        architecture["sr_ratios"] = [k or 1 for k in sr_kernels]
    if version == 1:
        pos_embed1 = tensors.get("pos_embed1")
        tokens = int(pos_embed1.shape[1]) if pos_embed1 is not None and pos_embed1.ndim == 3 else 0
        side = math.isqrt(tokens)
        if tokens == 0 or side * side != tokens:
            raise ConversionError(f"pos_embed1 holds {tokens} positions, not a square grid; cannot infer image_size.")
        architecture["image_size"] = side * architecture["patch_sizes"][0]
    return architecture


def preset_disagreements(architecture: dict[str, Any], preset: str) -> list[str]:
    """`field: checkpoint X, preset Y` for every detected field on which `architecture` and `preset` differ."""
    return preset_differences(architecture, preset, source="checkpoint")


def match_preset(architecture: dict[str, Any]) -> str | None:
    """The released variant whose configuration the tensors show, or None for a custom model. The attention heads,
    which the tensors cannot show, are checked once the configuration is built (`variants_hf_pvt.preset_name`)."""
    return next((name for name in PRESETS if not preset_disagreements(architecture, name)), None)


def detect_task(source: Source, task: str) -> str:
    """The task `source` converts to: `task` as asked, checked against the layers the checkpoint holds, or for
    "auto" detection for an MMDetection RetinaNet (any `bbox_head.retina_*` layer: a missing one is then reported by
    name), instance segmentation for an MMDetection Mask R-CNN (any layer
    under `rpn_head.` or `roi_head.`: a missing one is then reported by name), semantic segmentation for an
    MMSegmentation Semantic FPN, else classification when it has a head, else backbone."""
    has_head = "head.weight" in source.tensors
    # Any of RetinaNet's own head layers makes it one, so that a missing layer is reported by name rather than the
    # checkpoint quietly converting as a bare backbone.
    is_retinanet = any(key.startswith(RETINANET_PREFIX) for key in source.detector)
    is_mask_rcnn = any(key.startswith(MASK_RCNN_PREFIXES) for key in source.detector)
    is_semantic_fpn = all(key in source.detector for key in SEMANTIC_FPN_MARKERS)
    if task == "auto":
        if is_retinanet:
            task = "detection"
        elif is_mask_rcnn:
            task = "instance-segmentation"
        elif is_semantic_fpn:
            task = "semantic-segmentation"
        else:
            task = "classification" if has_head else "backbone"
    if task == "semantic-segmentation" and not is_semantic_fpn:
        found = sorted({key.split(".")[0] + "." for key in source.detector})
        raise ConversionError(
            "--task semantic-segmentation converts an MMSegmentation Semantic FPN checkpoint (backbone.*, "
            f"{' and '.join(SEMANTIC_FPN_MARKERS)}); this one has "
            + (f"other layers around its backbone ({', '.join(found)})." if found else "no segmenter layers.")
            + " Convert its backbone with --task backbone."
        )
    if task == "classification" and not has_head:
        alternative = (
            " or --task detection" if is_retinanet else " or --task instance-segmentation" if is_mask_rcnn else ""
        )
        raise ConversionError(
            f"The checkpoint has no classification head (head.weight); convert it with --task backbone{alternative}."
        )
    if task == "detection" and not is_retinanet:
        found = sorted({key.split(".")[0] + "." for key in source.detector})
        raise ConversionError(
            "--task detection converts an MMDetection RetinaNet checkpoint (backbone.*, neck.*, "
            f"{' and '.join(RETINANET_MARKERS)}); this one has "
            + (f"other layers around its backbone ({', '.join(found)})." if found else "no detector layers.")
            + (
                " It is a Mask R-CNN: convert it with --task instance-segmentation."
                if is_mask_rcnn
                else " Convert its backbone with --task backbone."
            )
        )
    if task == "instance-segmentation" and not is_mask_rcnn:
        found = sorted({key.split(".")[0] + "." for key in source.detector})
        raise ConversionError(
            "--task instance-segmentation converts an MMDetection Mask R-CNN checkpoint (backbone.*, neck.*, "
            f"rpn_head.*, roi_head.*, with {' and '.join(MASK_RCNN_MARKERS)}); this one has "
            + (f"other layers around its backbone ({', '.join(found)})." if found else "no detector layers.")
            + " Convert its backbone with --task backbone."
        )

    return task


def detect_retinanet(detector: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The RetinaNet configuration fields an mmdet checkpoint's neck and head tensors determine: FPN width, head
    width and depth, and the number of classes (retina_cls has anchors-per-location x classes outputs)."""

    def kernel(key: str) -> torch.Tensor:
        tensor = detector.get(key)
        if tensor is None or tensor.ndim != 4:
            found = "nothing" if tensor is None else f"shape {tuple(tensor.shape)}"
            raise ConversionError(
                f"The RetinaNet checkpoint has no convolution kernel {key!r} (found {found}); is it an mmdet "
                "RetinaNet with an FPN neck, like the authors' detectors?"
            )
        return tensor

    num_convs = len({int(m[1]) for key in detector if (m := re.match(r"bbox_head\.cls_convs\.(\d+)\.", key))})
    fpn_width = int(kernel("neck.lateral_convs.0.conv.weight").shape[0])
    defaults = HfPvtConfig()
    anchors = len(defaults.anchor_ratios) * defaults.anchor_scales_per_octave
    box_outputs = int(kernel("bbox_head.retina_reg.weight").shape[0])
    class_outputs = int(kernel("bbox_head.retina_cls.weight").shape[0])
    if box_outputs != 4 * anchors or class_outputs % anchors:
        raise ConversionError(
            f"bbox_head.retina_reg has {box_outputs} outputs and retina_cls {class_outputs}: that is not 4 and "
            f"C values for each of the {anchors} anchors per location ({len(defaults.anchor_ratios)} ratios x "
            f"{defaults.anchor_scales_per_octave} scales) of the authors' RetinaNet, the only anchor setting "
            "hf-pvt-convert reads."
        )
    head_width = int(kernel("bbox_head.cls_convs.0.conv.weight").shape[0]) if num_convs else fpn_width
    return {
        "decoder_hidden_size": fpn_width,
        "detection_feat_channels": head_width,
        "detection_num_convs": num_convs,
        "num_labels": class_outputs // anchors,
    }


def detect_mask_rcnn(detector: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The Mask R-CNN configuration fields an mmdet checkpoint's neck and head tensors determine: FPN width, box-head
    width, mask-head width and depth, and the number of classes (`fc_cls` has one row per class and one for the
    background). The RPN must have the authors' 3 anchors per location, the only anchor setting read."""

    def weight(key: str, ndim: int) -> torch.Tensor:
        tensor = detector.get(key)
        if tensor is None or tensor.ndim != ndim:
            found = "nothing" if tensor is None else f"shape {tuple(tensor.shape)}"
            kind = "convolution kernel" if ndim == 4 else "fully connected weight"
            raise ConversionError(
                f"The Mask R-CNN checkpoint has no {kind} {key!r} (found {found}); is it an mmdet Mask R-CNN (FPN, "
                "RPNHead, Shared2FCBBoxHead, FCNMaskHead) like the authors' `mask_rcnn_pvt_*_fpn_1x_coco.py`?"
            )
        return tensor

    anchors = len(HfPvtConfig().rpn_anchor_ratios)
    objectness = int(weight("rpn_head.rpn_cls.weight", 4).shape[0])
    box_outputs = int(weight("rpn_head.rpn_reg.weight", 4).shape[0])
    if objectness != anchors or box_outputs != 4 * anchors:
        raise ConversionError(
            f"rpn_head.rpn_cls has {objectness} outputs and rpn_reg {box_outputs}: that is not 1 and 4 values for "
            f"each of the {anchors} anchors per location (one scale, ratios 0.5, 1, 2) of the authors' Mask R-CNN, "
            "the only anchor setting hf-pvt-convert reads (a softmax RPN would have 2 objectness values per anchor)."
        )
    classes = int(weight("roi_head.bbox_head.fc_cls.weight", 2).shape[0]) - 1
    if classes < 1:
        raise ConversionError(
            f"roi_head.bbox_head.fc_cls has {classes + 1} outputs: a Mask R-CNN box head needs one per class and one "
            "for the background."
        )
    num_convs = len({int(m[1]) for key in detector if (m := re.match(r"roi_head\.mask_head\.convs\.(\d+)\.", key))})
    # The transposed convolution's weight is (in, out, 2, 2): its output width is the mask head's.
    mask_width = int(weight("roi_head.mask_head.upsample.weight", 4).shape[1])
    return {
        "decoder_hidden_size": int(weight("neck.lateral_convs.0.conv.weight", 4).shape[0]),
        "rcnn_fc_channels": int(weight("roi_head.bbox_head.shared_fcs.0.weight", 2).shape[0]),
        "mask_head_channels": mask_width,
        "mask_head_num_convs": num_convs,
        "num_labels": classes,
    }


def detect_semantic_fpn(detector: dict[str, torch.Tensor], num_stages: int) -> dict[str, Any]:
    """The Semantic FPN configuration fields an MMSegmentation checkpoint's neck and head tensors determine: FPN
    width, head width, number of classes, and the head's normalisation, which must be BatchNorm (the authors'
    SyncBN) with its running statistics."""

    def kernel(key: str) -> torch.Tensor:
        tensor = detector.get(key)
        if tensor is None or tensor.ndim != 4:
            found = "nothing" if tensor is None else f"shape {tuple(tensor.shape)}"
            raise ConversionError(
                f"The Semantic FPN checkpoint has no convolution kernel {key!r} (found {found}); is it an "
                "MMSegmentation Semantic FPN (FPN neck, FPNHead) like the authors' segmenters?"
            )
        return tensor

    norms = sorted({m[1] for key in detector if (m := re.match(r"decode_head\.scale_heads\.\d+\.\d+\.(\w+)\.", key))})
    if norms != ["bn", "conv"]:
        raise ConversionError(
            f"The Semantic FPN head's conv modules hold {norms} (expected 'conv' and 'bn'): hf-pvt-convert converts "
            "the authors' FPNHead, which normalises with BatchNorm (SyncBN) and its running statistics."
        )
    levels = {int(m[1]) for key in detector if (m := re.match(r"decode_head\.scale_heads\.(\d+)\.", key))}
    if levels != set(range(num_stages)):
        raise ConversionError(
            f"The Semantic FPN head has scale heads {sorted(levels)}, but the backbone has {num_stages} stages: "
            "FPNHead needs one per stage."
        )
    classifier = kernel("decode_head.conv_seg.weight")
    return {
        "decoder_hidden_size": int(kernel("neck.lateral_convs.0.conv.weight").shape[0]),
        "decoder_head_size": int(classifier.shape[1]),
        "num_labels": int(classifier.shape[0]),
        "semantic_head_norm": "batch_norm",
    }


def semantic_labels(num_labels: int, meta_classes: Any) -> tuple[dict[int, str], list[str]]:
    """id2label for a segmenter from its checkpoint's `meta["CLASSES"]`, and notes on what was done about them.

    MMSegmentation stores the dataset's class names there. Names are trimmed (its ADE20K spells "bed "). Names that
    cannot label the head (missing, of another count, not all strings, empty or repeated: id2label must be
    one-to-one) are not used: a 150-class head then gets ADE20K's names, any other generic `LABEL_k`, and a note
    says why."""
    problem = None
    if meta_classes is None:
        problem = "the checkpoint has no class names (meta['CLASSES'])"
    elif not isinstance(meta_classes, (list, tuple)):
        problem = f"meta['CLASSES'] is a {type(meta_classes).__name__}, not a list of names"
    elif len(meta_classes) != num_labels:
        problem = f"meta['CLASSES'] has {len(meta_classes)} class names but the head predicts {num_labels} classes"
    elif not all(isinstance(name, str) for name in meta_classes):
        problem = "meta['CLASSES'] holds names that are not all strings"
    notes: list[str] = []
    if problem is None:
        names = [name.strip() for name in meta_classes]
        trimmed = [name for name, clean in zip(meta_classes, names) if name != clean]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if "" in names:
            problem = "meta['CLASSES'] holds an empty class name"
        elif repeated:
            problem = f"meta['CLASSES'] names {repeated[:5]} more than once"
        else:
            if trimmed:
                notes.append(f"trimmed spaces around the class names {trimmed} from meta['CLASSES']")
            return dict(enumerate(names)), notes
    if num_labels == len(ADE20K_LABELS):
        notes.append(f"{problem}; labelled the 150 classes with ADE20K's names, the authors' dataset")
        return dict(enumerate(ADE20K_LABELS)), notes
    notes.append(f"{problem}; labelled the classes LABEL_0..LABEL_{num_labels - 1}")
    return {i: f"LABEL_{i}" for i in range(num_labels)}, notes


def class_name_problem(num_labels: int, meta_classes: Any) -> str | None:
    """Why a checkpoint's `meta["CLASSES"]` (None when absent) cannot name a head of `num_labels` classes one to one,
    or None when it can: a list or tuple of that many distinct, non-empty strings (compared without the spaces
    around them)."""
    if meta_classes is None:
        return "the checkpoint has no class names (meta['CLASSES'])"
    if not isinstance(meta_classes, (list, tuple)):
        return f"meta['CLASSES'] is a {type(meta_classes).__name__}, not a list of names"
    if len(meta_classes) != num_labels:
        return f"meta['CLASSES'] lists {len(meta_classes)} names but the head predicts {num_labels} classes"
    others = [name for name in meta_classes if not isinstance(name, str)]
    if others:
        return f"meta['CLASSES'] holds names that are not strings ({', '.join(map(repr, others[:3]))})"
    names = [name.strip() for name in meta_classes]
    if "" in names:
        return "meta['CLASSES'] holds an empty class name"
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return f"meta['CLASSES'] names {', '.join(map(repr, repeated[:5]))} more than once"
    return None


def detection_labels(num_labels: int, meta_classes: Any) -> tuple[dict[int, str], list[str]]:
    """id2label for a detector (RetinaNet, Mask R-CNN) from its checkpoint's `meta["CLASSES"]`, and notes on it.

    Names that fit (`class_name_problem`) are used, trimmed. Without any, an 80-class head gets COCO's names (the
    authors' dataset). Names that are there but do not fit (another count, not strings, empty or repeated) say that
    the head is not what they describe: the classes become LABEL_k rather than a guess, and, with labels that are not
    COCO's, the model card claims no published results. Either way a note says what was done, and id2label is one to
    one, so label2id is its exact inverse."""
    problem = class_name_problem(num_labels, meta_classes)
    if problem is None:
        return dict(enumerate(name.strip() for name in meta_classes)), []
    if meta_classes is None and num_labels == len(COCO_DETECTION_LABELS):
        return dict(enumerate(COCO_DETECTION_LABELS)), [
            f"{problem}; labelled the 80 classes with COCO's names, the authors' dataset"
        ]
    note = f"{problem}; labelled the classes LABEL_0..LABEL_{num_labels - 1}"
    if meta_classes is not None:
        note += " (the checkpoint's own class names do not fit its head, so no dataset's names are assumed)"
    return {i: f"LABEL_{i}" for i in range(num_labels)}, [note]


def _labels_of(config: HfPvtConfig) -> list[str | None]:
    return [config.id2label.get(i) for i in range(config.num_labels)]


def has_imagenet_head(config: HfPvtConfig) -> bool:
    return _labels_of(config) == list(IMAGENET_1K_LABELS)


def is_authors_retinanet(config: HfPvtConfig) -> bool:
    """Whether a detector configuration is the authors' COCO RetinaNet head (`retinanet_pvt_*_fpn_1x_coco.py`): 80
    COCO classes, FPN and head of 256 channels, 4 convs per branch, 9 anchors."""
    defaults = HfPvtConfig()
    return _labels_of(config) == list(COCO_DETECTION_LABELS) and all(
        getattr(config, name) == getattr(defaults, name) for name in (*_RETINANET_FIELDS, *_ANCHOR_FIELDS)
    )


def is_authors_mask_rcnn(config: HfPvtConfig) -> bool:
    """Whether an instance segmentation configuration is the authors' COCO Mask R-CNN (`mask_rcnn_pvt_*_fpn_1x_coco.py`
    over MMDetection's `mask_rcnn_r50_fpn.py`): 80 COCO classes, FPN of 256 channels, 3 RPN anchors of scale 8, box
    head of 1024, mask head of four 256-channel convs."""
    defaults = HfPvtConfig()
    return _labels_of(config) == list(COCO_DETECTION_LABELS) and all(
        getattr(config, name) == getattr(defaults, name) for name in (*_MASK_RCNN_FIELDS, *_RPN_ANCHOR_FIELDS)
    )


def is_authors_semantic_fpn(config: HfPvtConfig) -> bool:
    """Whether a segmenter configuration is the authors' ADE20K Semantic FPN (`fpn_pvt_*_ade20k_40k.py`): ADE20K's
    150 classes, FPN of 256 and head of 128 channels, BatchNorm."""
    defaults = HfPvtConfig()
    return (
        _labels_of(config) == list(ADE20K_LABELS)
        and config.semantic_head_norm == "batch_norm"
        and all(
            getattr(config, name) == getattr(defaults, name) for name in ("decoder_hidden_size", "decoder_head_size")
        )
    )


__all__ = [
    "class_name_problem",
    "detect_architecture",
    "detection_labels",
    "detect_mask_rcnn",
    "detect_retinanet",
    "detect_semantic_fpn",
    "detect_task",
    "has_imagenet_head",
    "is_authors_mask_rcnn",
    "is_authors_retinanet",
    "is_authors_semantic_fpn",
    "semantic_labels",
    "match_preset",
    "preset_disagreements",
]
