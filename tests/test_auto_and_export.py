"""Auto-class registration, Hub export with trust_remote_code, and pipelines on a real photo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FIXTURES, tiny_config
from PIL import Image
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    pipeline,
)

from hf_pvt import HfPvtBackbone, HfPvtConfig, HfPvtForImageClassification, HfPvtImageProcessor, HfPvtModel

PHOTO = FIXTURES / "coco_000000039769.png"
LABELS = {0: "cat", 1: "remote", 2: "couch", 3: "dog", 4: "bed", 5: "tv", 6: "lamp"}


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    """A tiny v1 classifier and its image processor saved as a Hub folder."""
    folder = tmp_path_factory.mktemp("hub_folder")
    torch.manual_seed(0)
    config = tiny_config("v1", id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = HfPvtForImageClassification(config).eval()
    model.save_pretrained(folder)
    HfPvtImageProcessor().save_pretrained(folder)
    return folder, model


def test_auto_classes_resolve_to_hf_pvt(tmp_path):
    config = tiny_config("v2")
    assert isinstance(AutoConfig.for_model("hf_pvt"), HfPvtConfig)
    assert type(AutoModel.from_config(config)) is HfPvtModel
    assert type(AutoModelForImageClassification.from_config(config)) is HfPvtForImageClassification
    assert type(AutoBackbone.from_config(config)) is HfPvtBackbone


def test_saved_folder_loads_with_auto_classes(saved_classifier):
    folder, model = saved_classifier
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(os.listdir(folder))
    pixel_values = torch.randn(1, 3, 64, 64)
    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(loaded) is HfPvtForImageClassification
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, atol=1e-6, rtol=0)
        base = AutoModel.from_pretrained(folder).eval()
        torch.testing.assert_close(base(pixel_values).pooler_output, model.pvt(pixel_values).pooler_output)
    assert type(AutoImageProcessor.from_pretrained(folder)) is HfPvtImageProcessor


def test_saved_folder_carries_the_code_for_trust_remote_code(saved_classifier):
    folder, _ = saved_classifier
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "hf_pvt"
    for auto_class, reference in config["auto_map"].items():
        module, _ = reference.split(".")
        assert (folder / f"{module}.py").is_file(), (auto_class, reference)
    processor_config = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"]["AutoImageProcessor"] == "image_processing_hf_pvt.HfPvtImageProcessor"


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoHfPvt(importlib.abc.MetaPathFinder):
        # Stands in for a Python where hf_pvt is not installed.
        def find_spec(self, name, path=None, target=None):
            if name == "hf_pvt" or name.startswith("hf_pvt."):
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, NoHfPvt())
    sys.path = [p for p in sys.path if p not in ("", ".")]
    import json, torch
    from transformers import (
        AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline
    )

    folder, photo = sys.argv[1], sys.argv[2]
    try:
        import hf_pvt  # noqa: F401
        raise SystemExit("hf_pvt should not be importable here")
    except ModuleNotFoundError:
        pass
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    # AutoBackbone.from_pretrained treats every name as a Hub id in Transformers 5.x; from_config takes folders.
    backbone_config = AutoConfig.from_pretrained(folder, trust_remote_code=True, out_indices=[0, 3])
    backbone = AutoBackbone.from_config(backbone_config, trust_remote_code=True)
    from PIL import Image
    inputs = processor(Image.open(photo), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    classify = pipeline("image-classification", model=folder, trust_remote_code=True)
    print(json.dumps({
        "module": type(model).__module__,
        "logits": logits[0].tolist(),
        "base": type(base).__name__,
        "channels": backbone.channels,
        "top": classify(photo, top_k=1)[0]["label"],
    }))
    """
)


def test_trust_remote_code_loads_where_hf_pvt_is_not_installed(saved_classifier, tmp_path):
    folder, model = saved_classifier
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_CODE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(PHOTO)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules"), report["module"]
    assert report["base"] == "HfPvtModel" and report["channels"] == [16, 64]

    inputs = HfPvtImageProcessor()(Image.open(PHOTO), return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits[0]
    torch.testing.assert_close(torch.tensor(report["logits"]), expected, atol=1e-5, rtol=0)
    assert report["top"] == LABELS[int(expected.argmax())]


def test_image_classification_pipeline_on_a_real_photo(saved_classifier):
    folder, model = saved_classifier
    classify = pipeline("image-classification", model=str(folder))
    predictions = classify(str(PHOTO), top_k=3)
    assert [p["label"] for p in predictions][0] in LABELS.values() and len(predictions) == 3
    inputs = HfPvtImageProcessor()(Image.open(PHOTO), return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**inputs).logits.softmax(-1)[0]
    top = probabilities.topk(3)
    assert [p["label"] for p in predictions] == [LABELS[int(i)] for i in top.indices]
    assert predictions[0]["score"] == pytest.approx(float(top.values[0]), abs=1e-5)


def test_image_feature_extraction_pipeline_on_a_real_photo(saved_classifier):
    folder, model = saved_classifier
    extract = pipeline("image-feature-extraction", model=str(folder))
    pooled = extract(Image.open(PHOTO), pool=True, return_tensors=True)
    inputs = HfPvtImageProcessor()(Image.open(PHOTO), return_tensors="pt")
    with torch.no_grad():
        expected = model.pvt(**inputs)
    torch.testing.assert_close(pooled.reshape(-1), expected.pooler_output[0], atol=1e-5, rtol=0)
    features = extract(Image.open(PHOTO), return_tensors=True)
    # The unpooled features are the last stage's map: 224 / 32 = 7.
    assert tuple(features.shape) == (1, 64, 7, 7)


def test_pipeline_loads_hf_pvt_folders_without_asking_about_custom_code(saved_classifier, monkeypatch):
    # pipeline() probes folders for a video processor; hf_pvt registers that it has none, so the folder's
    # copied code never triggers Transformers' interactive "run the custom code?" question.
    prompts = []
    monkeypatch.setattr("builtins.input", lambda *args: prompts.append(args) or "n")
    folder, _ = saved_classifier
    classify = pipeline("image-classification", model=str(folder))
    assert prompts == []  # Transformers swallows errors around its prompt, so count the calls
    assert type(classify.model) is HfPvtForImageClassification
    assert type(classify.image_processor) is HfPvtImageProcessor
