"""Convert PVT / PVTv2 checkpoints into Hub-ready hf_pvt folders (safetensors, config, code, card).

    python -m conversion.convert pvt_v2_b2.pth out/pvt-v2-b2 [--variant pvt-v2-b2] [--verify cats.png]
    hf-pvt-convert pvt_v2_b2.pth out/pvt-v2-b2 --push-to-hub your-name/pvt-v2-b2

Sources: the authors' `.pth` files (legacy or zip torch format, raw or wrapped in `model` / `state_dict`,
with or without a `backbone.` prefix), timm's pvt_v2 state dicts, `.safetensors` files, and Transformers'
`pvt` / `pvt_v2` folders. Checkpoints are read with `torch.load(weights_only=True)` only. The variant is
read off the tensors; a `--variant` that disagrees with them is an error. Every source tensor must land
in exactly one model parameter and every parameter must be filled, or nothing is written. Tensors must be
finite floating-point numbers. The folder appears atomically: it is assembled next to the target and
renamed into place at the end; the leftovers of killed runs are removed by the next run.

Every argument is checked before any work. Any failure prints one `error:` line (and exits 1); `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import hf_pvt
from hf_pvt import HfPvtBackbone, HfPvtConfig, HfPvtForImageClassification, HfPvtImageProcessor
from hf_pvt.configuration_hf_pvt import PRESETS, normalize_preset_name

from .imagenet_labels import IMAGENET_1K_LABELS
from .layouts import ORIGINAL_TO_HF_PVT, TO_ORIGINAL, detect_layout, merge_key_value, rename_key
from .model_card import render_card
from .output_folder import OutputFolder, OutputFolderError, clean_stale_entries, describe_os_error
from .verify import VerifyResult, verify_classifier

# The files `trust_remote_code` needs next to the weights (register_for_auto_class copies them on save).
REMOTE_CODE_FILES = ("configuration_hf_pvt.py", "modeling_hf_pvt.py", "image_processing_hf_pvt.py")
# Released models all use these head counts; heads leave no trace in the tensors' shapes.
DEFAULT_NUM_HEADS = [1, 2, 5, 8]
# Fields read off the tensors and compared with a preset; the others (heads) cannot be seen in shapes.
_COMPARED_FIELDS = (
    "pvt_version",
    "linear_attention",
    "num_channels",
    "hidden_sizes",
    "depths",
    "mlp_ratios",
    "sr_ratios",
    "patch_sizes",
    "image_size",
    "qkv_bias",
)
# A converted configuration states a released model only if all of these equal the preset's.
_ARCHITECTURE_FIELDS = (
    *_COMPARED_FIELDS,
    "num_attention_heads",
    "strides",
    "hidden_act",
    "layer_norm_eps",
    "embedding_layer_norm_eps",
)
_WRAPPER_KEYS = ("model", "state_dict", "module")
TASKS = ("auto", "classification", "backbone")
# How a model card names where the weights came from, when they are not known to be the authors' release.
LAYOUT_DESCRIPTIONS = {
    "original": "a checkpoint in the authors' layout",
    "transformers-pvt": "a Transformers `pvt` folder",
    "transformers-pvt_v2": "a Transformers `pvt_v2` folder",
    "timm-pvt_v2": "a timm `pvt_v2` state dict",
}
_SUPPORTED_SOURCES = (
    "hf-pvt-convert reads the authors' checkpoints (.pth), timm's pvt_v2 state dicts, .safetensors files and "
    "Transformers' 'pvt' / 'pvt_v2' folders"
)


class ConversionError(Exception):
    """A checkpoint or argument that cannot be converted as asked; the message names the problem and the fix."""


@dataclass
class Source:
    """A loaded checkpoint: its tensors in the authors' layout and what is known about where they came from."""

    tensors: dict[str, torch.Tensor]
    origins: dict[str, list[str]]  # original-layout key -> the source keys it was built from
    layout: str
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None  # a Transformers folder's config.json
    name: str = ""  # the file or folder name, for the model card (never the full local path)


