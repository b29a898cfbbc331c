"""Export an hf_pvt model to ONNX with dynamic batch, height and width, checked in ONNX Runtime.

    python -m hf_pvt.onnx_export my-pvt my-pvt.onnx                 # a folder saved with save_pretrained, or a Hub id
    python -m hf_pvt.onnx_export my-pvt backbone.onnx --task backbone

or from Python:

    from hf_pvt import export_onnx
    export_onnx(model, "model.onnx")
    session = onnxruntime.InferenceSession("model.onnx")
    (logits,) = session.run(None, {"pixel_values": pixel_values.numpy()})

The graph takes `pixel_values` of any batch size and any height and width the model accepts (at least
`model.min_input_size`), and returns the tensors of the model's output in order, named after its fields
(`logits`; a backbone's `feature_maps.0` ... `feature_maps.3`; the base model's `last_hidden_state`,
`pooler_output`, `feature_maps.*`). Needs the `onnx` extra: `pip install "hf_pvt[onnx]"`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

# Traced at a non-square size, batch 2: torch.export specialises dimensions of size 1 and would tie height to width
# if the example had them equal. Both are still multiples of 32, so every stage sees a regular map.
_EXAMPLE_SHAPE = (2, 224, 256)
_VERIFY_SHAPES = ((1, 224, 224), (3, 160, 288))


class _TensorOutputs(nn.Module):
    """The model with its output flattened to a tuple of tensors, which is what an ONNX graph returns."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.output_names: list[str] = []

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(pixel_values=pixel_values, return_dict=True)
        names, tensors = [], []
        for key, value in output.items():
            if isinstance(value, torch.Tensor):
                names.append(key)
                tensors.append(value)
            elif isinstance(value, (tuple, list)):
                names.extend(f"{key}.{index}" for index in range(len(value)))
                tensors.extend(value)
        self.output_names = names
        return tuple(tensors)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset_version: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export `model` (any hf_pvt model: classification, backbone, base model, segmentation) to the ONNX file `path`.

    The graph has a dynamic batch, height and width. With `verify=True` (needs `onnxruntime`) the file is run at
    two other sizes and its outputs compared with the model's; a difference above `atol` raises. The model is
    exported in eval mode, float32, on CPU (a copy is not made: move it back afterwards if needed). Returns the path.
    """
    from .modeling_hf_pvt import HfPvtPreTrainedModel

    if not isinstance(model, HfPvtPreTrainedModel):
        raise TypeError(
            f"export_onnx exports hf_pvt models, got {type(model).__name__}; load one with "
            "AutoModelForImageClassification.from_pretrained(...) or HfPvtForImageClassification."
        )
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as error:
        raise ImportError('ONNX export needs the onnx extra: pip install "hf_pvt[onnx]".') from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    wrapper = _TensorOutputs(model).eval()
    channels = model.config.num_channels
    batch, height, width = _EXAMPLE_SHAPE
    example = torch.randn(batch, channels, height, width)
    with torch.no_grad():
        wrapper(example)
    auto = torch.export.Dim.AUTO
    dynamic_shapes = {"pixel_values": {0: torch.export.Dim("batch", max=4096), 2: auto, 3: auto}}
    program = torch.onnx.export(
        wrapper, (example,), dynamo=True, input_names=["pixel_values"], output_names=wrapper.output_names,
        dynamic_shapes=dynamic_shapes, opset_version=opset_version, verbose=False,
    )  # fmt: skip
    program.save(str(path))
    if verify:
        verify_onnx(model, path, atol=atol)
    return path


def verify_onnx(model: nn.Module, path: str | os.PathLike, *, atol: float = 1e-4) -> float:
    """Run the ONNX file at a few sizes in ONNX Runtime and compare with `model`; return the largest difference."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError('Checking the export needs ONNX Runtime: pip install "hf_pvt[onnx]".') from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = _TensorOutputs(model.eval())
    worst = 0.0
    for batch, height, width in _VERIFY_SHAPES:
        pixel_values = torch.randn(batch, model.config.num_channels, height, width)
        with torch.no_grad():
            expected = wrapper(pixel_values)
        actual = session.run(None, {"pixel_values": pixel_values.numpy()})
        for name, ours, theirs in zip(wrapper.output_names, actual, expected):
            difference = (torch.from_numpy(ours) - theirs).abs().max().item()
            worst = max(worst, difference)
            if not difference <= atol:
                raise RuntimeError(
                    f"The ONNX model's {name} differs from the PyTorch model's by {difference:.2e} (> atol={atol}) "
                    f"at input {batch}x{height}x{width}; please report this with your torch and onnxruntime versions."
                )
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a Hub model id or a local folder saved with save_pretrained")
    parser.add_argument("output", type=Path, help="the .onnx file to write")
    parser.add_argument(
        "--task", choices=["classification", "backbone", "base", "segmentation"], default="classification",
        help="which model class to load (default: classification)",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    args = parser.parse_args(argv)

    from . import HfPvtBackbone, HfPvtForImageClassification, HfPvtForSemanticSegmentation, HfPvtModel

    model_class = {
        "classification": HfPvtForImageClassification,
        "backbone": HfPvtBackbone,
        "base": HfPvtModel,
        "segmentation": HfPvtForSemanticSegmentation,
    }[args.task]
    model = model_class.from_pretrained(args.model)
    path = export_onnx(model, args.output, opset_version=args.opset, verify=not args.no_verify)
    checked = "" if args.no_verify else ", checked in ONNX Runtime"
    print(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MiB; dynamic batch, height and width{checked}).")


if __name__ == "__main__":
    main()
