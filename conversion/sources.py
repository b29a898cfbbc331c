"""Reading checkpoints: the authors', timm's and Transformers' files and folders, into the authors' layout.

Everything a bad file can do is turned into a `ConversionError` that names the file, the problem and the fix:
empty, truncated or garbage files, pickles that call code, damaged folders, shards outside their folder,
tensors that are not dense floating-point numbers.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from hf_pvt import HfPvtConfig

from .layouts import TO_ORIGINAL, detect_layout, merge_key_value, rename_key

_WRAPPER_KEYS = ("model", "state_dict", "module")
_SUPPORTED_SOURCES = (
    "hf-pvt-convert reads the authors' checkpoints (.pth, classifiers, mmdet RetinaNet detectors, mmdet Mask R-CNN "
    "models and mmseg Semantic FPN segmenters), timm's "
    "pvt_v2 state dicts, .safetensors files and Transformers' 'pvt' / 'pvt_v2' folders"
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
    # A detector's or segmenter's own layers around its `backbone.` (mmdet's `neck.*`, `bbox_head.*`, ...), as named
    # in the checkpoint; the task decides whether they are converted or left out.
    detector: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: list[str] | None = None  # an mmdet checkpoint's meta["CLASSES"]
    # meta["CLASSES"] exactly as stored (whatever its type), for converters that check it themselves; None if absent.
    meta_classes: Any = None


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ConversionError(f"{path} is empty (0 bytes): the download or copy did not finish. Fetch it again.")


def _numpy_scalar_globals() -> list[Any]:
    """What numpy numbers in a checkpoint's metadata need (mmdet/mmcv record seeds and scores as numpy scalars):
    data-only reconstructors, allowed by their numpy 1 and numpy 2 names."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [np.dtype, (core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    allowed.append((core.multiarray.scalar, "numpy._core.multiarray.scalar"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in dtypes.__all__ if name.endswith("DType")]
    return allowed


def _torch_load(path: Path) -> Any:
    _check_not_empty(path)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
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
        reason = "unreadable pickle data" if "weights only load failed" in message.lower() else first_line(error)
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
            f"Could not read {path} as a safetensors file ({first_line(error)}). The file is truncated or not a "
            "safetensors file: download it again and compare its size."
        ) from error


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON ({first_line(error)}); the folder is damaged.") from error
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
        return _unwrap(_torch_load(folder / "pytorch_model.bin"), folder / "pytorch_model.bin", [])[0], config
    raise ConversionError(f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin.")


def _unwrap(checkpoint: Any, path: Path, notes: list[str]) -> tuple[dict[str, Any], list[str] | None, Any]:
    """The state dict inside a training snapshot (`{'model': ...}`) or a detector file (`{'state_dict': ...}`), the
    class names an mmdet/mmseg checkpoint records in `meta["CLASSES"]` (when they are a list of strings), and that
    entry as stored."""
    class_names, raw_classes = None, None
    while isinstance(checkpoint, dict) and not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        meta = checkpoint.get("meta")
        classes = meta.get("CLASSES") if isinstance(meta, dict) else None
        raw_classes = classes if classes is not None else raw_classes
        if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
            class_names = list(classes)
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
    return checkpoint, class_names, raw_classes


def _split_backbone(
    state_dict: dict[str, torch.Tensor], notes: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """Drop DDP's `module.` prefix and split a detector's (or segmenter's) `backbone.*` from its other layers.

    Returns the backbone's tensors without the prefix, the other layers' tensors, and the prefix removed."""
    prefix = ""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
        notes.append("removed the 'module.' prefix")
        prefix = "module."
    backbone = {key[len("backbone.") :]: value for key, value in state_dict.items() if key.startswith("backbone.")}
    if not backbone:
        return state_dict, {}, prefix
    notes.append("took the backbone's tensors under 'backbone.'")
    others = {key: value for key, value in state_dict.items() if not key.startswith("backbone.")}
    return backbone, others, prefix + "backbone."


def _check_entries(state_dict: dict[Any, Any], path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    """Refuse anything but string keys and dense floating-point tensors; unify mixed floating dtypes."""
    bad_keys = [key for key in state_dict if not isinstance(key, str)]
    if bad_keys:
        raise ConversionError(f"{path}: keys must be strings, found {bad_keys[:5]}. Give a plain state dict.")
    not_tensors = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"{path}: these entries are not tensors: {not_tensors[:10]}. Give a plain state dict.")
    not_dense = sorted(key for key, value in state_dict.items() if value.layout != torch.strided)
    # BatchNorm's step counter (MMSegmentation's decode heads) is the one integer a checkpoint may hold.
    counters = {key for key, value in state_dict.items() if _is_batch_counter(key, value)}
    not_float = sorted(
        f"{key} ({value.dtype})"
        for key, value in state_dict.items()
        if not value.dtype.is_floating_point and key not in counters
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
    dtypes = Counter(value.dtype for key, value in state_dict.items() if key not in counters)
    if len(dtypes) > 1:
        notes.append(f"cast tensors of mixed dtypes ({', '.join(map(str, dtypes))}) to torch.float32")
        state_dict = {key: value if key in counters else value.float() for key, value in state_dict.items()}
    return state_dict


def _is_batch_counter(key: str, value: torch.Tensor) -> bool:
    return key.endswith(".num_batches_tracked") and value.numel() == 1 and value.dtype in (torch.int64, torch.int32)


def load_source(path: str | Path) -> Source:
    """Load a checkpoint file or Transformers folder and rename it into the authors' layout."""
    path = Path(path)
    notes: list[str] = []
    config, class_names, meta_classes, detector, prefix = None, None, None, {}, ""
    if not path.exists():
        raise ConversionError(f"{path} does not exist.")
    if path.is_dir():
        state_dict, config = _read_transformers_folder(path)
    elif path.suffix == ".safetensors":
        state_dict = _load_safetensors(path)
    else:
        state_dict, class_names, meta_classes = _unwrap(_torch_load(path), path, notes)
    if not state_dict:
        raise ConversionError(f"{path} holds no tensors.")
    state_dict = _check_entries(state_dict, path, notes)
    if config is None:
        state_dict, detector, prefix = _split_backbone(state_dict, notes)

    keys = list(state_dict)
    layout = detect_layout(keys)
    if layout == "hf_pvt":
        # A state dict alone has no config.json, so from_pretrained cannot read it: say what can.
        raise ConversionError(
            f"{path} is already in hf_pvt's key layout (stages.*), so it needs no conversion, but a bare state dict "
            "holds no configuration. Build the model it was saved from and load it: model = "
            "HfPvtForImageClassification(HfPvtConfig.from_preset('pvt-v2-b2', num_labels=N)) (or that model's own "
            "class and config); model.load_state_dict(torch.load(path, weights_only=True)); then "
            "model.save_pretrained(folder)."
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
        tensors[new_key], origins[new_key] = tensor, [prefix + key]
    if layout.startswith("transformers"):
        tensors, origins, unpaired = merge_key_value(tensors, origins)
        if unpaired:
            raise ConversionError(
                f"{path}: attention key/value Linears without a matching partner (or of another shape): {unpaired}."
            )
    return Source(
        tensors=tensors,
        origins=origins,
        layout=layout,
        notes=notes,
        config=config,
        name=path.name,
        detector=detector,
        class_names=class_names,
        meta_classes=meta_classes,
    )
