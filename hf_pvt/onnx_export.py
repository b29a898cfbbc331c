"""Export an hf_pvt model to ONNX with dynamic batch, height and width, checked in ONNX Runtime.

    python -m hf_pvt.onnx_export my-pvt my-pvt.onnx                 # a folder saved with save_pretrained, or a Hub id
    python -m hf_pvt.onnx_export my-pvt backbone.onnx --task backbone

or from Python:

    from hf_pvt import export_onnx
    export_onnx(model, "model.onnx")
    session = onnxruntime.InferenceSession("model.onnx")
    (logits,) = session.run(None, {"pixel_values": pixel_values.numpy()})

The graph takes `pixel_values` of any batch size and any height and width the model accepts (at least
`model.base_model.min_input_size`), and returns tensors named after the model's output fields:

- classification (`HfPvtForImageClassification`): `logits` (batch, num_labels);
- backbone (`HfPvtBackbone`): `feature_maps.0` ... one per `out_features` stage;
- base model (`HfPvtModel`): `last_hidden_state`, `pooler_output`, `feature_maps.0` ... `feature_maps.3`;
- Semantic FPN (`HfPvtForSemanticSegmentation`): `logits` (batch, num_labels, height / 4, width / 4);
- RetinaNet (`HfPvtForObjectDetection`): the head's raw outputs, one row per anchor of the five pyramid levels
  (strides 8 to 128), `logits` (batch, anchors, num_labels) and `pred_box_deltas` (batch, anchors, 4). The anchors
  and the levels' sizes depend on the input size alone and are not in the graph (the PyTorch model's `anchors` and
  `spatial_shapes` at that size, or `box_ops_hf_pvt.generate_anchors`); with them, `post_process_object_detection`
  decodes these outputs as it decodes the PyTorch model's.

Mask R-CNN (`HfPvtForInstanceSegmentation`) is refused: how many proposals and detections it returns depends on the
image, which a graph traced once cannot reproduce; export its encoder with `--task backbone`.

From the command line the task is the folder's own (`architectures` in its `config.json`); `--task backbone` or
`--task base` exports the encoder of any hf_pvt folder. A folder whose weights do not cover the model asked for is
refused, never exported with random weights. The file appears only once the export has passed the ONNX Runtime check:
a failed or interrupted export leaves nothing behind. Needs the `onnx` extra: `pip install "hf_pvt[onnx]"`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import numbers
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("hf_pvt.onnx_export")

# The model classes export_onnx accepts, the task name the command line gives each, and the output fields the graph
# returns (None: every tensor field). RetinaNet's anchors and image sizes are left out: they follow from the input's
# shape alone, and torch.onnx does not yet turn their construction into a graph that holds at other sizes.
EXPORTABLE = {
    "HfPvtForImageClassification": ("classification", None),
    "HfPvtBackbone": ("backbone", None),
    "HfPvtModel": ("base", None),
    "HfPvtForSemanticSegmentation": ("segmentation", None),
    "HfPvtForObjectDetection": ("detection", ("logits", "pred_box_deltas")),
}
TASKS = {task: name for name, (task, _) in EXPORTABLE.items()}
# Tasks that only need the encoder's weights, so any hf_pvt folder can give them.
ENCODER_TASKS = ("backbone", "base")
# Not exportable, and why: what a user should do instead.
REFUSED = {
    "HfPvtForInstanceSegmentation": (
        "Mask R-CNN's outputs depend on the image's content (how many proposals survive NMS, how many detections "
        "and masks there are), which a graph traced once cannot reproduce. Export its encoder instead: "
        "`--task backbone` (or `export_onnx(HfPvtBackbone.from_pretrained(folder), ...)`) and run the heads in PyTorch"
    ),
}
# The opsets torch.onnx's exporter writes (it has implementations from 18 on, and converts up to its maximum).
MIN_OPSET = 18
MAX_OPSET = 23
# Traced at a non-square size, batch 2: torch.export specialises dimensions of size 1 and would tie height to width
# if the example had them equal. Checked at other batch sizes and at sizes that are not multiples of 32.
_EXAMPLE_SHAPE = (2, 224, 256)
_VERIFY_SHAPES = ((1, 224, 224), (3, 160, 288), (1, 100, 132))


class OnnxVerificationError(RuntimeError):
    """The ONNX file does not compute what the PyTorch model computes (or ONNX Runtime cannot run it).

    `export_onnx` raises it after removing the file it wrote; please report it with your torch, onnxscript and
    onnxruntime versions."""


class _TensorOutputs(nn.Module):
    """The model with its output flattened to a tuple of tensors, which is what an ONNX graph returns."""

    def __init__(self, model: nn.Module, fields: tuple[str, ...] | None = None):
        super().__init__()
        self.model = model
        self.fields = fields
        self.output_names: list[str] = []

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(pixel_values=pixel_values, return_dict=True)
        names, tensors = [], []
        for key, value in output.items():
            if self.fields is not None and key not in self.fields:
                continue
            if isinstance(value, torch.Tensor):
                names.append(key)
                tensors.append(value)
            elif isinstance(value, (tuple, list)):
                names.extend(f"{key}.{index}" for index in range(len(value)))
                tensors.extend(value)
        self.output_names = names
        return tuple(tensors)


# ------------------------------------------------------------------------------------------------ checks


def _exportable_class(model: Any, function: str) -> str:
    """The name of the hf_pvt class `model` is exported as, or a TypeError/ValueError saying what is supported."""
    from .modeling_hf_pvt import HfPvtPreTrainedModel

    if not isinstance(model, HfPvtPreTrainedModel):
        raise TypeError(
            f"{function} exports hf_pvt models, got {type(model).__name__}; load one with "
            "AutoModelForImageClassification.from_pretrained(...) or HfPvtForImageClassification."
        )
    for cls in type(model).__mro__:
        if cls.__name__ in REFUSED:
            raise ValueError(f"{function} cannot export {type(model).__name__}: {REFUSED[cls.__name__]}.")
        if cls.__name__ in EXPORTABLE:
            return cls.__name__
    raise ValueError(
        f"{function} exports {', '.join(EXPORTABLE)}; {type(model).__name__} is none of them. Export its encoder "
        "with HfPvtBackbone or HfPvtModel loaded from the same folder."
    )


def _check_opset(opset_version: Any) -> int | None:
    if opset_version is None:
        return None
    if not isinstance(opset_version, numbers.Integral) or isinstance(opset_version, bool):
        raise TypeError(
            f"opset_version must be an integer from {MIN_OPSET} to {MAX_OPSET} (or None for the exporter's default), "
            f"got {opset_version!r} ({type(opset_version).__name__})."
        )
    if not MIN_OPSET <= opset_version <= MAX_OPSET:
        raise ValueError(
            f"opset_version {opset_version} is not one torch.onnx writes: choose {MIN_OPSET} to {MAX_OPSET} "
            "(None: the exporter's default); runtimes that need an older opset cannot run this exporter's graphs."
        )
    return int(opset_version)


def _check_atol(atol: Any) -> float:
    if not isinstance(atol, numbers.Real) or isinstance(atol, bool):
        raise TypeError(f"atol must be a number (the largest allowed difference), got {type(atol).__name__}.")
    if not (math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol must be a finite number >= 0 (e.g. 1e-4), got {atol!r}.")
    return float(atol)


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    return value


def _check_destination(path: Any) -> Path:
    """The ONNX file to write, as an absolute path; a TypeError/ValueError for a path that cannot be one."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path must be a str or os.PathLike naming the .onnx file to write, got {type(path).__name__}."
        )
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"path must be a str or os.PathLike of str, got {type(text).__name__}; decode it first.")
    if not text or "\0" in text:
        raise ValueError(f"path {text!r} names no file: give the .onnx file to write, e.g. 'model.onnx'.")
    target = Path(text).absolute()
    if text.endswith(("/", os.sep)) or target.name in ("", ".", "..") or target.is_dir():
        raise ValueError(
            f"path {text!r} is a folder: give the .onnx file to write in it, e.g. '{target / 'model.onnx'}'."
        )
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"path {text!r} cannot be created: {ancestor} is a file, not a folder.")
    return target


