"""Folders saved before the heads moved out of `modeling_hf_pvt.py` (tests/fixtures/legacy_folders, written by the
hf_pvt of commit c83e221 with `make_legacy_folders.py` there) still load and predict exactly as they did: with hf_pvt
installed (today's classes), and with `trust_remote_code=True` where hf_pvt cannot be imported (the folder's own code).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForObjectDetection,
    AutoModelForSemanticSegmentation,
)

import hf_pvt
from hf_pvt.configuration_hf_pvt import AUTO_MAP

LEGACY = FIXTURES / "legacy_folders"
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
AUTO_CLASSES = {
    "classification": "AutoModelForImageClassification",
    "semantic_segmentation": "AutoModelForSemanticSegmentation",
    "object_detection": "AutoModelForObjectDetection",
}


def _check_outputs(model: torch.nn.Module, processor, expected: dict[str, torch.Tensor]) -> None:
    """The outputs `make_legacy_folders.py` stored, as `model` and `processor` compute them now: the model's to float
    rounding (another thread count sums in another order), its detections from the stored outputs exactly."""
    with torch.no_grad():
        if "pixel_mask" not in expected:
            torch.testing.assert_close(model(expected["pixel_values"]).logits, expected["logits"], **TOLERANCE)
            return
        # The stored outputs come from one pass over the padded batch. Today's detector runs that way in training
        # mode (in evaluation, each padded size on its own); the encoder and heads have no dropout, so the function
        # is the same.
        model.train()
        outputs = model(expected["pixel_values"], pixel_mask=expected["pixel_mask"])
        model.eval()
    # Today's outputs are one row per anchor; level_maps() gives the per-level maps the folders were saved with (the
    # folder's own code, run without hf_pvt, still returns them).
    if hasattr(outputs, "level_maps"):
        level_logits, level_deltas, level_anchors = outputs.level_maps()
    else:
        level_logits, level_deltas, level_anchors = outputs.logits, outputs.pred_box_deltas, outputs.anchors
    for level, (logits, deltas) in enumerate(zip(level_logits, level_deltas)):
        torch.testing.assert_close(logits, expected[f"logits.{level}"], **TOLERANCE)
        torch.testing.assert_close(deltas, expected[f"pred_box_deltas.{level}"], **TOLERANCE)
    stored = {  # the per-level layout, as earlier versions and the ONNX export give it
        "logits": tuple(expected[f"logits.{level}"] for level in range(len(level_logits))),
        "pred_box_deltas": tuple(expected[f"pred_box_deltas.{level}"] for level in range(len(level_logits))),
        "anchors": level_anchors,
        "image_sizes": outputs.image_sizes,
    }
    for index, detection in enumerate(processor.post_process_object_detection(stored, threshold=0.3)):
        assert detection.keys() == {"scores", "labels", "boxes"}
        for key, value in detection.items():
            assert torch.equal(value, expected[f"detections.{index}.{key}"]), (index, key)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("legacy")
    for name in AUTO_CLASSES:
        shutil.copytree(LEGACY / name, root / name)
    return {name: root / name for name in AUTO_CLASSES}


@pytest.mark.parametrize("name", list(AUTO_CLASSES))
def test_legacy_folder_loads_into_todays_classes_and_predicts_the_same(folders, name, tmp_path):
    folder = folders[name]
    auto_class = {
        "classification": AutoModelForImageClassification,
        "semantic_segmentation": AutoModelForSemanticSegmentation,
        "object_detection": AutoModelForObjectDetection,
    }[name]
    model = auto_class.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(model).__module__.startswith("hf_pvt.") and type(processor) is hf_pvt.HfPvtImageProcessor
    _check_outputs(model, processor, load_file(folder / "expected.safetensors"))

    # Saved again, the folder names today's modules and carries them all.
    model.save_pretrained(tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["auto_map"].items() >= AUTO_MAP.items()
    for reference in config["auto_map"].values():
        assert (tmp_path / "again" / f"{reference.split('.')[0]}.py").is_file(), reference


REMOTE_SCRIPT = """
import importlib.abc, json, sys


class NoHfPvt(importlib.abc.MetaPathFinder):
    # Stands in for a Python where hf_pvt is not installed.
    def find_spec(self, name, path=None, target=None):
        if name == "hf_pvt" or name.startswith("hf_pvt."):
            raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoHfPvt())
sys.path = [p for p in sys.path if p not in ("", ".")]
import torch
import transformers
from safetensors.torch import load_file

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
folders, auto_classes, check_outputs = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
exec(check_outputs)  # the test's own _check_outputs
modules = {}
for name, folder in folders.items():
    model = getattr(transformers, auto_classes[name]).from_pretrained(folder, trust_remote_code=True).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    _check_outputs(model, processor, load_file(f"{folder}/expected.safetensors"))
    modules[name] = [type(model).__module__, type(processor).__module__]
assert "hf_pvt" not in sys.modules
print(json.dumps(modules))
"""


def test_legacy_folders_load_with_their_own_code_without_hf_pvt(folders, tmp_path):
    script = tmp_path / "remote.py"
    script.write_text(textwrap.dedent(REMOTE_SCRIPT))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    arguments = [json.dumps({k: str(v) for k, v in folders.items()}), json.dumps(AUTO_CLASSES)]
    result = subprocess.run(
        [sys.executable, str(script), *arguments, inspect.getsource(_check_outputs)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    for name in AUTO_CLASSES:
        assert all(module.startswith("transformers_modules.") for module in modules[name]), modules[name]