# --------------------------------------------------------------------------------------------- loading


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ConversionError(f"{path} is empty (0 bytes): the download or copy did not finish. Fetch it again.")


def _torch_load(path: Path) -> Any:
    _check_not_empty(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... by failure mode
        message = str(error)
        # A pickle that names a global (a function or class to call) is refused by the weights-only
        # unpickler with "Unsupported global"; garbage bytes fail on some other opcode instead.
        global_line = next((line for line in message.splitlines() if "unsupported global" in line.lower()), None)
        if global_line is not None:
            raise ConversionError(
                f"Refused to load {path}: its pickle calls code that weights-only loading does not allow "
                f"({global_line.strip()}). A checkpoint holds only tensors and plain containers; do not load "
                "this file with weights_only=False unless you trust its author."
            ) from error
        reason = "unreadable pickle data" if "weights only load failed" in message.lower() else _first_line(error)
        raise ConversionError(
            f"Could not read {path} as a PyTorch checkpoint ({reason}). The file is truncated or not a checkpoint: "
            "download it again and compare its size."
        ) from error


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _check_not_empty(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as error:
        raise ConversionError(
            f"Could not read {path} as a safetensors file ({_first_line(error)}). The file is truncated or not a "
            "safetensors file: download it again and compare its size."
        ) from error


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON ({_first_line(error)}); the folder is damaged.") from error
    if not isinstance(value, dict):
        raise ConversionError(f"{path} holds a JSON {type(value).__name__}, not an object; the folder is damaged.")
    return value


def _shard_files(folder: Path, index_path: Path) -> list[Path]:
    """The shard files a `model.safetensors.index.json` names, each checked to lie inside `folder`."""
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{index_path} has no 'weight_map' object; the folder is damaged.")
    root = folder.resolve()
    shards, missing = [], []
    for name in sorted(set(weight_map.values()), key=str):
        # A shard is a file of this folder: an absolute path or `..` could read any file on the machine.
        resolved = (root / name).resolve() if isinstance(name, str) else None
        if resolved is None or Path(name).is_absolute() or resolved.parent != root:
            raise ConversionError(
                f"{index_path} names the shard {name!r}, which is not a file of {folder}. Refused: an index may "
                "only name files in its own folder."
            )
        (shards if resolved.is_file() else missing).append(resolved)
    if missing:
        raise ConversionError(
            f"{folder} lacks the shards {[p.name for p in missing]} named in {index_path.name}; download them too."
        )
    return shards


def _read_transformers_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(
            f"{folder} is a folder without config.json; give a Transformers model folder or a checkpoint file."
        )
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type == HfPvtConfig.model_type:
        raise ConversionError(
            f"{folder} is already an hf_pvt folder: load it with from_pretrained (e.g. "
            "AutoModelForImageClassification), no conversion needed."
        )
    if model_type not in ("pvt", "pvt_v2"):
        raise ConversionError(
            f"{config_path} has model_type {model_type!r}, which is not a PVT model. {_SUPPORTED_SOURCES}."
        )
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return _load_safetensors(folder / "model.safetensors"), config
    if index.is_file():
        tensors: dict[str, torch.Tensor] = {}
        for shard in _shard_files(folder, index):
            for key, value in _load_safetensors(shard).items():
                if key in tensors:
                    raise ConversionError(f"{folder}: the tensor {key!r} appears in more than one shard.")
                tensors[key] = value
        return tensors, config
    if (folder / "pytorch_model.bin").is_file():
        return _unwrap(_torch_load(folder / "pytorch_model.bin"), folder / "pytorch_model.bin", []), config
    raise ConversionError(f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin.")


def _unwrap(checkpoint: Any, path: Path, notes: list[str]) -> dict[str, Any]:
    """The state dict inside a training snapshot (`{'model': ...}`) or a detector file (`{'state_dict': ...}`)."""
    while isinstance(checkpoint, dict) and not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        wrapper = next((key for key in _WRAPPER_KEYS if isinstance(checkpoint.get(key), dict)), None)
        if wrapper is None:
            raise ConversionError(
                f"{path} holds no tensors at its top level and none of the wrappers {list(_WRAPPER_KEYS)} "
                f"(its keys: {sorted(map(str, checkpoint))[:10]}). Extract the model's state dict first."
            )
        notes.append(f"took the state dict under {wrapper!r}")
        checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a state dict of tensors.")
    return checkpoint


def _strip_prefixes(state_dict: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Drop DDP's `module.` and detectors' `backbone.` prefixes; a detector's own neck and heads are left out."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
        notes.append("removed the 'module.' prefix")
    backbone = {key[len("backbone.") :]: value for key, value in state_dict.items() if key.startswith("backbone.")}
    if backbone:
        others = sorted(key for key in state_dict if not key.startswith("backbone."))
        notes.append("took the tensors under 'backbone.'")
        if others:
            heads = sorted({key.split(".")[0] + "." for key in others})
            notes.append(
                f"left out {len(others)} tensors of the detector/segmenter around the backbone ({', '.join(heads)})"
            )
        state_dict = backbone
    return state_dict


def _check_entries(state_dict: dict[Any, Any], path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    """Refuse anything but string keys and dense floating-point tensors; unify mixed floating dtypes."""
    bad_keys = [key for key in state_dict if not isinstance(key, str)]
    if bad_keys:
        raise ConversionError(f"{path}: keys must be strings, found {bad_keys[:5]}. Give a plain state dict.")
    not_tensors = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"{path}: these entries are not tensors: {not_tensors[:10]}. Give a plain state dict.")
    not_dense = sorted(key for key, value in state_dict.items() if value.layout != torch.strided)
    not_float = sorted(
        f"{key} ({value.dtype})" for key, value in state_dict.items() if not value.dtype.is_floating_point
    )
    if not_dense or not_float:
        raise ConversionError(
            f"{path}: PVT weights are dense floating-point tensors, but "
            + "; ".join(
                part
                for part in (
                    f"{len(not_dense)} are sparse ({', '.join(not_dense[:5])})" if not_dense else "",
                    f"{len(not_float)} are not floating point ({', '.join(not_float[:5])})" if not_float else "",
                )
                if part
            )
            + ". The file is quantised, corrupted or not a model checkpoint."
        )
    dtypes = Counter(value.dtype for value in state_dict.values())
    if len(dtypes) > 1:
        notes.append(f"cast tensors of mixed dtypes ({', '.join(map(str, dtypes))}) to torch.float32")
        state_dict = {key: value.float() for key, value in state_dict.items()}
    return state_dict


def load_source(path: str | Path) -> Source:
    """Load a checkpoint file or Transformers folder and rename it into the authors' layout."""
    path = Path(path)
    notes: list[str] = []
    config = None
    if not path.exists():
        raise ConversionError(f"{path} does not exist.")
    if path.is_dir():
        state_dict, config = _read_transformers_folder(path)
    elif path.suffix == ".safetensors":
        state_dict = _load_safetensors(path)
    else:
        state_dict = _strip_prefixes(_unwrap(_torch_load(path), path, notes), notes)
    if not state_dict:
        raise ConversionError(f"{path} holds no tensors.")
    state_dict = _check_entries(state_dict, path, notes)

    keys = list(state_dict)
    layout = detect_layout(keys)
    if layout == "hf_pvt":
        raise ConversionError(
            f"{path} is already in hf_pvt's layout: load it with from_pretrained, no conversion needed."
        )
    if layout is None or layout not in TO_ORIGINAL:
        raise ConversionError(
            f"{path}: unrecognised checkpoint layout (first keys: {keys[:5]}). Expected the authors' "
            "(patch_embed1.*, block1.0.*), timm's pvt_v2 (patch_embed.*, stages.*) or a Transformers "
            "pvt/pvt_v2 folder."
        )
    if config is not None and layout != f"transformers-{config['model_type']}":
        raise ConversionError(
            f"{path}: config.json says {config['model_type']!r} but the weights are in {layout} layout."
        )

    tensors: dict[str, torch.Tensor] = {}
    origins: dict[str, list[str]] = {}
    for key, tensor in state_dict.items():
        new_key = rename_key(key, TO_ORIGINAL[layout])
        if new_key in tensors:
            raise ConversionError(f"{path}: {origins[new_key][0]!r} and {key!r} both map to {new_key!r}.")
        tensors[new_key], origins[new_key] = tensor, [key]
    if layout.startswith("transformers"):
        tensors, origins, unpaired = merge_key_value(tensors, origins)
        if unpaired:
            raise ConversionError(
                f"{path}: attention key/value Linears without a matching partner (or of another shape): {unpaired}."
            )
    return Source(tensors=tensors, origins=origins, layout=layout, notes=notes, config=config, name=path.name)


# ----------------------------------------------------------------------------------- variant detection


def _as_ratio(hidden: int, width: int) -> int | float:
    ratio = hidden / width
    return int(ratio) if ratio.is_integer() else ratio


def detect_architecture(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Read the configuration fields the tensors determine (see `_COMPARED_FIELDS`) off an original-layout dict."""
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
    reference = HfPvtConfig.from_preset(preset)
    problems = []
    for name in _COMPARED_FIELDS:
        if name not in architecture:
            continue
        expected = getattr(reference, name)
        if name == "image_size" and reference.pvt_version == 2:
            continue
        if architecture[name] != expected:
            problems.append(f"{name}: checkpoint {architecture[name]}, {preset} {expected}")
    return problems


def match_preset(architecture: dict[str, Any]) -> str | None:
    """The released variant whose configuration the tensors show, or None for a custom model."""
    return next((name for name in PRESETS if not preset_disagreements(architecture, name)), None)


def equals_preset(config: HfPvtConfig, variant: str) -> bool:
    """Whether `config` describes exactly the released `variant`: every architecture field, heads included."""
    reference = HfPvtConfig.from_preset(variant)
    return all(getattr(config, name) == getattr(reference, name) for name in _ARCHITECTURE_FIELDS)


def has_imagenet_head(config: HfPvtConfig) -> bool:
    labels = [config.id2label.get(i) for i in range(config.num_labels)]
    return labels == list(IMAGENET_1K_LABELS)


# ------------------------------------------------------------------------------------------ conversion


@dataclass
class Conversion:
    """A converted model and what may be said about it.

    `variant` names the released model whose architecture the configuration equals exactly (heads included),
    else None. `authors_weights` says whether the model card may claim the authors' published results: only
    for that exact architecture, from the authors' own layout (or confirmed by `--verify`), with the
    published head (ImageNet-1k for a classifier).
    """

    model: HfPvtForImageClassification | HfPvtBackbone
    variant: str | None
    task: str
    layout: str
    notes: list[str]
    num_source_tensors: int
    source_name: str = ""
    authors_weights: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def provenance(self) -> str | None:
        """None when the card may present the weights as the authors'; else where they came from, honestly."""
        if self.authors_weights:
            return None
        return f"`{self.source_name}`, {LAYOUT_DESCRIPTIONS.get(self.layout, self.layout)}"


def _labels(num_labels: int, source_config: dict[str, Any] | None) -> dict[int, str]:
    given = (source_config or {}).get("id2label") or {}
    if (
        isinstance(given, dict)
        and len(given) == num_labels
        and not all(re.fullmatch(r"LABEL_\d+", str(v)) for v in given.values())
    ):
        try:
            return {int(k): str(v) for k, v in given.items()}
        except ValueError:
            pass
    if num_labels == len(IMAGENET_1K_LABELS):
        return dict(enumerate(IMAGENET_1K_LABELS))
    return {i: f"LABEL_{i}" for i in range(num_labels)}


def _check_num_heads(num_heads: Any, origin: str) -> list[int]:
    if (
        not isinstance(num_heads, (list, tuple))
        or not num_heads
        or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in num_heads)
    ):
        raise ConversionError(f"{origin} must be positive integers, one per stage (e.g. 1,2,5,8); got {num_heads!r}.")
    return list(num_heads)


def build_config(
    source: Source, variant: str | None, num_heads: list[int] | None, task: str
) -> tuple[HfPvtConfig, str | None, str]:
    """The hf_pvt configuration for `source`, its variant name (None if custom) and the task it converts to.

    The variant is the released model whose configuration the result equals exactly: a checkpoint with the
    shapes of pvt-v2-b0 but other head counts is a custom model.
    """
    architecture = detect_architecture(source.tensors)
    requested = variant
    if requested is not None:
        requested = normalize_preset_name(requested)
        if requested not in PRESETS:
            raise ConversionError(f"Unknown variant {variant!r}; known: {', '.join(PRESETS)}.")
        problems = preset_disagreements(architecture, requested)
        if problems:
            raise ConversionError(
                f"The checkpoint is not {requested}: " + "; ".join(problems) + ". Drop --variant to convert what the "
                "tensors describe, or pick the right variant."
            )
        shapes_match = requested
    else:
        shapes_match = match_preset(architecture)

    has_head = "head.weight" in source.tensors
    if task == "auto":
        task = "classification" if has_head else "backbone"
    if task == "classification" and not has_head:
        raise ConversionError(
            "The checkpoint has no classification head (head.weight); convert it with --task backbone."
        )

    source_config = source.config or {}
    if num_heads is not None:
        num_heads = _check_num_heads(num_heads, "--num-heads")
    elif source_config.get("num_attention_heads") is not None:
        num_heads = _check_num_heads(source_config["num_attention_heads"], "config.json's num_attention_heads")
    elif shapes_match is not None:
        num_heads = list(PRESETS[shapes_match].get("num_attention_heads", DEFAULT_NUM_HEADS))
    elif any(w % h for w, h in zip(architecture["hidden_sizes"], DEFAULT_NUM_HEADS)):
        raise ConversionError(
            f"Widths {architecture['hidden_sizes']} match no released variant and attention head counts "
            "cannot be read from the tensors: pass --num-heads, e.g. --num-heads 1,2,5,8."
        )
    else:
        num_heads = list(DEFAULT_NUM_HEADS)
    kwargs = dict(architecture, num_attention_heads=num_heads)
    if architecture["pvt_version"] == 1:
        kwargs["strides"] = list(architecture["patch_sizes"])
    if task == "classification":
        id2label = _labels(int(source.tensors["head.weight"].shape[0]), source.config)
        kwargs.update(id2label=id2label, label2id={label: i for i, label in id2label.items()})
    kwargs["architectures"] = ["HfPvtForImageClassification" if task == "classification" else "HfPvtBackbone"]
    try:
        config = HfPvtConfig(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"The detected architecture is not a valid hf_pvt configuration: {error}") from error

    if shapes_match is not None and not equals_preset(config, shapes_match):
        preset_heads = HfPvtConfig.from_preset(shapes_match).num_attention_heads
        if requested is not None:
            raise ConversionError(
                f"--variant {requested} has attention heads {preset_heads}, but the conversion asks for "
                f"{config.num_attention_heads}. Drop --variant for a custom model, or drop --num-heads."
            )
        source.notes.append(
            f"the tensors have the shapes of {shapes_match}, but with attention heads {config.num_attention_heads} "
            f"(not {preset_heads}) this is a custom model"
        )
        shapes_match = None
    return config, shapes_match, task


def _finite_problems(tensors: dict[str, torch.Tensor], origins: dict[str, list[str]]) -> list[str]:
    problems = []
    for key, tensor in tensors.items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            problems.append(f"{'+'.join(origins[key])} ({bad} of {tensor.numel()} values)")
    return problems


def convert(
    path: str | Path,
    variant: str | None = None,
    num_heads: list[int] | None = None,
    task: str = "auto",
    allow_non_finite: bool = False,
) -> Conversion:
    """Load `path` and return the hf_pvt model holding its weights, accounting for every tensor.

    NaN or infinite weights are refused (a corrupted or diverged checkpoint); `allow_non_finite=True` converts
    them anyway and records a warning.
    """
    if task not in TASKS:
        raise ConversionError(f"task must be one of {', '.join(TASKS)}; got {task!r}.")
    source = load_source(path)
    config, variant, task = build_config(source, variant, num_heads, task)
    tensors, origins, notes, warnings = dict(source.tensors), dict(source.origins), list(source.notes), []
    non_finite = _finite_problems(tensors, origins)
    if non_finite:
        listed = ", ".join(non_finite[:10]) + (" ..." if len(non_finite) > 10 else "")
        if not allow_non_finite:
            raise ConversionError(
                f"{path}: {len(non_finite)} tensors hold NaN or infinite values: {listed}. The checkpoint is "
                "corrupted or its training diverged; nothing was written. Pass --allow-non-finite to convert it "
                "anyway."
            )
        warnings.append(f"converted {len(non_finite)} tensors holding NaN or infinite values: {listed}")
    if task == "backbone":
        # A backbone has no classifier, and v1's has no cls token or final norm (the authors' dense models).
        dropped = sorted(k for k in tensors if k.startswith("head.") or (config.pvt_version == 1 and _v1_cls_only(k)))
        if dropped:
            notes.append(f"left out the classification-only tensors {dropped}")
            for key in dropped:
                del tensors[key]

    renamed: dict[str, torch.Tensor] = {}
    renamed_origins: dict[str, list[str]] = {}
    for key, tensor in tensors.items():
        target = rename_key(key, ORIGINAL_TO_HF_PVT, num_stages=config.num_stages)
        if task == "backbone":
            target = target.removeprefix("pvt.")
        if target in renamed:
            raise ConversionError(
                f"Source tensors {renamed_origins[target]} and {origins[key]} both map to {target!r}."
            )
        # A private contiguous copy: safetensors refuses tensors that share storage.
        renamed[target] = tensor.detach().clone(memory_format=torch.contiguous_format)
        renamed_origins[target] = origins[key]

    model_class = HfPvtForImageClassification if task == "classification" else HfPvtBackbone
    with torch.device("meta"):
        model = model_class(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    unknown = sorted(f"{'+'.join(renamed_origins[k])} (-> {k})" for k in renamed if k not in expected)
    missing = sorted(k for k in expected if k not in renamed)
    misshaped = sorted(
        f"{'+'.join(renamed_origins[k])}: checkpoint {tuple(t.shape)}, model {expected[k]}"
        for k, t in renamed.items()
        if k in expected and tuple(t.shape) != expected[k]
    )
    if unknown or missing or misshaped:
        lines = [f"{path} does not fit {model_class.__name__} ({variant or 'custom'}):"]
        for title, items in (("unknown keys", unknown), ("missing keys", missing), ("mis-shaped keys", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title}: " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        lines.append("Nothing was written. Check --variant/--num-heads/--task, or that the file is a PVT checkpoint.")
        raise ConversionError("\n".join(lines))
    model.load_state_dict(renamed, strict=True, assign=True)
    model.eval()
    # The card may present the weights as the authors' only for their exact release, read from their own files.
    authors_weights = (
        variant is not None and source.layout == "original" and (task != "classification" or has_imagenet_head(config))
    )
    return Conversion(
        model,
        variant,
        task,
        source.layout,
        notes,
        num_source_tensors=len(source.origins),
        source_name=source.name,
        authors_weights=authors_weights,
        warnings=warnings,
    )


def _v1_cls_only(key: str) -> bool:
    return key == "cls_token" or key.startswith("norm.")


# ------------------------------------------------------------------------------------------- writing


def _write_card(conversion: Conversion, folder: Path, repo_id: str | None) -> None:
    card = render_card(
        conversion.variant,
        conversion.model.config,
        repo_id=repo_id,
        provenance=conversion.provenance,
        num_parameters=sum(p.numel() for p in conversion.model.parameters()),
    )
    (folder / "README.md").write_text(card, encoding="utf-8")


def write_folder(conversion: Conversion, folder: Path, repo_id: str | None = None) -> None:
    """Write the Hub files of `conversion` into the existing, empty `folder`."""
    conversion.model.save_pretrained(folder)
    if conversion.task == "classification":
        image_processor = HfPvtImageProcessor()
    else:
        image_processor = HfPvtImageProcessor.for_dense_prediction()
    image_processor.save_pretrained(folder)
    package_dir = Path(hf_pvt.__file__).parent
    for name in REMOTE_CODE_FILES:  # save_pretrained copies them; make sure, whatever the Transformers version
        if not (folder / name).is_file():
            shutil.copy2(package_dir / name, folder / name)
    _write_card(conversion, folder, repo_id)
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", *REMOTE_CODE_FILES}
    absent = sorted(expected - {p.name for p in folder.iterdir()})
    if absent:
        raise ConversionError(f"The written folder lacks {absent}.")


def verify_folder(folder: Path, conversion: Conversion, image: str | Path, repo_id: str | None = None) -> VerifyResult:
    """Reload the written folder and compare its logits with the published ones; raise on a mismatch.

    A match proves the weights are the authors' release whatever layout they came in, so the card is then
    rewritten to present them as such."""
    if conversion.task != "classification":
        raise ConversionError("--verify needs a classifier; this checkpoint converts to a backbone.")
    model = HfPvtForImageClassification.from_pretrained(folder)
    result = verify_classifier(model, image, conversion.variant)
    print(result.report())
    if result.matches is False:
        raise ConversionError(
            f"Verification failed for {conversion.variant}: the converted model does not reproduce the published "
            "logits (see above). Nothing was written."
        )
    if result.matches and not conversion.authors_weights and has_imagenet_head(conversion.model.config):
        conversion.authors_weights = True
        _write_card(conversion, folder, repo_id)
    return result


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` as one commit to the model repo `repo_id`; network failures leave the folder in place."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type="model", commit_message="Upload hf_pvt conversion"
        )
    except Exception as error:  # offline mode, refused connections, HTTP and auth errors all end here
        raise ConversionError(
            f"Upload to {repo_id} failed ({_first_line(error)}). "
            f"The converted folder is intact at {folder}; check the network and `hf auth login`, then upload it "
            f"with `hf upload {repo_id} {folder}`."
        ) from error
    return str(getattr(commit, "commit_url", commit))


# ------------------------------------------------------------------------------------ argument checks


def check_output_dir(output_dir: str | Path, overwrite: bool, source: str | Path | None = None) -> Path:
    """The absolute output path, after refusing every destination that would lose data or cannot be written."""
    output = Path(output_dir).expanduser().resolve()
    if source is not None:
        source_path = Path(source).expanduser().resolve()
        if output == source_path or output in source_path.parents:
            raise ConversionError(
                f"The output {output} is the source or contains it: writing there would replace the checkpoint "
                "being converted. Choose another output folder."
            )
    if output.exists():
        if not overwrite:
            raise ConversionError(f"{output} already exists; pass --overwrite to replace it.")
        if not output.is_dir():
            raise ConversionError(
                f"{output} is a file, not a folder; --overwrite replaces only a folder. Remove it or choose another "
                "output path."
            )
        contents = {entry.name for entry in output.iterdir()}
        if contents and "config.json" not in contents:
            raise ConversionError(
                f"{output} is not empty and holds no config.json, so it is not a model folder that --overwrite "
                "may replace. Remove it yourself or choose another output path."
            )
    ancestor = output.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(f"Cannot create {output}: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConversionError(f"Cannot create {output}: {ancestor} is not writable. Choose another output folder.")
    return output


def _check_image(path: str) -> None:
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except FileNotFoundError as error:
        raise ConversionError(f"--verify {path}: no such file.") from error
    except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise ConversionError(f"--verify {path}: not a readable image ({_first_line(error)}).") from error


def check_arguments(args: argparse.Namespace) -> Path:
    """Check every argument but the output folder before any work, so a typo costs nothing.

    Returns the absolute output path; `check_output_dir` checks it once the leftovers of killed runs (which
    may include an interrupted --overwrite's previous folder) are dealt with."""
    source = Path(args.source).expanduser()
    if not source.exists():
        raise ConversionError(f"{source} does not exist.")
    if not (source.is_file() or source.is_dir()):
        raise ConversionError(f"{source} is neither a file nor a folder.")
    if not os.access(source, os.R_OK):
        raise ConversionError(f"{source} is not readable.")
    if args.variant is not None and normalize_preset_name(args.variant) not in PRESETS:
        raise ConversionError(f"Unknown --variant {args.variant!r}; known: {', '.join(PRESETS)}.")
    if args.num_heads is not None:
        _check_num_heads(args.num_heads, "--num-heads")
    if args.verify is not None:
        if args.task not in ("auto", "classification"):
            raise ConversionError(f"--verify compares classifier logits; it cannot check a --task {args.task} model.")
        _check_image(args.verify)
    if args.push_to_hub is not None:
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(args.push_to_hub)
        except ValueError as error:  # HFValidationError
            raise ConversionError(f"--push-to-hub {args.push_to_hub!r} is not a valid Hub repo id: {error}") from error
    elif args.private:
        raise ConversionError("--private applies to the repo --push-to-hub creates; give --push-to-hub REPO_ID too.")
    return Path(args.output_dir).expanduser().resolve()


# ----------------------------------------------------------------------------------------------- CLI


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-pvt-convert", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("source", help="checkpoint (.pth/.pt/.bin/.safetensors) or Transformers pvt/pvt_v2 folder")
    parser.add_argument("output_dir", help="folder to create (must not exist, unless --overwrite)")
    parser.add_argument("--variant", help=f"expected variant, checked against the tensors: {', '.join(PRESETS)}")
    parser.add_argument("--num-heads", type=_int_list, help="attention heads per stage (default: the variant's)")
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="classification (needs a head) or backbone (drops head, and v1's cls token and final norm); "
        "auto: classification when the checkpoint has a head",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder (one holding a config.json)"
    )
    parser.add_argument("--verify", metavar="IMAGE", help="compare with the published logits (COCO two-cats image)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub repo in one commit")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument(
        "--allow-non-finite", action="store_true", help="convert a checkpoint holding NaN/Inf weights (with a warning)"
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


@contextmanager
def _sigterm_as_interrupt():
    """Let `kill <pid>` unwind like Ctrl-C, so the staging folder is removed (SIGKILL is handled by the next run)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    output = check_arguments(args)
    for note in clean_stale_entries(output.parent):
        print(f"note: {note}")
    check_output_dir(output, args.overwrite, args.source)
    # Creating the staging folder first finds an unwritable destination before the conversion's work.
    with OutputFolder(output, overwrite=args.overwrite) as staging:
        assert staging.path is not None
        conversion = convert(
            args.source,
            variant=args.variant,
            num_heads=args.num_heads,
            task=args.task,
            allow_non_finite=args.allow_non_finite,
        )
        for note in conversion.notes:
            print(f"note: {note}")
        for warning in conversion.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        write_folder(conversion, staging.path, repo_id=args.push_to_hub)
        if args.verify is not None:
            verify_folder(staging.path, conversion, args.verify, repo_id=args.push_to_hub)
        folder = staging.commit()
    parameters = sum(p.numel() for p in conversion.model.parameters())
    print(
        f"converted {conversion.num_source_tensors} tensors ({conversion.layout} layout, "
        f"{conversion.variant or 'custom'} {conversion.task}, {parameters:,} parameters) "
        f"to {folder} in {time.perf_counter() - start:.1f}s"
    )
    if not conversion.authors_weights:
        print(f"note: the model card names the source, {conversion.provenance}, and claims no published results")
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(folder, args.push_to_hub, private=args.private)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `hf-pvt-convert` command: 0 on success; 1 after one `error:` line on stderr (130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return _run(args)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        if isinstance(error, (ConversionError, OutputFolderError)):
            message = str(error)
        elif isinstance(error, OSError):
            message = f"{describe_os_error(error)}. Nothing was written."
        else:  # a failure no check anticipated: still one line, with the way to the details
            message = f"{_first_line(error)}. Nothing was written; rerun with --debug for the traceback."
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
