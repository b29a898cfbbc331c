"""Exported graphs serve every input size: torch.export and ONNX with dynamic height and width.

Known faults of other ports this guards against: v1's position embeddings tied to one size, and
the linear variant's 7x7 adaptive pooling, which ONNX bakes in for the traced size when 7 does not divide it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from hf_pvt import HfPvtBackbone, HfPvtForImageClassification, HfPvtForSemanticSegmentation, export_onnx
from hf_pvt.modeling_hf_pvt import _pooling_matrix
from hf_pvt.onnx_export import OnnxVerificationError, verify_onnx
from hf_pvt.onnx_export import main as onnx_main

TRACED = (2, 3, 96, 128)
# torch.export specialises sizes 0 and 1, so an exported program refuses inputs whose smallest reduced map would
# be a single token (here below 64 px for v1); ONNX Runtime does not check that guard, and is correct there too.
OTHER_SIZES = [(1, 3, 100, 132), (2, 3, 224, 224), (1, 3, 72, 200)]
ONNX_SIZES = [*OTHER_SIZES, (1, 3, 32, 61)]


def dynamic_shapes() -> dict:
    auto = torch.export.Dim.AUTO
    return {"pixel_values": {0: torch.export.Dim("batch", max=64), 2: auto, 3: auto}}


@pytest.mark.parametrize("length", [1, 3, 7, 8, 13, 24, 56])
def test_pooling_matrices_average_the_adaptive_pooling_bins(length):
    feature_map = torch.randn(2, 3, length, length + 5)
    rows, columns = _pooling_matrix(length, 7, feature_map), _pooling_matrix(length + 5, 7, feature_map)
    pooled = torch.einsum("ih,bchw,jw->bcij", rows, feature_map, columns)
    torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(feature_map, 7), atol=1e-6, rtol=0)


@pytest.mark.parametrize("member", ["v1", "v2", "v2-linear"])
def test_torch_export_with_dynamic_sizes(member):
    torch.manual_seed(0)
    model = HfPvtForImageClassification(tiny_config(member)).eval()
    exported = torch.export.export(model, (torch.randn(*TRACED),), dynamic_shapes=dynamic_shapes())
    for shape in OTHER_SIZES:
        pixel_values = torch.randn(*shape)
        with torch.no_grad():
            expected = model(pixel_values).logits
        torch.testing.assert_close(exported.module()(pixel_values).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "member, head",
    [("v1", HfPvtForImageClassification), ("v2", HfPvtForSemanticSegmentation)],  # linear: the command-line test
)
def test_onnx_export_with_dynamic_sizes(member, head, tmp_path):
    """`hf_pvt.export_onnx` gives one graph for every batch size, height and width, in ONNX Runtime: v1's classifier
    (position embeddings resized, cls token) and v2's Semantic FPN (logits at a quarter of any input size)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = head(tiny_config(member, decoder_hidden_size=16, decoder_head_size=32)).eval()
    path = export_onnx(model, tmp_path / f"{member}.onnx", verify=False)
    session = onnxruntime.InferenceSession(str(path))
    assert [output.name for output in session.get_outputs()] == ["logits"]
    for shape in ONNX_SIZES:
        pixel_values = torch.randn(*shape)
        with torch.no_grad():
            expected = model(pixel_values).logits
        (logits,) = session.run(None, {"pixel_values": pixel_values.numpy()})
        if head is HfPvtForSemanticSegmentation:
            assert logits.shape == (shape[0], 7, -(-shape[2] // 4), -(-shape[3] // 4))
        torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-5, rtol=0)


def test_export_onnx_command_line_checks_the_file(tmp_path, capsys):
    """`python -m hf_pvt.onnx_export FOLDER FILE` on a linear-variant backbone folder: named outputs, checked in
    ONNX Runtime (at 160x288 too, where 7 divides no stage's map); the check fails loudly once the file no longer
    matches the model."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    config = tiny_config("v2-linear", out_features=["stage1", "stage2", "stage3", "stage4"])
    HfPvtBackbone(config).save_pretrained(tmp_path / "model")
    assert onnx_main([str(tmp_path / "model"), str(tmp_path / "backbone.onnx")]) == 0  # the folder's own task
    assert "checked in ONNX Runtime" in capsys.readouterr().out
    backbone = HfPvtBackbone.from_pretrained(tmp_path / "model")
    assert verify_onnx(backbone, tmp_path / "backbone.onnx") < 1e-5
    with torch.no_grad():
        backbone.stages[3].norm.bias.add_(1.0)
    with pytest.raises(OnnxVerificationError, match="feature_maps.3 differs"):
        verify_onnx(backbone, tmp_path / "backbone.onnx")


def test_export_onnx_refuses_other_models(tmp_path):
    with pytest.raises(TypeError, match="hf_pvt models"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
