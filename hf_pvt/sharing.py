"""Share models built on hf_pvt through the Hugging Face Hub: Hub-ready folders, model cards, one-commit uploads.

hf_pvt's own models (`HfPvtForImageClassification`, `HfPvtForSemanticSegmentation`, ...) carry their code whenever
they are saved. Transformers' heads with an hf_pvt backbone (UperNet, the DETR family, RT-DETR, Mask2Former, ...)
are saved by Transformers' code, which writes no code for a nested backbone, so their folders need one more step:

    hf_pvt.save_for_hub(model, folder, image_processor=processor)   # save_pretrained + make_hub_ready
    hf_pvt.make_hub_ready(folder)                                   # for a folder already saved (Trainer, ...)
    hf_pvt.push_to_hub(folder, "your-name/your-model")              # make_hub_ready + one upload commit

`make_hub_ready` copies `hub_hf_pvt.py` and the hf_pvt modules it imports next to the weights and points the
folder's `auto_map` at it (see `hub_hf_pvt` for how that loads), makes sure an hf_pvt image processor names its code
too, and writes a model card. The same three calls work for hf_pvt's own models.

Why not plain `save_pretrained`: `UperNetForSemanticSegmentation.save_pretrained` is Transformers' code, which
writes code only for configuration classes marked for export. Marking Transformers' `UperNetConfig` would make every
UperNet folder, whatever its backbone, carry hf_pvt's code, and hf_pvt does not patch Transformers' methods.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import transformers
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .configuration_hf_pvt import AUTO_MAP, PRESETS, HfPvtConfig

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
MODEL_CARD_FILE = "README.md"
# The module a head's auto_map names (see hub_hf_pvt.py); it imports the configuration, model and image processor.
HUB_MODULE = "hub_hf_pvt"
# Cards carrying this line were written by hf_pvt from the folder alone; push_to_hub rewrites them with the
# repository id. Any other README.md is the author's and is never touched.
CARD_MARKER = (
    "<!-- Written by hf_pvt from the folder's files; hf_pvt.push_to_hub rewrites it while this line stays. -->"
)

# The Auto class and pipeline task of each kind of head, in the order a model class is looked up.
_TASKS = (
    ("AutoModelForObjectDetection", "object-detection"),
    ("AutoModelForSemanticSegmentation", "image-segmentation"),
    ("AutoModelForUniversalSegmentation", "image-segmentation"),
    ("AutoModelForInstanceSegmentation", "image-segmentation"),
    ("AutoModelForDepthEstimation", "depth-estimation"),
    ("AutoModelForImageClassification", "image-classification"),
    ("AutoBackbone", "image-feature-extraction"),
    ("AutoModel", "image-feature-extraction"),
)
_ARCHITECTURE_FIELDS = (
    "pvt_version",
    "linear_attention",
    "hidden_sizes",
    "depths",
    "mlp_ratios",
    "num_attention_heads",
    "sr_ratios",
)
_PAPERS = {1: "https://arxiv.org/abs/2102.12122", 2: "https://arxiv.org/abs/2106.13797"}
_CITATIONS = {
    1: "@inproceedings{wang2021pvt,\n  title = {Pyramid Vision Transformer: A Versatile Backbone for Dense "
    "Prediction without Convolutions},\n  author = {Wang, Wenhai and Xie, Enze and Li, Xiang and Fan, Deng-Ping "
    "and Song, Kaitao and Liang, Ding and Lu, Tong and Luo, Ping and Shao, Ling},\n  booktitle = {ICCV},\n  "
    "year = {2021}\n}",
    2: "@article{wang2022pvtv2,\n  title = {PVT v2: Improved Baselines with Pyramid Vision Transformer},\n  "
    "author = {Wang, Wenhai and Xie, Enze and Li, Xiang and Fan, Deng-Ping and Song, Kaitao and Liang, Ding and "
    "Lu, Tong and Luo, Ping and Shao, Ling},\n  journal = {Computational Visual Media},\n  year = {2022}\n}",
}


class HubUploadError(OSError):
    """An upload that did not happen (offline mode, no network, refused credentials); the local folder is intact."""


# ------------------------------------------------------------------------------------------------ saving


def save_for_hub(
    model: transformers.PreTrainedModel,
    save_directory: str | os.PathLike,
    image_processor: Any = None,
    *,
    repo_id: str | None = None,
    **save_kwargs: Any,
) -> Path:
    """Save `model` (and `image_processor`) into a folder that loads anywhere with the plain Auto classes.

    For a Transformers head on an hf_pvt backbone this is `save_pretrained` followed by `make_hub_ready`: the folder
    then loads with hf_pvt imported, and with `trust_remote_code=True` where hf_pvt is not installed. `repo_id`
    only names the repository in the model card's examples. `save_kwargs` go to `model.save_pretrained`.
    Returns the folder.
    """
    if not isinstance(model, transformers.PreTrainedModel):
        raise TypeError(
            f"save_for_hub saves a Transformers model (a PreTrainedModel), got {type(model).__name__}; "
            "use save_pretrained on other objects."
        )
    _check_hf_pvt_inside(model.config.to_dict(), where=f"{type(model).__name__}'s configuration")
    folder = Path(save_directory)
    model.save_pretrained(folder, **save_kwargs)
    if image_processor is not None:
        image_processor.save_pretrained(folder)
    make_hub_ready(folder, repo_id=repo_id, rewrite_model_card=True)
    return folder


def make_hub_ready(
    folder: str | os.PathLike, *, repo_id: str | None = None, rewrite_model_card: bool = False
) -> list[str]:
    """Make a saved folder with an hf_pvt model, or a head on an hf_pvt backbone, loadable where hf_pvt is not
    installed (`trust_remote_code=True`), and give it a model card.

    Adds the code modules and `auto_map` entries the folder lacks and writes `README.md` if there is none (or, with
    `rewrite_model_card`, replaces a card hf_pvt wrote; a card written by anyone else is kept). Running it again
    changes nothing but refreshes the code to this hf_pvt's. Returns the names of the files written.
    """
    folder = Path(folder)
    config = _read_json(folder / CONFIG_FILE, what="model configuration", hint="save the model there first")
    model_type = config.get("model_type")
    auto_map = dict(config.get("auto_map") or {})
    if model_type == HfPvtConfig.model_type:
        wanted = {**AUTO_MAP, **auto_map}
    else:
        _check_hf_pvt_inside(config, where=f"{folder / CONFIG_FILE}")
        head_config = _head_config_name(model_type, folder)
        current = auto_map.get("AutoConfig")
        if current is not None and not current.startswith(f"{HUB_MODULE}."):
            raise ValueError(
                f"{folder / CONFIG_FILE} already maps AutoConfig to {current!r}, code that is not hf_pvt's; "
                "hf_pvt leaves it alone. Remove that auto_map entry to let hf_pvt's code load the backbone."
            )
        wanted = {**auto_map, "AutoConfig": f"{HUB_MODULE}.{head_config}"}

    written = []
    if wanted != auto_map:
        config["auto_map"] = wanted
        _write_json(folder / CONFIG_FILE, config)
        written.append(CONFIG_FILE)
    modules = [reference.split(".")[0] for reference in wanted.values()]

    processor_path = folder / PREPROCESSOR_FILE
    if processor_path.is_file():
        processor = _read_json(processor_path, what="image processor configuration", hint="save it again")
        if processor.get("image_processor_type") == "HfPvtImageProcessor":
            processor_map = {"AutoImageProcessor": AUTO_MAP["AutoImageProcessor"], **(processor.get("auto_map") or {})}
            if processor_map != processor.get("auto_map"):
                processor["auto_map"] = processor_map
                _write_json(processor_path, processor)
                written.append(PREPROCESSOR_FILE)
            modules.append(processor_map["AutoImageProcessor"].split(".")[0])

    written += _copy_code(modules, folder)
    card_path = folder / MODEL_CARD_FILE
    if not card_path.exists() or (rewrite_model_card and _card_is_ours(card_path)):
        card_path.write_text(render_model_card(folder, repo_id=repo_id))
        written.append(MODEL_CARD_FILE)
    return written


def _copy_code(modules: list[str], folder: Path) -> list[str]:
    """Copy the named hf_pvt modules and every module they import relatively (what Transformers will load)."""
    files: list[Path] = []
    for module in dict.fromkeys(modules):
        source = PACKAGE_DIR / f"{module}.py"
        if not source.is_file():
            raise ValueError(
                f"auto_map names the module {module!r}, which is not part of hf_pvt ({PACKAGE_DIR}); "
                "hf_pvt can only supply its own code."
            )
        files += [source, *map(Path, get_relative_import_files(str(source)))]
    for source in dict.fromkeys(files):
        shutil.copyfile(source, folder / source.name)
    return sorted({source.name for source in files})


def _hf_pvt_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configuration dict with model_type hf_pvt nested in `config` (a backbone_config, at any depth)."""
    found = []
    for value in config.values():
        if isinstance(value, dict):
            if value.get("model_type") == HfPvtConfig.model_type:
                found.append(value)
            else:
                found += _hf_pvt_configs(value)
    return found


