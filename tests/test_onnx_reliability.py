"""ONNX export under issue 20 (reliability, round three): the task comes from the folder, every argument is checked
before any work, a failed export leaves nothing, links are replaced and never written through, and a working export
prints progress and nothing alarming.

One real export (a RetinaNet folder through the command line) serves every test that needs an exported file; the
other tests replace torch.onnx's exporter by a stub that writes a prepared file, so ONNX Runtime's check still runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from hf_pvt import (
    HfPvtBackbone,
    HfPvtForImageClassification,
    HfPvtForObjectDetection,
    HfPvtImageProcessor,
    export_onnx,
)
from hf_pvt.onnx_export import OnnxVerificationError, verify_onnx
from hf_pvt.onnx_export import main as onnx_main

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

DETECTOR = {"depths": [1, 1, 1, 1], "num_labels": 3, "decoder_hidden_size": 16, "detection_feat_channels": 16,
            "detection_num_convs": 1}  # fmt: skip
LEVELS = 5


def run_cli(*args, capfd) -> tuple[int, str, str]:
    capfd.readouterr()  # what came before (progress bars of save_pretrained)
    code = onnx_main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


@pytest.fixture(scope="module")
def detector_export(tmp_path_factory):
    """A RetinaNet folder exported by `python -m hf_pvt.onnx_export FOLDER det.onnx` (no --task): the task comes from
    the folder. Returns the folder, the file and what the command printed."""
    root = tmp_path_factory.mktemp("detector")
    torch.manual_seed(0)
    HfPvtForObjectDetection(tiny_config("v2", **DETECTOR)).save_pretrained(root / "my-detector")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_pvt.onnx_export", str(root / "my-detector"), str(root / "det.onnx")]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root / "my-detector", root / "det.onnx", result.stdout, result.stderr


class CopyProgram:
    """What torch.onnx.export returns, reduced to `save`: writes a prepared file."""

    def __init__(self, source: Path):
        self.source = source

    def save(self, destination, **kwargs):
        shutil.copyfile(self.source, destination)


@pytest.fixture
def stub_exporter(monkeypatch):
    """Replace torch.onnx's exporter by one that 'exports' the given file (None: fails the test if called)."""
    calls = []

    def install(source: Path | None):
        def export(*args, **kwargs):
            calls.append(kwargs)
            if source is None:
                raise AssertionError("the export started although an argument was wrong")
            return CopyProgram(source)

        monkeypatch.setattr(torch.onnx, "export", export)
        return calls

    return install


def tiny_classifier() -> HfPvtForImageClassification:
    torch.manual_seed(0)
    return HfPvtForImageClassification(tiny_config("v2", depths=[1, 1, 1, 1])).eval()


def broken_graph(path: Path) -> Path:
    """An ONNX file with the classifier's input and output names that fails inside ONNX Runtime at batch sizes other
    than 2, as the detector's old export did: `Concat` of a per-image tensor with a constant traced at batch 2."""
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    traced = helper.make_tensor("traced", TensorProto.FLOAT, [2, 4], [0.0] * 8)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixel_values", "axes"], ["pooled"], keepdims=0),
            helper.make_node("Concat", ["pooled", "traced"], ["logits"], axis=1),
        ],
        "broken",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 7])],
        [axes, traced],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


# ------------------------------------------------------------------------ item 11: the task comes from the folder