@contextlib.contextmanager
def _staged_file(target: Path) -> Iterator[tuple[Path, Any]]:
    """A scratch folder beside `target` to write into; `commit()` moves the file (and any external-data file) into
    place. Without it, leaving removes the scratch folder and any parent folder that was created for it, so a failed
    or interrupted export leaves nothing. Entering finds an unwritable destination before any export work."""
    created = []
    parent = target.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    committed = False
    scratch = None
    try:
        for folder in reversed(created):
            folder.mkdir()
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    except OSError as error:
        _remove_created(created)
        reason = error.strerror or str(error)
        raise type(error)(
            error.errno, f"cannot write the ONNX file {target} ({reason}); choose a folder you can write to",
            str(error.filename or target.parent),
        ) from error  # fmt: skip

    def commit() -> None:
        nonlocal committed
        mode = 0o666 & ~_umask()
        staged = scratch / target.name
        data = scratch / f"{target.name}.data"  # written only for graphs over 2 GB (external data)
        for path in (data, staged):
            if path.exists():
                os.chmod(path, mode)
        if data.exists():
            os.replace(data, target.parent / data.name)
        # os.replace swaps the name itself: a link at `target` is replaced by the new file, never written through.
        os.replace(staged, target)
        committed = True

    try:
        yield scratch / target.name, commit
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not committed:
            _remove_created(created)


