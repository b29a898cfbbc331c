"""Convert PVT / PVTv2 checkpoints into Hub-ready hf_pvt folders (safetensors, config, code, card).

    python -m hf_pvt.conversion pvt_v2_b2.pth out/pvt-v2-b2 [--variant pvt-v2-b2] [--verify cats.png]
    hf-pvt-convert pvt_v2_b2.pth out/pvt-v2-b2 --push-to-hub your-name/pvt-v2-b2
    hf-pvt-convert retinanet_pvt_v2_b2_fpn_1x_coco.pth out/retinanet-pvt-v2-b2
    hf-pvt-convert mask_rcnn_pvt_v2_b2_fpn_1x_coco.pth out/mask-rcnn-pvt-v2-b2
    hf-pvt-convert fpn_pvtv2_b2_ade20k_40k.pth out/semantic-fpn-pvt-v2-b2

Sources: the authors' `.pth` files (legacy or zip torch format, raw or wrapped in `model` / `state_dict`,
with or without a `backbone.` prefix), their MMDetection RetinaNet detectors (`backbone.` + `neck.` +
`bbox_head.`, converted to `HfPvtForObjectDetection`), their MMDetection Mask R-CNN models (`backbone.` + `neck.` +
`rpn_head.` + `roi_head.`, converted to `HfPvtForInstanceSegmentation` with the instance segmentation preprocessing),
their MMSegmentation Semantic FPN segmenters (`backbone.` +
`neck.` + `decode_head.`, BatchNorm running statistics included, converted to `HfPvtForSemanticSegmentation` with
the class names of the checkpoint's `meta` and the authors' test preprocessing), timm's pvt_v2 state dicts,
`.safetensors` files, and Transformers' `pvt` / `pvt_v2` folders. Checkpoints are read with
`torch.load(weights_only=True)` only. The variant is read off the tensors; a `--variant` that disagrees with them is
an error. Every source tensor must land in exactly one model parameter and every parameter must be filled, or nothing
is written. Tensors must be finite floating-point numbers (BatchNorm's integer step counters aside). The folder
appears atomically: it is assembled next to the target and
renamed into place at the end; the leftovers of killed runs are removed by the next run.

Every argument is checked before any work. Any failure prints one `error:` line (and exits 1); `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging as transformers_logging

from hf_pvt.variants_hf_pvt import PRESETS, normalize_preset_name

from .convert import TASKS, check_num_heads, convert, push_to_hub, verify_folder, write_folder
from .output_folder import OutputFolder, OutputFolderError, clean_stale_entries, describe_os_error
from .sources import ConversionError, first_line

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
        raise ConversionError(f"--verify {path}: not a readable image ({first_line(error)}).") from error


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
        check_num_heads(args.num_heads, "--num-heads")
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
        help="classification (needs a head), backbone (drops head, and v1's cls token and final norm), "
        "detection (an mmdet RetinaNet: backbone + neck + bbox_head), instance-segmentation (an mmdet Mask R-CNN: "
        "backbone + neck + rpn_head + roi_head) or semantic-segmentation (an mmseg Semantic FPN: backbone + neck + "
        "decode_head); auto: detection for a RetinaNet, instance-segmentation for a Mask R-CNN, "
        "semantic-segmentation for a Semantic FPN, else classification when the checkpoint has a head, else backbone",
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


@contextmanager
def _quiet_progress_bars():
    """The command reports what it did in its own lines; Transformers' loading/saving bars only add noise."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """The `hf-pvt-convert` command: 0 on success; 1 after one `error:` line on stderr (130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt(), _quiet_progress_bars():
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
            message = f"{first_line(error)}. Nothing was written; rerun with --debug for the traceback."
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
