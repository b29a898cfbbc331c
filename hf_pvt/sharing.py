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

import contextlib
import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import transformers
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .configuration_hf_pvt import AUTO_MAP, HfPvtConfig
from .model_cards import CARD_MARKER, is_folder_card, render_folder_card

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
MODEL_CARD_FILE = "README.md"
# The module a head's auto_map names (see hub_hf_pvt.py); it imports the configuration, model and image processor.
HUB_MODULE = "hub_hf_pvt"
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
# Deeper than any configuration Transformers writes; deeper JSON is refused rather than walked.
_MAX_JSON_DEPTH = 64


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
    Every argument and the model's configuration are checked before anything is saved; a folder that did not exist is
    written beside its place and moved there once complete. Returns the folder.
    """
    if not isinstance(model, transformers.PreTrainedModel):
        raise TypeError(
            f"save_for_hub saves a Transformers model (a PreTrainedModel), got {type(model).__name__}; "
            "use save_pretrained on other objects."
        )
    folder = _check_path("save_directory", save_directory)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save_directory {folder} is a file, not a folder: choose a folder to save the model in.")
    if image_processor is not None and not callable(getattr(image_processor, "save_pretrained", None)):
        raise TypeError(
            f"image_processor must be an image processor (an object with save_pretrained, such as "
            f"HfPvtImageProcessor()), or None; got {type(image_processor).__name__}."
        )
    _check_repo_id(repo_id, optional=True)
    where = f"{type(model).__name__}'s configuration"
    config = model.config.to_dict()
    _check_hf_pvt_inside(config, where=where)
    _check_configuration(config, where=where)

    def save(destination: Path) -> None:
        model.save_pretrained(destination, **save_kwargs)
        if image_processor is not None:
            image_processor.save_pretrained(destination)
        make_hub_ready(destination, repo_id=repo_id, rewrite_model_card=True)

    if folder.is_dir():
        save(folder)
        return folder
    # A new folder is written under its own name in a scratch folder beside it (the card names the folder), then
    # moved into place: a failure leaves nothing, not even the parent folders it created.
    created = _missing_parents(folder)
    for parent in reversed(created):
        parent.mkdir()
    scratch, committed = None, False
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
        save(scratch / folder.name)
        os.replace(scratch / folder.name, folder)
        committed = True
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if not committed:
            for parent in created:
                with contextlib.suppress(OSError):
                    parent.rmdir()
    return folder


def make_hub_ready(
    folder: str | os.PathLike, *, repo_id: str | None = None, rewrite_model_card: bool = False
) -> list[str]:
    """Make a saved folder with an hf_pvt model, or a head on an hf_pvt backbone, loadable where hf_pvt is not
    installed (`trust_remote_code=True`), and give it a model card.

    Adds the code modules and `auto_map` entries the folder lacks and writes `README.md` if there is none (or, with
    `rewrite_model_card`, replaces a card hf_pvt wrote; a card written by anyone else is kept). Running it again
    changes nothing. Returns the names of hf_pvt's code files (now this hf_pvt's) and of the other files written.

    All or nothing: the folder's files and hf_pvt configurations are checked first (a ValueError/TypeError names what
    is wrong, and the folder is left as it was); then every file that changes is written to a temporary file in the
    folder and renamed over the old one, `config.json` last. A file that is a symbolic link (as in the Hugging Face
    cache, where files link to content-addressed blobs) is replaced by a regular file, never written through; a file
    whose content is already right is not touched.
    """
    folder = _check_path("folder", folder)
    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"folder {folder} is a file: give the folder the model was saved in.")
        raise FileNotFoundError(f"folder {folder} does not exist: save the model there first.")
    _check_repo_id(repo_id, optional=True)
    if not isinstance(rewrite_model_card, bool):
        raise TypeError(f"rewrite_model_card must be True or False, got {rewrite_model_card!r}.")

    config_path = folder / CONFIG_FILE
    config = _read_json(config_path, what="model configuration", hint="save the model there first")
    _check_configuration(config, where=str(config_path))
    auto_map = dict(config.get("auto_map") or {})
    model_type = config["model_type"]
    if model_type == HfPvtConfig.model_type:
        wanted = {**AUTO_MAP, **auto_map}
    else:
        _check_hf_pvt_inside(config, where=str(config_path))
        head_config = _head_config_name(model_type, folder)
        current = auto_map.get("AutoConfig")
        if current is not None and not (isinstance(current, str) and current.startswith(f"{HUB_MODULE}.")):
            raise ValueError(
                f"{config_path} already maps AutoConfig to {current!r}, code that is not hf_pvt's; "
                "hf_pvt leaves it alone. Remove that auto_map entry to let hf_pvt's code load the backbone."
            )
        wanted = {**auto_map, "AutoConfig": f"{HUB_MODULE}.{head_config}"}
    modules = _code_modules(wanted, folder, config_path)

    # Everything is decided (and checked) before anything is written: {file name: new content}.
    contents: dict[str, bytes] = {}
    processor_path = folder / PREPROCESSOR_FILE
    if processor_path.exists():
        processor = _read_json(processor_path, what="image processor configuration", hint="save it again")
        processor_auto_map = processor.get("auto_map")
        _check_auto_map(processor_auto_map, str(processor_path))
        if processor.get("image_processor_type") == "HfPvtImageProcessor":
            processor_map = {"AutoImageProcessor": AUTO_MAP["AutoImageProcessor"], **(processor_auto_map or {})}
            modules += _code_modules(
                {"AutoImageProcessor": processor_map["AutoImageProcessor"]}, folder, processor_path
            )
            if processor_map != processor_auto_map:
                contents[PREPROCESSOR_FILE] = _json_bytes({**processor, "auto_map": processor_map})

    code = _code_files(modules)
    card_path = folder / MODEL_CARD_FILE
    if card_path.is_dir() and not card_path.is_symlink():
        raise ValueError(f"{card_path} is a folder, where the model card goes: move it away.")
    if not card_path.exists() or (rewrite_model_card and is_folder_card(card_path.read_text(errors="replace"))):
        contents[MODEL_CARD_FILE] = render_model_card(folder, repo_id=repo_id).encode()
    if wanted != auto_map:
        contents[CONFIG_FILE] = _json_bytes({**config, "auto_map": wanted})  # last: it points at the code
    written = _write_files(folder, {**{name: source.read_bytes() for name, source in code.items()}, **contents})
    return sorted(code) + [name for name in contents if name in written]


def _check_path(name: str, value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str):
        raise TypeError(f"{name} must be a str or os.PathLike naming a folder, got {type(value).__name__}.")
    if not os.fspath(value) or "\0" in os.fspath(value):
        raise ValueError(f"{name} {os.fspath(value)!r} names no folder.")
    return Path(value)


def _check_repo_id(repo_id: Any, optional: bool = False) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id is None and optional:
        return
    if not isinstance(repo_id, str):
        raise TypeError(
            f"repo_id must be a str naming a Hub repository, such as 'your-name/pvt-upernet', got {repo_id!r}."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"repo_id {repo_id!r} is not a Hub repository id such as 'your-name/pvt-upernet': {error}"
        ) from error


def _check_configuration(config: dict[str, Any], where: str) -> None:
    """The fields hf_pvt reads from a saved configuration, and every hf_pvt configuration in it, as HfPvtConfig
    would check them when the folder is loaded: a TypeError/ValueError naming the field, before anything is written."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ValueError(
            f"{where}: model_type must be a string naming the model type (e.g. 'hf_pvt', 'upernet'), got "
            f"{model_type!r}; save the model again with save_pretrained."
        )
    architectures = config.get("architectures")
    if architectures is not None and not (
        isinstance(architectures, list) and all(isinstance(name, str) for name in architectures)
    ):
        raise TypeError(
            f"{where}: architectures must be a list of class names (e.g. ['HfPvtForImageClassification']), got "
            f"{architectures!r}."
        )
    _check_auto_map(config.get("auto_map"), where)
    configs = [config] if model_type == HfPvtConfig.model_type else _hf_pvt_configs(config)
    for found in configs:
        try:
            HfPvtConfig.from_dict(copy.deepcopy(found))
        except (ValueError, TypeError) as error:
            which = "" if found is config else " (its hf_pvt backbone configuration)"
            raise type(error)(
                f"{where}{which} is not a configuration hf_pvt can load: {error}. Fix the field, or save the model "
                "again."
            ) from error