def _remove_created(created: list[Path]) -> None:
    for folder in created:  # innermost first
        with contextlib.suppress(OSError):
            folder.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _float32_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode, float32, on CPU: the model itself (its train/eval mode restored afterwards) when it is
    already float32 on CPU, else a copy, so the caller's model is left as it was."""
    tensors = [*model.parameters(), *model.buffers()]
    ready = all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors)
    if ready:
        training = model.training
        try:
            yield model.eval()
        finally:
            model.train(training)
    else:
        yield copy.deepcopy(model).eval().float().cpu()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence what torch.onnx says on every export that is no news to an hf_pvt user: that torchvision (whose
    operators hf_pvt does not use) is not installed, and a deprecation inside torch's own pytree code."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _require(module: str, purpose: str) -> None:
    try:
        __import__(module)
    except ImportError as error:
        raise ImportError(f'{purpose} needs the onnx extra ({module}): pip install "hf_pvt[onnx]".') from error


def _shapes(model: nn.Module) -> tuple[tuple[int, int, int], tuple[tuple[int, int, int], ...]]:
    """The traced shape and the checked shapes, moved up in steps of 32 px for models that need larger inputs."""
    minimum = model.base_model.min_input_size
    grow = max(0, math.ceil((minimum - min(h for _, h, _ in _VERIFY_SHAPES)) / 32) * 32)
    batch, height, width = _EXAMPLE_SHAPE
    return (batch, height + grow, width + grow), tuple((b, h + grow, w + grow) for b, h, w in _VERIFY_SHAPES)