def test_detector_folder_exports_its_raw_head_outputs_not_a_classifier(detector_export):
    """Item 11: the detector folder used to load as a classifier with a random `classifier` and a `logits [batch, 80]`
    graph. Now the folder's architecture decides: RetinaNet's per-level outputs, named, checked, and exactly what
    `post_process_object_detection` needs (with the anchors, which depend on the input size alone)."""
    folder, path, _, _ = detector_export
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    # One row per anchor, all levels (issue 20: batch-first outputs that a pipeline splits per image).
    assert names == ["logits", "pred_box_deltas"]
    model = HfPvtForObjectDetection.from_pretrained(folder).eval()
    pixel_values = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        expected = model(pixel_values)
    outputs = dict(zip(names, session.run(None, {"pixel_values": pixel_values.numpy()})))
    torch.testing.assert_close(torch.from_numpy(outputs["logits"]), expected.logits, atol=1e-5, rtol=0)
    assert expected.spatial_shapes.shape == (2, LEVELS, 2)
    from_onnx = {
        "logits": torch.from_numpy(outputs["logits"]),
        "pred_box_deltas": torch.from_numpy(outputs["pred_box_deltas"]),
        "anchors": expected.anchors,
        "spatial_shapes": expected.spatial_shapes,
        "image_sizes": expected.image_sizes,
    }
    processor = HfPvtImageProcessor.for_object_detection()
    ours = processor.post_process_object_detection(from_onnx, threshold=0.0)
    theirs = processor.post_process_object_detection(expected, threshold=0.0)
    for mine, reference in zip(ours, theirs):
        assert torch.equal(mine["labels"], reference["labels"])
        torch.testing.assert_close(mine["boxes"], reference["boxes"], atol=1e-3, rtol=0)


def test_a_working_export_prints_progress_and_nothing_alarming(detector_export):
    """Item 15: no torchvision lines, no FutureWarning, no RuntimeWarning about sys.modules; short progress lines."""
    folder, path, stdout, stderr = detector_export
    assert stderr.strip() == "", stderr
    lines = stdout.splitlines()
    assert lines[0].startswith(f"Loading {folder} as HfPvtForObjectDetection")
    assert lines[1].startswith("Exporting HfPvtForObjectDetection (outputs logits, pred_box_deltas)")
    assert lines[2].startswith("Checking the file in ONNX Runtime at 1x224x224")
    assert lines[3].startswith(f"Wrote {path}") and "checked in ONNX Runtime" in lines[3]
    assert len(lines) == 4
    assert leftovers(path.parent) == []


def test_python_dash_m_imports_the_module_once(tmp_path):
    """Item 15: `python -m hf_pvt.onnx_export` used to warn that the package had imported the module already."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hf_pvt.onnx_export", str(tmp_path / "missing"), str(tmp_path / "x.onnx")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'missing'} does not exist: give a folder saved with save_pretrained, or a Hub id such "
        "as 'your-name/pvt-v2-b0'."
    ]
    assert not (tmp_path / "x.onnx").exists() and leftovers(tmp_path) == []


def save_folder(root: Path, name: str, model=None, config: dict | None = None) -> Path:
    folder = root / name
    if model is not None:
        model.save_pretrained(folder)
    else:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_command_line_refuses_what_it_cannot_export_faithfully(tmp_path, capfd):
    """Item 11 and 7: each refusal is one `error:` line and exit 1, before any export; nothing is written."""
    torch.manual_seed(0)
    classifier = save_folder(tmp_path, "classifier", HfPvtForImageClassification(tiny_config("v2", depths=[1] * 4)))
    detector_config = HfPvtForObjectDetection(tiny_config("v2", **DETECTOR)).config.to_dict()
    config_only = save_folder(tmp_path, "config-only", config={**detector_config, "architectures": ["HfPvtModel"]})
    mask_rcnn = save_folder(
        tmp_path, "mask-rcnn", config={**detector_config, "architectures": ["HfPvtForInstanceSegmentation"]}
    )
    upernet = save_folder(tmp_path, "upernet", config={"model_type": "upernet", "backbone_config": detector_config})
    unnamed = save_folder(tmp_path, "unnamed", config={**detector_config, "architectures": None})
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "out.onnx"
    cases = [
        ((classifier, out, "--task", "detection"), "would export HfPvtForObjectDetection with randomly initialised"),
        ((classifier, out, "--task", "segmentation"), "--task classification (the default for this folder)"),
        ((config_only, out), "cannot load"),
        ((mask_rcnn, out), "Mask R-CNN's outputs depend on the image's content"),
        ((upernet, out), "holds a 'upernet' model, not an hf_pvt one"),
        ((unnamed, out), "give the task with --task"),
        ((tmp_path / "a-file", out), "is a file"),
        ((tmp_path / "nowhere", out), "does not exist"),
        ((classifier, tmp_path / "a-file" / "x.onnx"), "a-file is a file, not a folder"),
        ((classifier, tmp_path), "is a folder: give the .onnx file"),
        ((classifier, out, "--opset", "7"), "opset_version 7 is not one torch.onnx writes: choose 18 to 23"),
        ((classifier, out, "--atol", "nan"), "atol must be a finite number"),
    ]
    for args, message in cases:
        code, stdout, stderr = run_cli(*args, capfd=capfd)
        assert code == 1, (args, stdout, stderr)
        assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and message in stderr, (args, stderr)
        assert "Traceback" not in stderr and "Exporting" not in stdout
        assert not out.exists() and leftovers(tmp_path) == []
    # The encoder of a Mask R-CNN folder is exportable; it is checked like any other (here: it has no weights).
    code, _, stderr = run_cli(mask_rcnn, out, "--task", "backbone", capfd=capfd)
    assert code == 1 and "cannot load" in stderr


def test_command_line_reports_an_unwritable_destination_in_one_line(tmp_path, capfd, monkeypatch):
    """Item 7: an unwritable output used to end in a traceback after the export's work."""
    torch.manual_seed(0)
    classifier = save_folder(tmp_path, "classifier", HfPvtForImageClassification(tiny_config("v2", depths=[1] * 4)))
    original = __import__("tempfile").mkdtemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(dir))
        return original(*args, dir=dir, **kwargs)

    monkeypatch.setattr("tempfile.mkdtemp", refuse)  # as root, chmod cannot make a folder unwritable
    (tmp_path / "locked").mkdir()
    capfd.readouterr()
    code, stdout, stderr = run_cli(classifier, tmp_path / "locked" / "x.onnx", capfd=capfd)
    assert code == 1 and stdout == ""
    assert stderr == f"error: {tmp_path / 'locked'}: cannot write the ONNX file {tmp_path / 'locked' / 'x.onnx'} " \
                     "(Permission denied); choose a folder you can write to.\n"  # fmt: skip
    assert list((tmp_path / "locked").iterdir()) == []