def _check_hf_pvt_inside(config: dict[str, Any], where: str) -> None:
    if config.get("model_type") != HfPvtConfig.model_type and not _hf_pvt_configs(config):
        raise ValueError(
            f"{where} (model_type {config.get('model_type')!r}) holds no hf_pvt configuration, so hf_pvt has nothing "
            "to add: save it with save_pretrained and share it with Transformers' push_to_hub."
        )


def _head_config_name(model_type: Any, folder: Path) -> str:
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{folder / CONFIG_FILE} has model_type {model_type!r}, which Transformers {transformers.__version__} "
            "does not know: hf_pvt can name only Transformers' own head configurations in auto_map."
        )
    config_class = CONFIG_MAPPING[model_type]
    if getattr(transformers, config_class.__name__, None) is not config_class:
        raise ValueError(
            f"{folder / CONFIG_FILE}: model_type {model_type!r} is registered by {config_class.__module__}, not by "
            "Transformers; give that configuration class its own code with register_for_auto_class()."
        )
    return config_class.__name__


def _read_json(path: Path, what: str, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {path.parent} holds no {what}; {hint}.")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {hint}.") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a JSON {type(content).__name__}, not an object; {hint}.")
    return content


def _write_json(path: Path, content: dict[str, Any]) -> None:
    # The layout Transformers writes, so that saving again shows no spurious difference.
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------ model card


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None) -> str:
    """A model card (README.md with Hub metadata) for a saved folder, from its files alone.

    It names the head, the Auto class and pipeline task, the backbone (its preset if it is one) and the parameter
    count, shows how to load the model with and without hf_pvt, and says that it knows nothing of the training.
    """
    folder = Path(folder)
    config = _read_json(folder / CONFIG_FILE, what="model configuration", hint="save the model there first")
    backbone = config if config.get("model_type") == HfPvtConfig.model_type else _hf_pvt_configs(config)[0]
    architecture = (config.get("architectures") or [None])[0]
    auto_class, task = _auto_class_and_task(architecture)
    preset = _preset_name(backbone)
    version = backbone.get("pvt_version", 2)
    family = "PVTv2" if version == 2 else "PVT v1"
    head = architecture or config.get("model_type")
    own_model = config.get("model_type") == HfPvtConfig.model_type
    repo = repo_id or f"path/to/{folder.resolve().name}"
    has_processor = (folder / PREPROCESSOR_FILE).is_file()
    labels = config.get("id2label") or {}

    metadata = {
        "library_name": "transformers",
        "pipeline_tag": task,
        "tags": list(dict.fromkeys(["vision", task, "hf_pvt", "pvt", f"pvt-v{version}", config["model_type"]])),
    }
    backbone_row = (
        f"hf_pvt `{preset}`"
        if preset
        else f"hf_pvt {family}, custom: widths {backbone.get('hidden_sizes')}, depths {backbone.get('depths')}"
    )
    stages = backbone.get("out_features") or backbone.get("stage_names")
    rows = [
        ("head", f"`{head}`" + ("" if own_model else " (Transformers)")),
        ("backbone", backbone_row),
    ]
    if stages and not own_model:
        rows.append(("backbone stages used", ", ".join(stages)))
    if labels:
        rows.append(("labels", str(len(labels))))
    parameters = _parameter_count(folder)
    if parameters:
        rows.append(("parameters", f"{parameters / 1e6:.2f}M"))

    imports = f"from transformers import {auto_class}" + (", pipeline" if has_processor else "")
    load = f'model = {auto_class}.from_pretrained("{repo}")'
    run = f'predict = pipeline("{task}", model="{repo}")' if has_processor else None
    with_hf_pvt = ["import hf_pvt  # registers hf_pvt with the Auto classes", imports, "", load]
    without = [imports, "", load.replace('")', '", trust_remote_code=True)')]
    if run:
        with_hf_pvt.append(run)
        without.append(run.replace('")', '", trust_remote_code=True)'))
    title = repo_id.rsplit("/", 1)[-1] if repo_id else folder.resolve().name
    subject = (
        f"hf_pvt's `{head}`"
        if own_model
        else f"Transformers' `{head}` on an hf_pvt {family} backbone ({preset or 'custom configuration'})"
    )
    lines = [
        "---",
        _yaml(metadata).rstrip(),
        "---",
        CARD_MARKER,
        "",
        f"# {title}",
        "",
        f"{subject}, saved with hf_pvt, the Pyramid Vision Transformer family ([PVT]({_PAPERS[1]}), "
        f"[PVTv2]({_PAPERS[2]})) for Transformers. This card was written from the folder's files alone: it does "
        "not know what the model was trained on or how well it does. Add the data, the training recipe and the "
        "results before relying on it.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "## How to use",
        "",
        "With the hf_pvt package installed:",
        "",
        "```python",
        *with_hf_pvt,
        "```",
        "",
        "Without hf_pvt: the repository carries hf_pvt's code, which Transformers runs with `trust_remote_code=True`:",
        "",
        "```python",
        *without,
        "```",
        "",
    ]
    if not has_processor:
        lines += ["No image processor was saved with the model: save one into the folder to use `pipeline()`.", ""]
    lines += ["## Citation", "", "```bibtex", _CITATIONS[version], "```", ""]
    return "\n".join(lines)