# ------------------------------------------------------------------------------------------------ export


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset_version: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export `model` (an hf_pvt classifier, backbone, base model, Semantic FPN or RetinaNet) to the ONNX file `path`.

    The graph has a dynamic batch, height and width (see the module's documentation for its outputs). With
    `verify=True` (needs `onnxruntime`) the file is run at three other sizes and its outputs compared with the
    model's; a difference above `atol` raises `OnnxVerificationError`. The file is written beside `path` and moved
    into place only once it has passed, so a failure leaves nothing (nor the missing folders it created); an existing
    file or link at `path` is replaced, never written through. `opset_version`: 18 to 23, or None for the exporter's
    default. The model is exported in eval mode, float32, on CPU, and left as it was. Returns the path.

    Every argument is checked before any work: TypeError/ValueError naming it.
    """
    name = _exportable_class(model, "export_onnx")
    opset_version = _check_opset(opset_version)
    verify = _check_flag("verify", verify)
    atol = _check_atol(atol)
    target = _check_destination(path)
    _require("onnxscript", "ONNX export")  # torch.onnx's exporter
    if verify:
        _require("onnxruntime", "Checking the export")
    with _staged_file(target) as (staged, commit), _float32_cpu(model) as work, _quiet_exporter():
        wrapper = _TensorOutputs(work, EXPORTABLE[name][1]).eval()
        (batch, height, width), checks = _shapes(work)
        example = torch.randn(batch, work.config.num_channels, height, width)
        with torch.no_grad():
            wrapper(example)
        logger.info(
            "Exporting %s (outputs %s) with dynamic batch, height and width: tracing at %dx%d ...",
            type(model).__name__, _summary(wrapper.output_names), height, width,
        )  # fmt: skip
        auto = torch.export.Dim.AUTO
        dynamic_shapes = {"pixel_values": {0: torch.export.Dim("batch", max=4096), 2: auto, 3: auto}}
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, input_names=["pixel_values"], output_names=wrapper.output_names,
            dynamic_shapes=dynamic_shapes, opset_version=opset_version, verbose=False,
        )  # fmt: skip
        program.save(str(staged))
        _check_written_opset(staged, opset_version, target)
        if verify:
            logger.info(
                "Checking the file in ONNX Runtime at %s ...", ", ".join("x".join(map(str, s)) for s in checks)
            )
            _verify(work, EXPORTABLE[name][1], staged, atol, checks, shown_as=target)
        commit()
    return target


def _summary(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 5 else f"{', '.join(names[:3])}, ... {names[-1]}"


def _check_written_opset(path: Path, opset_version: int | None, target: Path) -> None:
    if opset_version is None:
        return
    import onnx

    written = {entry.domain: entry.version for entry in onnx.load(str(path), load_external_data=False).opset_import}
    if written.get("", written.get("ai.onnx")) != opset_version:
        raise OnnxVerificationError(
            f"torch.onnx wrote opset {written.get('')} instead of the requested {opset_version}, so {target} was not "
            f"written; export with opset_version=None (the exporter's default, {MIN_OPSET}) or another opset."
        )


def verify_onnx(model: nn.Module, path: str | os.PathLike, *, atol: float = 1e-4) -> float:
    """Run the ONNX file at a few sizes in ONNX Runtime and compare with `model`; return the largest difference.

    Raises `OnnxVerificationError` when the file's outputs are not the model's (names, or values beyond `atol`) or
    ONNX Runtime cannot run it; TypeError/ValueError/FileNotFoundError for bad arguments. `model` is left as it was.
    """
    name = _exportable_class(model, "verify_onnx")
    atol = _check_atol(atol)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike naming an .onnx file, got {type(path).__name__}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file: give the .onnx file export_onnx wrote.")
    _require("onnxruntime", "Checking an ONNX file")
    with _float32_cpu(model) as work:
        return _verify(work, EXPORTABLE[name][1], path, atol, _shapes(work)[1], shown_as=path)


def _verify(
    model: nn.Module, fields: tuple[str, ...] | None, path: Path, atol: float, shapes: tuple, shown_as: Path
) -> float:
    import onnxruntime

    def failure(what: str, error: Exception) -> OnnxVerificationError:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return OnnxVerificationError(
            f"ONNX Runtime {what} {shown_as}: {reason[:300]}. Please report this with your torch, onnxscript and "
            "onnxruntime versions."
        )

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception classes: a file it cannot load
        raise failure("cannot load", error) from error
    wrapper = _TensorOutputs(model, fields).eval()
    file_names = [output.name for output in session.get_outputs()]
    worst = 0.0
    for batch, height, width in shapes:
        pixel_values = torch.randn(batch, model.config.num_channels, height, width)
        shape = "x".join(map(str, pixel_values.shape))
        with torch.no_grad():
            expected = wrapper(pixel_values)
        if file_names != wrapper.output_names:
            raise OnnxVerificationError(
                f"{shown_as} returns {file_names}, but the model returns {wrapper.output_names}: it was not exported "
                "from this model (or with another configuration)."
            )
        try:
            actual = session.run(None, {"pixel_values": pixel_values.numpy()})
        except Exception as error:  # noqa: BLE001 - onnxruntime's exception classes
            raise failure(f"failed at input {shape} running", error) from error
        for output_name, theirs, ours in zip(file_names, actual, expected):
            theirs = torch.from_numpy(theirs)
            if tuple(theirs.shape) != tuple(ours.shape):
                raise OnnxVerificationError(
                    f"The ONNX model's {output_name} has shape {tuple(theirs.shape)}, the PyTorch model's "
                    f"{tuple(ours.shape)}, at input {shape}; please report this."
                )
            difference = (theirs - ours).abs()
            difference[(theirs == ours) | (theirs.isnan() & ours.isnan())] = 0  # the same inf or NaN is no difference
            largest = difference.max().item() if difference.numel() else 0.0
            worst = max(worst, largest)
            if not largest <= atol:
                raise OnnxVerificationError(
                    f"The ONNX model's {output_name} differs from the PyTorch model's by {largest:.2e} "
                    f"(> atol={atol}) at input {shape}; please report this with your torch and "
                    "onnxruntime versions."
                )
    return worst


# ------------------------------------------------------------------------------------------------ command line


class _CommandError(Exception):
    """A refusal of the command line, printed as one `error:` line."""


def _read_config(source: str) -> tuple[dict[str, Any], str]:
    """The model's config.json as a dict, and the folder or Hub id to load the model from."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from transformers import PreTrainedConfig

    folder = Path(source).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise _CommandError(f"{source} is a file: give the folder saved with save_pretrained, or a Hub id.")
        if not (folder / "config.json").is_file():
            raise _CommandError(f"{folder} holds no config.json: save the model there with save_pretrained first.")
        source, where = str(folder), "it"
    else:
        try:
            validate_repo_id(source)
        except HFValidationError as error:
            raise _CommandError(
                f"{source} does not exist: give a folder saved with save_pretrained, or a Hub id such as "
                "'your-name/pvt-v2-b0'."
            ) from error
        where = "the Hub"
    try:
        config, _ = PreTrainedConfig.get_config_dict(source)
    except Exception as error:  # noqa: BLE001 - Hub, JSON and file errors: one line
        prefix = "" if where == "it" else f"{source} is not a local folder, and "
        raise _CommandError(
            f"{prefix}cannot read {source}'s configuration from {where}: {_first_line(error)}"
        ) from error
    if not isinstance(config, dict):
        raise _CommandError(f"{source}'s config.json holds no JSON object: save the model again.")
    return config, source


def _choose_task(config: dict[str, Any], source: str, task: str | None) -> str:
    model_type = config.get("model_type")
    if model_type != "hf_pvt":
        raise _CommandError(
            f"{source} holds a {model_type!r} model, not an hf_pvt one: this command exports hf_pvt's own models. "
            "For a Transformers head on an hf_pvt backbone, call torch.onnx.export on the loaded model."
        )
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    architecture = architecture if isinstance(architecture, str) else None
    if architecture in REFUSED:
        if task in ENCODER_TASKS:
            return task
        raise _CommandError(f"{source} holds {architecture}: {REFUSED[architecture]}.")
    own = EXPORTABLE[architecture][0] if architecture in EXPORTABLE else None
    if task is None:
        if own is None:
            raise _CommandError(
                f"{source} names no hf_pvt model class in config.json's architectures ({architectures!r}); "
                f"give the task with --task ({', '.join(TASKS)})."
            )
        return own
    if task not in ENCODER_TASKS and own is not None and task != own:
        raise _CommandError(
            f"{source} holds {architecture}, so --task {task} would export {TASKS[task]} with randomly initialised "
            f"head weights. Use --task {own} (the default for this folder), or --task backbone / base for its encoder."
        )
    return task


def _load(source: str, task: str) -> nn.Module:
    import transformers

    import hf_pvt

    model_class = getattr(hf_pvt, TASKS[task])
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # this command reports missing weights itself, as a refusal
    try:
        model, info = model_class.from_pretrained(source, output_loading_info=True)
    except Exception as error:  # noqa: BLE001 - weights that do not fit, unreadable files: one line
        raise _CommandError(f"cannot load {source} as {model_class.__name__}: {_first_line(error)}") from error
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(key[0] if isinstance(key, tuple) else key) for key in info.get("mismatched_keys") or [])
    if missing or mismatched:
        keys = ", ".join((missing + mismatched)[:3]) + (" ..." if len(missing) + len(mismatched) > 3 else "")
        raise _CommandError(
            f"{source} has no weights for {len(missing) + len(mismatched)} of {model_class.__name__}'s tensors "
            f"({keys}): the graph would compute with random weights. Export the task the folder was saved for "
            "(the default), or --task backbone / base."
        )
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hf_pvt.onnx_export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a Hub model id or a local folder saved with save_pretrained")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument(
        "--task", choices=list(TASKS), default=None,
        help="which model to export (default: the folder's own, from its config.json); backbone and base export "
        "the encoder of any hf_pvt folder",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, default=None, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default 18)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest difference the check allows (1e-4)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    return parser