def _check_auto_map(auto_map: Any, where: str) -> None:
    if auto_map is None:
        return
    if not isinstance(auto_map, dict):
        raise TypeError(
            f"{where}: auto_map must be a JSON object of Auto class -> 'module.Class', got {auto_map!r}; remove it "
            "to let hf_pvt write its own."
        )
    for key, value in auto_map.items():
        if isinstance(value, (list, tuple)):  # Transformers writes [slow, fast] for tokenizers, None for a missing one
            valid = any(isinstance(r, str) for r in value) and all(r is None or isinstance(r, str) for r in value)
        else:
            valid = isinstance(value, str)
        if not valid:
            raise TypeError(
                f"{where}: auto_map[{key!r}] must be 'module.Class' (or a list of them, as Transformers writes for "
                f"tokenizers), got {value!r}."
            )


def _code_modules(auto_map: dict[str, Any], folder: Path, where: Path) -> list[str]:
    """The hf_pvt modules `auto_map` names, to copy into `folder`. References to another repository
    (`repo--module.Class`) and to modules the folder itself holds (the author's code) are left alone."""
    modules = []
    for key, value in auto_map.items():
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if reference is None or "--" in reference:
                continue
            module = reference.split(".")[0]
            if (PACKAGE_DIR / f"{module}.py").is_file():
                modules.append(module)
            elif not (folder / f"{module}.py").is_file():
                raise ValueError(
                    f"{where}: auto_map[{key!r}] names {reference!r}, but neither hf_pvt nor {folder} has "
                    f"{module}.py. Remove the entry, or put the module in the folder."
                )
    return modules


