"""Convert PVT / PVTv2 checkpoints into Hub-ready hf_pvt folders (safetensors, config, code, card).

    python -m conversion.convert pvt_v2_b2.pth out/pvt-v2-b2 [--variant pvt-v2-b2] [--verify cats.png]
    hf-pvt-convert pvt_v2_b2.pth out/pvt-v2-b2 --push-to-hub your-name/pvt-v2-b2

Sources: the authors' `.pth` files (legacy or zip torch format, raw or wrapped in `model` / `state_dict`,
with or without a `backbone.` prefix), timm's pvt_v2 state dicts, `.safetensors` files, and Transformers'
`pvt` / `pvt_v2` folders. Checkpoints are read with `torch.load(weights_only=True)` only. The variant is
read off the tensors; a `--variant` that disagrees with them is an error. Every source tensor must land
in exactly one model parameter and every parameter must be filled, or nothing is written. The folder
appears atomically: it is assembled next to the target and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import hf_pvt
from hf_pvt import HfPvtBackbone, HfPvtConfig, HfPvtForImageClassification, HfPvtImageProcessor
from hf_pvt.configuration_hf_pvt import PRESETS, normalize_preset_name

from .imagenet_labels import IMAGENET_1K_LABELS
from .layouts import ORIGINAL_TO_HF_PVT, TO_ORIGINAL, detect_layout, merge_key_value, rename_key
from .model_card import render_card
from .verify import verify_classifier

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
_WRAPPER_KEYS = ("model", "state_dict", "module")


class ConversionError(Exception):
    """A checkpoint that cannot be converted as asked; the message names the problem and the fix."""


@dataclass
class Source:
    """A loaded checkpoint: its tensors in the authors' layout and what is known about where they came from."""

    tensors: dict[str, torch.Tensor]
    origins: dict[str, list[str]]  # original-layout key -> the source keys it was built from
    layout: str
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None  # a Transformers folder's config.json


# --------------------------------------------------------------------------------------------- loading


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... by failure mode
        message = str(error)
        if "weights only load failed" in message.lower() or "unsupported global" in message.lower():
            first_line = next((line for line in message.splitlines() if "unsupported" in line.lower()), message[:300])
            raise ConversionError(
                f"Refused to load {path}: its pickle calls code that weights-only loading does not allow "
                f"({first_line.strip()}). A checkpoint holds only tensors and plain containers; do not load "
                "this file with weights_only=False unless you trust its author."
            ) from error
        raise ConversionError(
            f"Could not read {path} as a PyTorch checkpoint ({type(error).__name__}: {message.splitlines()[0]}). "
            "The file is truncated or not a checkpoint: download it again and compare its size."
        ) from error


def _read_transformers_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{folder} is a folder without config.json; give a Transformers model folder or a file.")
    config = json.loads(config_path.read_text())
    if config.get("model_type") not in ("pvt", "pvt_v2"):
        raise ConversionError(
            f"{folder}/config.json has model_type {config.get('model_type')!r}; only Transformers' 'pvt' and "
            "'pvt_v2' folders are converted (hf_pvt folders load directly with from_pretrained)."
        )
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        tensors = load_file(folder / "model.safetensors")
    elif index.is_file():
        tensors = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors.update(load_file(folder / shard))
    elif (folder / "pytorch_model.bin").is_file():
        tensors = _torch_load(folder / "pytorch_model.bin")
    else:
        raise ConversionError(f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin.")
    return tensors, config


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
        state_dict = load_file(path)
    else:
        state_dict = _strip_prefixes(_unwrap(_torch_load(path), path, notes), notes)
    not_tensors = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"{path}: these entries are not tensors: {not_tensors[:10]}. Give a plain state dict.")

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
    return Source(tensors=tensors, origins=origins, layout=layout, notes=notes, config=config)


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
        mlp_ratios.append(_as_ratio(int(fc1.shape[0]), width) if fc1 is not None else 4)
        sr = tensors.get(f"block{i}.0.attn.sr.weight")
        sr_kernels.append(int(sr.shape[-1]) if sr is not None else None)
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
        tokens = int(tensors["pos_embed1"].shape[1]) if "pos_embed1" in tensors else 0
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


# ------------------------------------------------------------------------------------------ conversion


@dataclass
class Conversion:
    model: HfPvtForImageClassification | HfPvtBackbone
    variant: str | None
    task: str
    layout: str
    notes: list[str]
    num_source_tensors: int


def _labels(num_labels: int, source_config: dict[str, Any] | None) -> dict[int, str]:
    given = (source_config or {}).get("id2label") or {}
    if len(given) == num_labels and not all(re.fullmatch(r"LABEL_\d+", str(v)) for v in given.values()):
        return {int(k): str(v) for k, v in given.items()}
    if num_labels == len(IMAGENET_1K_LABELS):
        return dict(enumerate(IMAGENET_1K_LABELS))
    return {i: f"LABEL_{i}" for i in range(num_labels)}