def _run(args: argparse.Namespace) -> None:
    # Everything that can be checked without the model is checked first: arguments, the destination, the extras.
    _check_opset(args.opset)
    _check_atol(args.atol)
    target = _check_destination(args.output)
    with _staged_file(target):  # finds an unwritable destination now, and leaves nothing
        pass
    _require("onnxscript", "ONNX export")
    if not args.no_verify:
        _require("onnxruntime", "Checking the export")
    config, source = _read_config(args.model)
    task = _choose_task(config, source, args.task)
    print(f"Loading {source} as {TASKS[task]} ...", flush=True)
    model = _load(source, task)
    path = export_onnx(model, target, opset_version=args.opset, verify=not args.no_verify, atol=args.atol)
    checked = "" if args.no_verify else ", checked in ONNX Runtime"
    print(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MiB; dynamic batch, height and width{checked}).")


def main(argv: list[str] | None = None) -> int:
    """`python -m hf_pvt.onnx_export`: 0 on success; 1 after one `error:` line on stderr (130 when interrupted)."""
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as transformers_logging

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # the command reports its steps in its own lines
    try:
        _run(args)
        return 0
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        if isinstance(error, _CommandError):
            message = str(error)
        elif isinstance(error, OSError) and error.filename:
            message = f"{error.filename}: {error.strerror or _first_line(error)}"
        else:
            message = _first_line(error)
        print(f"error: {message}" + ("" if message.rstrip().endswith(".") else "."), file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        if bars:
            transformers_logging.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