def _auto_class_and_task(architecture: str | None) -> tuple[str, str]:
    for auto_name, task in _TASKS:
        mapping = getattr(transformers, auto_name)._model_mapping
        names = {
            name
            for value in [*mapping._model_mapping.values(), *mapping._extra_content.values()]
            for name in (value if isinstance(value, (list, tuple)) else [value])
            for name in [name if isinstance(name, str) else name.__name__]
        }
        if architecture in names:
            return auto_name, task
    return "AutoModel", "image-feature-extraction"


def _preset_name(backbone: dict[str, Any]) -> str | None:
    """The released variant whose architecture `backbone` (a configuration dict) has, if any."""
    defaults = {field: getattr(HfPvtConfig(), field) for field in _ARCHITECTURE_FIELDS}
    for name, preset in PRESETS.items():
        fields = {**defaults, **preset}
        if all(_same(backbone.get(field, defaults[field]), fields[field]) for field in _ARCHITECTURE_FIELDS):
            return name
    return None


def _same(a: Any, b: Any) -> bool:
    return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b


def _parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():
                shape = weights.get_slice(key).get_shape()
                count = 1
                for side in shape:
                    count *= side
                total += count
    return total


def _yaml(metadata: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(metadata, sort_keys=False)


def _card_is_ours(path: Path) -> bool:
    return CARD_MARKER in path.read_text(errors="replace")


# ------------------------------------------------------------------------------------------------ pushing


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | bool | None = None,
    commit_message: str = "Upload model saved with hf_pvt",
    ignore_patterns: list[str] | None = None,
) -> str:
    """Upload a saved folder to the model repository `repo_id` in one commit, after `make_hub_ready`.

    Works for hf_pvt's own folders (the converter's, the examples') and for Transformers' heads on an hf_pvt
    backbone. Offline (`HF_HUB_OFFLINE=1`) it stops before touching anything; on any other failure (no network,
    refused credentials) it raises `HubUploadError`, and the local folder stays as it is. Returns the commit URL.
    """
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"repo_id {repo_id!r} is not a Hub repository id such as 'your-name/pvt-upernet': {error}"
        ) from error
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE}: save the model there before pushing it.")
    retry = f"hf upload {repo_id} {folder}"
    if huggingface_hub.is_offline_mode():
        raise HubUploadError(
            f"Not uploading {folder} to {repo_id}: HF_HUB_OFFLINE is set, so the Hub cannot be reached. The folder "
            f"is intact; unset HF_HUB_OFFLINE and push again, or upload it later with `{retry}`."
        )
    # Checked and completed before the repository is created; the card is written again once the Hub has said
    # which namespace a bare name belongs to.
    make_hub_ready(folder, repo_id=repo_id, rewrite_model_card=True)
    api = huggingface_hub.HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True).repo_id
        make_hub_ready(folder, repo_id=repo_id, rewrite_model_card=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=ignore_patterns,
        )
    except Exception as error:  # offline, refused connections, HTTP and authentication errors all end here
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubUploadError(
            f"Upload of {folder} to {repo_id} failed ({reason}). The folder is intact; check the network and "
            f"`hf auth login`, then push again or run `{retry}`."
        ) from error
    return str(getattr(commit, "commit_url", commit))


__all__ = [
    "CARD_MARKER",
    "HubUploadError",
    "make_hub_ready",
    "push_to_hub",
    "render_model_card",
    "save_for_hub",
]