def _code_files(modules: list[str]) -> dict[str, Path]:
    """{file name: hf_pvt source} for the modules and every module they import relatively (what Transformers
    loads with trust_remote_code)."""
    files: dict[str, Path] = {}
    for module in dict.fromkeys(modules):
        source = PACKAGE_DIR / f"{module}.py"
        for path in [source, *map(Path, get_relative_import_files(str(source)))]:
            files[path.name] = path
    return files


def _write_files(folder: Path, contents: dict[str, bytes]) -> set[str]:
    """Write the files whose content differs, all or nothing, in the order given; return the names written.

    Each new content goes to a temporary file in `folder` first; only when all are written are they renamed over
    the old files. A rename replaces a symbolic link itself, so the file it pointed to is never changed."""
    changed = {}
    for name, data in contents.items():
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            raise ValueError(f"{path} is a folder, where hf_pvt writes {name}: move it away.")
        if not path.is_file() or path.read_bytes() != data:
            changed[name] = data
    staged: list[tuple[Path, Path]] = []
    mode = 0o666 & ~_umask()
    try:
        for name, data in changed.items():
            handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            staged.append((Path(temporary), folder / name))
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.chmod(temporary, mode)
        for temporary, path in staged:
            os.replace(temporary, path)
    except OSError as error:
        for temporary, _ in staged:
            with contextlib.suppress(OSError):
                temporary.unlink()
        reason = error.strerror or str(error)
        raise type(error)(
            error.errno, f"cannot write into {folder} ({reason}); nothing was changed. Choose a folder you can "
            "write to, or copy the model into one", str(error.filename or folder),
        ) from error  # fmt: skip
    return set(changed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _missing_parents(path: Path) -> list[Path]:
    """The folders above `path` that do not exist, innermost first."""
    missing, parent = [], path.absolute().parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    return missing


def _hf_pvt_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configuration dict with model_type hf_pvt nested in `config` (a backbone_config, at any depth)."""
    found, pending = [], [config]
    while pending:
        for value in pending.pop().values():
            if isinstance(value, dict):
                if value.get("model_type") == HfPvtConfig.model_type:
                    found.append(value)
                else:
                    pending.append(value)
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
        if path.exists() or path.is_symlink():
            raise ValueError(f"{path} is not a readable file (a folder, or a link to nothing); {hint}.")
        raise FileNotFoundError(f"{path} does not exist: {path.parent} holds no {what}; {hint}.")
    try:
        text = path.read_text()
        content = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {hint}.") from error
    except RecursionError as error:
        raise ValueError(f"{path} is nested too deeply to be a {what}; {hint}.") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a JSON {type(content).__name__}, not an object; {hint}.")
    if _depth(content) > _MAX_JSON_DEPTH:
        raise ValueError(f"{path} is nested more than {_MAX_JSON_DEPTH} levels deep: not a {what}; {hint}.")
    return content


def _depth(value: Any) -> int:
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        if depth > _MAX_JSON_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _json_bytes(content: dict[str, Any]) -> bytes:
    # The layout Transformers writes, so that saving again shows no spurious difference.
    return (json.dumps(content, indent=2, sort_keys=True) + "\n").encode()


# ------------------------------------------------------------------------------------------------ model card


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None) -> str:
    """A model card (README.md with Hub metadata) for a saved folder, from its files alone (see
    `model_cards.render_folder_card`): the head, the Auto class and pipeline task, the backbone (its preset if it is
    one) and the parameter count, how to load the model with and without hf_pvt, and that it knows nothing of the
    training."""
    folder = _check_path("folder", folder)
    config = _read_json(folder / CONFIG_FILE, what="model configuration", hint="save the model there first")
    _check_configuration(config, where=str(folder / CONFIG_FILE))
    _check_hf_pvt_inside(config, where=str(folder / CONFIG_FILE))
    architecture = (config.get("architectures") or [None])[0]
    auto_class, task = _auto_class_and_task(architecture)
    labels = config.get("id2label")
    return render_folder_card(
        title=repo_id.rsplit("/", 1)[-1] if repo_id else folder.resolve().name,
        repo=repo_id or f"path/to/{folder.resolve().name}",
        architecture=architecture,
        model_type=config["model_type"],
        backbone=config if config.get("model_type") == HfPvtConfig.model_type else _hf_pvt_configs(config)[0],
        auto_class=auto_class,
        task=task,
        num_labels=len(labels) if isinstance(labels, dict) else 0,
        num_parameters=_parameter_count(folder),
        has_processor=(folder / PREPROCESSOR_FILE).is_file(),
    )


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


def _parameter_count(folder: Path) -> int:
    from safetensors import SafetensorError, safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                for key in weights.keys():
                    count = 1
                    for side in weights.get_slice(key).get_shape():
                        count *= side
                    total += count
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{path} is not a readable safetensors file ({str(error).strip() or type(error).__name__}): it may be "
                "truncated or damaged. Save the model again."
            ) from error
    return total


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

    folder = _check_path("folder", folder)
    _check_repo_id(repo_id)
    if not isinstance(private, bool):
        raise TypeError(f"private must be True or False, got {private!r}.")
    if token is not None and not isinstance(token, (str, bool)):
        raise TypeError(f"token must be a str (a Hub access token), a bool or None, got {type(token).__name__}.")
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise ValueError(f"commit_message must be a non-empty str, got {commit_message!r}.")
    patterns = [ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns
    if patterns is not None and not (
        isinstance(patterns, (list, tuple)) and all(isinstance(pattern, str) for pattern in patterns)
    ):
        raise TypeError(f"ignore_patterns must be a glob pattern or a list of them (str), got {ignore_patterns!r}.")
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