# ------------------------------------------------------------------------ item 7: arguments, checked before any work


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"opset_version": 7}, ValueError, "opset_version 7 is not one torch.onnx writes: choose 18 to 23"),
        ({"opset_version": 99}, ValueError, "opset_version 99"),
        ({"opset_version": "17"}, TypeError, "opset_version must be an integer"),
        ({"opset_version": True}, TypeError, "opset_version must be an integer"),
        ({"opset_version": 18.0}, TypeError, "opset_version must be an integer"),
        ({"atol": float("nan")}, ValueError, "atol must be a finite number >= 0"),
        ({"atol": -1e-4}, ValueError, "atol must be a finite number >= 0"),
        ({"atol": float("inf")}, ValueError, "atol must be a finite number >= 0"),
        ({"atol": "1e-4"}, TypeError, "atol must be a number"),
        ({"verify": "yes"}, TypeError, "verify must be True or False"),
        ({"verify": None}, TypeError, "verify must be True or False"),
    ],
)
def test_export_arguments_are_checked_before_any_work(tmp_path, stub_exporter, kwargs, error, message):
    stub_exporter(None)
    with pytest.raises(error, match=message):
        export_onnx(tiny_classifier(), tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_destination_is_checked_before_any_work(tmp_path, stub_exporter):
    stub_exporter(None)
    model = tiny_classifier()
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    for path, error, message in [
        (tmp_path / "file" / "deeper" / "m.onnx", ValueError, "is a file, not a folder"),
        (tmp_path / "folder", ValueError, "is a folder"),
        ("", ValueError, "names no file"),
        ("a\0b.onnx", ValueError, "names no file"),
        (42, TypeError, "path must be a str or os.PathLike"),
        (b"m.onnx", TypeError, "path must be a str or os.PathLike"),
    ]:
        with pytest.raises(error, match=message):
            export_onnx(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


def test_unsupported_models_are_refused_up_front(tmp_path, stub_exporter):
    """Item 3 and 11: Mask R-CNN (data-dependent outputs) is refused with the way out, before any work."""
    stub_exporter(None)
    # A stand-in with Mask R-CNN's class name: the refusal goes by the class, whatever its configuration.
    mask_rcnn = type("HfPvtForInstanceSegmentation", (HfPvtForImageClassification,), {})
    with pytest.raises(ValueError, match="Mask R-CNN's outputs depend on the image's content.*--task backbone"):
        export_onnx(mask_rcnn(tiny_config("v2", depths=[1] * 4)), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="exports hf_pvt models"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ item 3: nothing half-written


def test_a_file_that_fails_in_onnx_runtime_is_removed(tmp_path, stub_exporter):
    """Item 3: the detector's graph failed in ONNX Runtime at other sizes (a raw Concat error) and stayed on disk."""
    stub_exporter(broken_graph(tmp_path / "broken.onnx"))
    target = tmp_path / "new" / "deeper" / "m.onnx"
    with pytest.raises(OnnxVerificationError, match=r"ONNX Runtime failed at input 1x3x224x224 running .*m\.onnx"):
        export_onnx(tiny_classifier(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]  # the created folders are gone too


def test_a_file_that_fails_the_output_check_is_removed_and_an_old_file_kept(tmp_path, stub_exporter, detector_export):
    """Item 3: a file whose outputs differ from the model's stays neither in place nor beside it; a file already at
    the destination is left as it was."""
    folder, exported, _, _ = detector_export
    stub_exporter(exported)
    other = HfPvtForObjectDetection.from_pretrained(folder).eval()
    with torch.no_grad():
        other.bbox_head.retina_reg.bias.add_(1.0)
    (tmp_path / "det.onnx").write_bytes(b"the previous export")
    with pytest.raises(OnnxVerificationError, match=r"pred_box_deltas differs .* at input 1x3x224x224"):
        export_onnx(other, tmp_path / "det.onnx")
    assert (tmp_path / "det.onnx").read_bytes() == b"the previous export"
    assert leftovers(tmp_path) == []
    with pytest.raises(OnnxVerificationError, match=r"returns \['logits', 'pred_box_deltas'\], but the model "
                       r"returns \['logits'\]"):
        verify_onnx(tiny_classifier(), exported)


def test_a_link_at_the_destination_is_replaced_not_written_through(tmp_path, stub_exporter, detector_export):
    folder, exported, _, _ = detector_export
    stub_exporter(exported)
    elsewhere = tmp_path / "elsewhere.onnx"
    elsewhere.write_bytes(b"someone else's file")
    (tmp_path / "det.onnx").symlink_to(elsewhere)
    model = HfPvtForObjectDetection.from_pretrained(folder)
    export_onnx(model, tmp_path / "det.onnx")
    assert not (tmp_path / "det.onnx").is_symlink()
    assert (tmp_path / "det.onnx").read_bytes() == exported.read_bytes()
    assert elsewhere.read_bytes() == b"someone else's file"
    assert oct((tmp_path / "det.onnx").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_model_is_left_as_it_was(tmp_path, stub_exporter, detector_export):
    """export_onnx used to switch the caller's model to eval mode, float32 and CPU for good."""
    folder, exported, _, _ = detector_export
    stub_exporter(exported)
    model = HfPvtForObjectDetection.from_pretrained(folder).train()
    export_onnx(model, tmp_path / "a.onnx")
    assert model.training
    half = HfPvtForObjectDetection.from_pretrained(folder).to(torch.bfloat16).eval()
    export_onnx(half, tmp_path / "b.onnx", verify=False)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_encoder_of_a_detector_exports_as_backbone(tmp_path, stub_exporter, detector_export):
    """`--task backbone` on a detector folder loads its encoder (all weights present) and exports feature maps."""
    folder, exported, _, _ = detector_export
    calls = stub_exporter(exported)
    backbone = HfPvtBackbone.from_pretrained(folder)
    export_onnx(backbone, tmp_path / "b.onnx", verify=False)
    assert calls[0]["output_names"] == ["feature_maps.0"]  # tiny_config's default out_features: the last stage
    assert calls[0]["opset_version"] is None
