"""Key-renaming tables between the checkpoint layouts of the PVT family, and layout detection.

Each table is data: `(pattern, replacement)` pairs applied with `re.sub`, in order, to every key.
A stage is captured either one-based, as `(?P<stage>\\d)` (the authors' `block1`), or zero-based, as
`(?P<stage0>\\d)` (Transformers' and timm's `layers.0`, `stages.0`). In a replacement, `{stage}` stands
for the zero-based stage, `{stage1}` for the one-based stage and `{last}` for the index of the last stage.

Every foreign layout is first renamed into the authors' layout (the keys of their released `.pth` files), which
is what variant detection
reads; `ORIGINAL_TO_HF_PVT` then maps that onto hf_pvt's keys.

Layouts, as their state dicts spell them (i = stage, j = block):

- original (the authors' `.pth`): `patch_embed{i}.{proj,norm}`, `pos_embed{i}` (v1), `block{i}.{j}.{norm1,
  attn.{q,kv,proj,sr,norm}, norm2, mlp.{fc1,dwconv.dwconv,fc2}}`, `norm{i}` (v2) or `norm` + `cls_token`
  (v1), `head`.
- transformers-pvt (model type `pvt`, optionally under `pvt.`): `encoder.patch_embeddings.{i}.{projection,
  layer_norm,position_embeddings,cls_token}`, `encoder.block.{i}.{j}.{layer_norm_1, attention.self.{query,
  key,value,sequence_reduction,layer_norm}, attention.output.dense, layer_norm_2, mlp.{dense1,dense2}}`,
  `encoder.layer_norm`, `classifier`.
- transformers-pvt_v2 (model type `pvt_v2`, optionally under `pvt_v2.`): `encoder.layers.{i}.
  patch_embedding.{proj,layer_norm}`, `encoder.layers.{i}.blocks.{j}.{layer_norm_1, attention.{query,key,
  value,proj,spatial_reduction,layer_norm}, layer_norm_2, mlp.{dense1,dwconv.dwconv,dense2}}`,
  `encoder.layers.{i}.layer_norm`, `classifier`.
- timm-pvt_v2 (timm's `pvt_v2.py`): `patch_embed` (stage 1's patch embedding), `stages.{i}.downsample`
  (stages 2-4's), `stages.{i}.blocks.{j}` with the authors' inner names except `mlp.dwconv` (one level, no
  inner `.dwconv`), `stages.{i}.norm`, `head`.

- mmdet-retinanet (the authors' RetinaNet detectors, MMDetection v2): `backbone.` + the original layout (v1
  without cls token and final norm), `neck.{lateral_convs,fpn_convs}.{k}.conv`, `bbox_head.{cls_convs,
  reg_convs}.{k}.conv`, `bbox_head.{retina_cls,retina_reg}`.
- mmdet-mask-rcnn (the authors' Mask R-CNN models, MMDetection v2): `backbone.` + the original layout (v1 without
  cls token and final norm), `neck.{lateral_convs,fpn_convs}.{k}.conv`, `rpn_head.{rpn_conv,rpn_cls,rpn_reg}`,
  `roi_head.bbox_head.{shared_fcs.{k},fc_cls,fc_reg}`, `roi_head.mask_head.{convs.{k}.conv,upsample,conv_logits}`.
- mmseg-semantic-fpn (the authors' Semantic FPN segmenters, MMSegmentation v0.13): `backbone.` + the original
  layout (v1 without cls token and final norm), `neck.{lateral_convs,fpn_convs}.{k}.conv`,
  `decode_head.scale_heads.{i}.{j}.{conv,bn}` (j counts the upsample modules too), `decode_head.conv_seg`.

Transformers splits the authors' `kv` Linear into `key` and `value`; they are renamed to `attn.k` /
`attn.v` here and concatenated back into `attn.kv` (rows [:C] keys, [C:] values) by `merge_key_value`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# The authors' `pvt.py` / `pvt_v2.py` (the keys of their released checkpoints), mapped onto
# HfPvtForImageClassification.
ORIGINAL_TO_HF_PVT: list[tuple[str, str]] = [
    (r"^patch_embed(?P<stage>\d)\.", "pvt.stages.{stage}.patch_embed."),
    (r"^pos_embed(?P<stage>\d)$", "pvt.stages.{stage}.pos_embed"),
    (r"^block(?P<stage>\d)\.(?P<block>\d+)\.", "pvt.stages.{stage}.blocks.\\g<block>."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^norm(?P<stage>\d)\.", "pvt.stages.{stage}.norm."),
    (r"^norm\.", "pvt.stages.{last}.norm."),
    (r"^cls_token$", "pvt.stages.{last}.cls_token"),
    (r"^head\.", "classifier."),
]

# The layers of an MMDetection v2 RetinaNet around its backbone (`FPN` and `RetinaHead` of the authors'
# `retinanet_pvt_*_fpn_1x_coco.py`), mapped onto HfPvtForObjectDetection:
# the same names without the `.conv` level of mmdet's ConvModule (the FPN's and the head's convs have neither
# norm nor, in the FPN, activation, so the wrapper holds nothing else). `retina_cls` / `retina_reg` are plain
# convolutions in both. The backbone's own keys go through ORIGINAL_TO_HF_PVT.
MMDET_RETINANET_TO_HF_PVT: list[tuple[str, str]] = [
    (r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.", r"neck.\1.\2."),
    (r"^bbox_head\.(cls_convs|reg_convs)\.(\d+)\.conv\.", r"bbox_head.\1.\2."),
]
# The tensors that make a checkpoint's neck and head a RetinaNet (and not, say, a Mask R-CNN or a segmenter).
RETINANET_MARKERS = ("bbox_head.retina_cls.weight", "bbox_head.retina_reg.weight")

# The layers of an MMDetection v2 Mask R-CNN around its backbone (`FPN`, `RPNHead` and `StandardRoIHead` with
# `Shared2FCBBoxHead` and `FCNMaskHead` of the authors' `mask_rcnn_pvt_*_fpn_1x_coco.py`), mapped onto
# HfPvtForInstanceSegmentation: the FPN's ConvModules lose their `.conv` level as RetinaNet's do (its fifth level is
# a max pool, without weights); `rpn_head.*` and `roi_head.*` keep their names, the mask head's ConvModules (conv +
# ReLU, no norm) included, since hf_pvt's mask head keeps that `.conv` level.
MMDET_MASK_RCNN_TO_HF_PVT: list[tuple[str, str]] = [
    (r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.", r"neck.\1.\2."),
]
# The tensors that make a checkpoint a Mask R-CNN: the RPN's objectness and the mask head's logits. A checkpoint
# with any layer under `rpn_head.` or `roi_head.` converts as one, so that a missing marker is reported by name.
MASK_RCNN_MARKERS = ("rpn_head.rpn_cls.weight", "roi_head.mask_head.conv_logits.weight")
MASK_RCNN_PREFIXES = ("rpn_head.", "roi_head.")

# The layers of an MMSegmentation v0.13 Semantic FPN around its backbone (`FPN` and `FPNHead` of the authors'
# `fpn_pvt_*_ade20k_40k.py` / `fpn_pvtv2_*_ade20k_40k.py`), mapped onto HfPvtForSemanticSegmentation: the neck as
# RetinaNet's; the head keeps MMSegmentation's names (`scale_heads.{i}.{j}.conv` / `.bn`, BatchNorm running
# statistics included, since hf_pvt's BatchNorm head mirrors the `nn.Sequential` indices), except the classifier.
MMSEG_SEMANTIC_FPN_TO_HF_PVT: list[tuple[str, str]] = [
    (r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.", r"neck.\1.\2."),
    (r"^decode_head\.conv_seg\.", "decode_head.classifier."),
]
# The tensors that make a checkpoint's neck and head a Semantic FPN.
SEMANTIC_FPN_MARKERS = ("neck.lateral_convs.0.conv.weight", "decode_head.conv_seg.weight")

# Names inside a block that Transformers' ports changed; shared by both of their layouts.
_TRANSFORMERS_BLOCK_NAMES: list[tuple[str, str]] = [
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.attention\.(self\.)?query\.", ".attn.q."),
    (r"\.attention\.(self\.)?key\.", ".attn.k."),
    (r"\.attention\.(self\.)?value\.", ".attn.v."),
    (r"\.attention\.(self\.)?(sequence_reduction|spatial_reduction)\.", ".attn.sr."),
    (r"\.attention\.(self\.)?layer_norm\.", ".attn.norm."),
    (r"\.attention\.(output\.dense|proj)\.", ".attn.proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
]

TRANSFORMERS_PVT_TO_ORIGINAL: list[tuple[str, str]] = [
    (r"^(pvt\.)?encoder\.patch_embeddings\.(?P<stage0>\d)\.position_embeddings$", "pos_embed{stage1}"),
    (r"^(pvt\.)?encoder\.patch_embeddings\.\d\.cls_token$", "cls_token"),
    (r"^(pvt\.)?encoder\.patch_embeddings\.(?P<stage0>\d)\.projection\.", "patch_embed{stage1}.proj."),
    (r"^(pvt\.)?encoder\.patch_embeddings\.(?P<stage0>\d)\.layer_norm\.", "patch_embed{stage1}.norm."),
    (r"^(pvt\.)?encoder\.block\.(?P<stage0>\d)\.(?P<block>\d+)\.", "block{stage1}.\\g<block>."),
    *_TRANSFORMERS_BLOCK_NAMES,
    (r"^(pvt\.)?encoder\.layer_norm\.", "norm."),
    (r"^classifier\.", "head."),
]

TRANSFORMERS_PVT_V2_TO_ORIGINAL: list[tuple[str, str]] = [
    (r"^(pvt_v2\.)?encoder\.layers\.(?P<stage0>\d)\.patch_embedding\.proj\.", "patch_embed{stage1}.proj."),
    (r"^(pvt_v2\.)?encoder\.layers\.(?P<stage0>\d)\.patch_embedding\.layer_norm\.", "patch_embed{stage1}.norm."),
    (r"^(pvt_v2\.)?encoder\.layers\.(?P<stage0>\d)\.blocks\.(?P<block>\d+)\.", "block{stage1}.\\g<block>."),
    (r"^(pvt_v2\.)?encoder\.layers\.(?P<stage0>\d)\.layer_norm\.", "norm{stage1}."),
    *_TRANSFORMERS_BLOCK_NAMES,
    (r"^classifier\.", "head."),
]

TIMM_PVT_V2_TO_ORIGINAL: list[tuple[str, str]] = [
    (r"^patch_embed\.", "patch_embed1."),
    (r"^stages\.(?P<stage0>\d)\.downsample\.", "patch_embed{stage1}."),
    (r"^stages\.(?P<stage0>\d)\.blocks\.(?P<block>\d+)\.", "block{stage1}.\\g<block>."),
    (r"\.mlp\.dwconv\.(?=weight$|bias$)", ".mlp.dwconv.dwconv."),
    (r"^stages\.(?P<stage0>\d)\.norm\.", "norm{stage1}."),
]

# How to recognise a layout: a key that only it has. Checked in order; the first layout with a hit wins.
LAYOUT_MARKERS: dict[str, str] = {
    "original": r"^(patch_embed1\.proj\.|block1\.0\.)",
    "transformers-pvt": r"^(pvt\.)?encoder\.patch_embeddings\.0\.",
    "transformers-pvt_v2": r"^(pvt_v2\.)?encoder\.layers\.0\.",
    "timm-pvt_v2": r"^(patch_embed\.proj\.|stages\.\d\.downsample\.)",
    "hf_pvt": r"^(pvt\.)?stages\.0\.patch_embed\.",
}

TO_ORIGINAL: dict[str, list[tuple[str, str]]] = {
    "original": [],
    "transformers-pvt": TRANSFORMERS_PVT_TO_ORIGINAL,
    "transformers-pvt_v2": TRANSFORMERS_PVT_V2_TO_ORIGINAL,
    "timm-pvt_v2": TIMM_PVT_V2_TO_ORIGINAL,
}


def rename_key(key: str, table: list[tuple[str, str]], num_stages: int = 4) -> str:
    """Apply every matching rule of `table` to `key`, in order."""
    for pattern, replacement in table:
        match = re.search(pattern, key)
        if match is None:
            continue
        groups = match.groupdict()
        filled = replacement.replace("{last}", str(num_stages - 1))
        if groups.get("stage") is not None:
            stage = int(groups["stage"]) - 1
        elif groups.get("stage0") is not None:
            stage = int(groups["stage0"])
        else:
            stage = None
        if stage is not None:
            filled = filled.replace("{stage1}", str(stage + 1)).replace("{stage}", str(stage))
        key = re.sub(pattern, filled, key, count=1)
    return key


def detect_layout(keys: list[str]) -> str | None:
    """The name of the layout whose marker key appears in `keys` (see `LAYOUT_MARKERS`), or None."""
    for layout, marker in LAYOUT_MARKERS.items():
        if any(re.search(marker, key) for key in keys):
            return layout
    return None


def merge_key_value(
    tensors: Mapping[str, torch.Tensor], sources: Mapping[str, list[str]]
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], list[str]]:
    """Concatenate split `attn.k` / `attn.v` Linears back into the authors' `attn.kv`.

    Returns the new tensors, their source keys, and the halves that lack a partner (or whose partner's
    shape does not fit), for the caller to report.
    """
    merged: dict[str, torch.Tensor] = {}
    merged_sources: dict[str, list[str]] = {}
    unpaired: list[str] = []
    for key, tensor in tensors.items():
        match = re.search(r"\.attn\.(k|v)\.(weight|bias)$", key)
        if match is None:
            merged[key], merged_sources[key] = tensor, list(sources[key])
            continue
        if match.group(1) == "v":
            if key.replace(".attn.v.", ".attn.k.") not in tensors:
                unpaired.extend(sources[key])
            continue
        value_key = key.replace(".attn.k.", ".attn.v.")
        value = tensors.get(value_key)
        if value is None or value.shape[1:] != tensor.shape[1:]:
            unpaired.extend(sources[key] + (sources[value_key] if value is not None else []))
            continue
        kv_key = key.replace(".attn.k.", ".attn.kv.")
        merged[kv_key] = torch.cat([tensor, value], dim=0)
        merged_sources[kv_key] = list(sources[key]) + list(sources[value_key])
    return merged, merged_sources, unpaired
