"""The released PVT and PVTv2 models as data: their configurations, papers, citations and published results.

One place for these facts: `HfPvtConfig.from_preset` builds from `PRESETS`, the model cards quote `RESULTS`,
`PAPERS` and `CITATIONS`, and `preset_name` is the single rule for "this configuration is that released model",
used by the Hub helpers and the converter alike.

Sources: the PVT paper (arXiv 2102.12122), the PVTv2 paper (arXiv 2106.13797) and the authors' repositories
(whai362/PVT with its `classification/`, `detection/` and `segmentation/` folders, whai362/PVTv2-Seg).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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

# (title, link) of each version's paper.
PAPERS = {
    1: ("PVT paper (arXiv 2102.12122)", "https://arxiv.org/abs/2102.12122"),
    2: ("PVTv2 paper (arXiv 2106.13797)", "https://arxiv.org/abs/2106.13797"),
}
CITATIONS = {
    1: """@inproceedings{wang2021pvt,
  title     = {Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions},
  author    = {Wang, Wenhai and Xie, Enze and Li, Xiang and Fan, Deng-Ping and Song, Kaitao and Liang, Ding
               and Lu, Tong and Luo, Ping and Shao, Ling},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}""",
    2: """@article{wang2022pvtv2,
  title   = {PVT v2: Improved Baselines with Pyramid Vision Transformer},
  author  = {Wang, Wenhai and Xie, Enze and Li, Xiang and Fan, Deng-Ping and Song, Kaitao and Liang, Ding
             and Lu, Tong and Luo, Ping and Shao, Ling},
  journal = {Computational Visual Media},
  year    = {2022}
}""",
}

# The authors' published numbers, per released backbone:
# - params (M), gmacs and top1: ImageNet-1k classification at 224x224 (the papers' classification tables);
# - box_ap: RetinaNet, 1x schedule, COCO val2017 (`retinanet_pvt_*_fpn_1x_coco.py`);
# - miou: Semantic FPN on ADE20K, 40k iterations (`fpn_pvt_*_ade20k_40k.py`, `fpn_pvtv2_*_ade20k_40k.py`) as
#   (paper, the authors' released segmentation code); only the code's number where that is all we have;
# - mask_rcnn: Mask R-CNN, 1x schedule, COCO val2017 (`mask_rcnn_pvt_*_fpn_1x_coco.py`), (box AP, mask AP).
RESULTS: dict[str, dict[str, Any]] = {
    "pvt-tiny": {
        "params": 13.2, "gmacs": 1.9, "top1": 75.1, "box_ap": 36.7, "miou": (35.7, 36.6), "mask_rcnn": (36.7, 35.1),
    },
    "pvt-small": {
        "params": 24.5, "gmacs": 3.8, "top1": 79.8, "box_ap": 40.4, "miou": (39.8, 41.9), "mask_rcnn": (40.4, 37.8),
    },
    "pvt-medium": {"params": 44.2, "gmacs": 6.7, "top1": 81.2, "box_ap": 41.9, "miou": (41.6, 43.5)},
    "pvt-large": {"params": 61.4, "gmacs": 9.8, "top1": 81.7, "box_ap": 42.6, "miou": (42.1, 43.5)},
    "pvt-v2-b0": {
        "params": 3.7, "gmacs": 0.6, "top1": 70.5, "box_ap": 37.2, "miou": (None, 37.2), "mask_rcnn": (38.2, 36.2),
    },
    "pvt-v2-b1": {
        "params": 14.0, "gmacs": 2.1, "top1": 78.7, "box_ap": 41.2, "miou": (None, 42.5), "mask_rcnn": (41.8, 38.8),
    },
    "pvt-v2-b2": {
        "params": 25.4, "gmacs": 4.0, "top1": 82.0, "box_ap": 44.6, "miou": (None, 45.2), "mask_rcnn": (45.3, 41.2),
    },
    "pvt-v2-b2-li": {"params": 22.6, "gmacs": 3.9, "top1": 82.1, "box_ap": 43.6},
    "pvt-v2-b3": {
        "params": 45.2, "gmacs": 6.9, "top1": 83.2, "box_ap": 45.9, "miou": (None, 47.3), "mask_rcnn": (47.0, 42.5),
    },
    "pvt-v2-b4": {
        "params": 62.6, "gmacs": 10.1, "top1": 83.6, "box_ap": 46.1, "miou": (None, 47.9), "mask_rcnn": (47.5, 42.7),
    },
    "pvt-v2-b5": {
        "params": 82.0, "gmacs": 11.8, "top1": 83.8, "box_ap": 46.2, "miou": (None, 48.7), "mask_rcnn": (47.4, 42.5),
    },
}  # fmt: skip

# The configuration fields that make a model one of the released ones: everything that shapes its weights or its
# numerics. (image_size matters only to v1, whose position embeddings are stored for it.)
IDENTITY_FIELDS = (
    "pvt_version",
    "linear_attention",
    "num_channels",
    "hidden_sizes",
    "depths",
    "mlp_ratios",
    "sr_ratios",
    "patch_sizes",
    "strides",
    "image_size",
    "num_attention_heads",
    "qkv_bias",
    "hidden_act",
    "layer_norm_eps",
    "embedding_layer_norm_eps",
)


def normalize_preset_name(name: str) -> str:
    """`pvt_v2_b2`, `PVT-V2-B2` and `org/pvt-v2-b2` all name the preset `pvt-v2-b2`."""
    if not isinstance(name, str):
        raise TypeError(
            f"A preset name must be a string such as 'pvt-v2-b2', got {name!r}; known presets: {', '.join(PRESETS)}."
        )
    return name.rsplit("/", 1)[-1].lower().replace("_", "-")


def preset_differences(fields: Mapping[str, Any], preset: str, source: str = "given") -> list[str]:
    """`field: <source> X, <preset> Y` for each identity field in `fields` whose value differs from the preset's.

    Fields absent from `fields` are not compared, so a checkpoint's tensors (which cannot show attention heads) are
    matched on what they show; a whole configuration is matched on everything (see `preset_name`).
    """
    from .configuration_hf_pvt import HfPvtConfig

    reference = HfPvtConfig.from_preset(preset)
    differences = []
    for name in IDENTITY_FIELDS:
        if name not in fields or (name == "image_size" and reference.pvt_version != 1):
            continue
        given, expected = fields[name], getattr(reference, name)
        if _as_list(given) != _as_list(expected):
            differences.append(f"{name}: {source} {given}, {preset} {expected}")
    return differences


def preset_name(config: Any) -> str | None:
    """The released model whose architecture `config` (an `HfPvtConfig` or its dict) has exactly, else None."""
    from .configuration_hf_pvt import HfPvtConfig

    if isinstance(config, Mapping):
        try:  # fields a dict leaves out take their defaults, as when the configuration is loaded
            config = HfPvtConfig(**{name: config[name] for name in IDENTITY_FIELDS if name in config})
        except (TypeError, ValueError):
            return None
    fields = {name: getattr(config, name) for name in IDENTITY_FIELDS}
    return next((name for name in PRESETS if not preset_differences(fields, name)), None)


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


__all__ = [
    "CITATIONS",
    "IDENTITY_FIELDS",
    "PAPERS",
    "PRESETS",
    "RESULTS",
    "normalize_preset_name",
    "preset_differences",
    "preset_name",
]