def build_config(
    source: Source, variant: str | None, num_heads: list[int] | None, task: str
) -> tuple[HfPvtConfig, str | None, str]:
    """The hf_pvt configuration for `source`, its variant name (None if custom) and the task it converts to."""
    architecture = detect_architecture(source.tensors)
    if variant is not None:
        variant = normalize_preset_name(variant)
        if variant not in PRESETS:
            raise ConversionError(f"Unknown variant {variant!r}; known: {', '.join(PRESETS)}.")
        problems = preset_disagreements(architecture, variant)
        if problems:
            raise ConversionError(
                f"The checkpoint is not {variant}: " + "; ".join(problems) + ". Drop --variant to convert what the "
                "tensors describe, or pick the right variant."
            )
    else:
        variant = match_preset(architecture)

    has_head = "head.weight" in source.tensors
    if task == "auto":
        task = "classification" if has_head else "backbone"
    if task == "classification" and not has_head:
        raise ConversionError(
            "The checkpoint has no classification head (head.weight); convert it with --task backbone."
        )

    source_config = source.config or {}
    if num_heads is None:
        num_heads = source_config.get("num_attention_heads")
    if num_heads is None:
        if variant is None and any(w % h for w, h in zip(architecture["hidden_sizes"], DEFAULT_NUM_HEADS)):
            raise ConversionError(
                f"Widths {architecture['hidden_sizes']} match no released variant and attention head counts "
                "cannot be read from the tensors: pass --num-heads, e.g. --num-heads 1,2,5,8."
            )
        num_heads = (
            list(PRESETS[variant].get("num_attention_heads", DEFAULT_NUM_HEADS)) if variant else DEFAULT_NUM_HEADS
        )
    kwargs = dict(architecture, num_attention_heads=list(num_heads))
    if architecture["pvt_version"] == 1:
        kwargs["strides"] = list(architecture["patch_sizes"])
    if task == "classification":
        id2label = _labels(int(source.tensors["head.weight"].shape[0]), source.config)
        kwargs.update(id2label=id2label, label2id={label: i for i, label in id2label.items()})
    kwargs["architectures"] = ["HfPvtForImageClassification" if task == "classification" else "HfPvtBackbone"]
    try:
        config = HfPvtConfig(**kwargs)
    except ValueError as error:
        raise ConversionError(f"The detected architecture is not a valid hf_pvt configuration: {error}") from error
    return config, variant, task


def convert(
    path: str | Path, variant: str | None = None, num_heads: list[int] | None = None, task: str = "auto"
) -> Conversion:
    """Load `path` and return the hf_pvt model holding its weights, accounting for every tensor."""
    source = load_source(path)
    config, variant, task = build_config(source, variant, num_heads, task)
    tensors, origins, notes = dict(source.tensors), dict(source.origins), list(source.notes)
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
    return Conversion(model, variant, task, source.layout, notes, num_source_tensors=len(source.origins))


def _v1_cls_only(key: str) -> bool:
    return key == "cls_token" or key.startswith("norm.")


# ------------------------------------------------------------------------------------------- writing


def _write_folder(conversion: Conversion, folder: Path, repo_id: str | None) -> None:
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
    (folder / "README.md").write_text(render_card(conversion.variant, conversion.model.config, repo_id=repo_id))
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", *REMOTE_CODE_FILES}
    absent = sorted(expected - {p.name for p in folder.iterdir()})
    if absent:
        raise ConversionError(f"The written folder lacks {absent}.")


def write_atomically(
    conversion: Conversion,
    output_dir: str | Path,
    overwrite: bool = False,
    repo_id: str | None = None,
    verify_image: str | Path | None = None,
) -> Path:
    """Write the Hub folder next to `output_dir`, optionally verify it, then rename it into place."""
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not overwrite:
        raise ConversionError(f"{output_dir} already exists; pass --overwrite to replace it.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    old = None
    try:
        _write_folder(conversion, staging, repo_id)
        if verify_image is not None:
            verify_folder(staging, conversion, verify_image)
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.{os.getpid()}.old")
            os.rename(output_dir, old)
        os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not output_dir.exists():
            os.rename(old, output_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return output_dir


def verify_folder(folder: Path, conversion: Conversion, image: str | Path) -> None:
    """Reload the written folder and compare its logits with the published ones; raise on a mismatch."""
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
        reason = str(error).splitlines()[0] if str(error) else ""
        raise ConversionError(
            f"Upload to {repo_id} failed ({type(error).__name__}: {reason}). "
            f"The converted folder is intact at {folder}; check the network and `hf auth login`, then upload it "
            f"with `hf upload {repo_id} {folder}`."
        ) from error
    return str(getattr(commit, "commit_url", commit))


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
        choices=("auto", "classification", "backbone"),
        default="auto",
        help="classification (needs a head) or backbone (drops head, and v1's cls token and final norm); "
        "auto: classification when the checkpoint has a head",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--verify", metavar="IMAGE", help="compare with the published logits (COCO two-cats image)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub repo in one commit")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if Path(args.output_dir).exists() and not args.overwrite:
            raise ConversionError(f"{args.output_dir} already exists; pass --overwrite to replace it.")
        conversion = convert(args.source, variant=args.variant, num_heads=args.num_heads, task=args.task)
        for note in conversion.notes:
            print(f"note: {note}")
        folder = write_atomically(
            conversion, args.output_dir, overwrite=args.overwrite, repo_id=args.push_to_hub, verify_image=args.verify
        )
        parameters = sum(p.numel() for p in conversion.model.parameters())
        print(
            f"converted {conversion.num_source_tensors} tensors ({conversion.layout} layout, "
            f"{conversion.variant or 'custom'} {conversion.task}, {parameters:,} parameters) "
            f"to {folder} in {time.perf_counter() - start:.1f}s"
        )
        if args.push_to_hub:
            print(f"uploaded: {push_to_hub(folder, args.push_to_hub, private=args.private)}")
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
