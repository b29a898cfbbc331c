"""Dense models on an hf_pvt backbone as Hub folders: saved with `hf_pvt.save_for_hub`, loaded with the plain Auto
classes where hf_pvt is not installed (`trust_remote_code=True`) and where it is imported, bit-equal outputs,
`pipeline()` that never asks about custom code with stdin closed, model cards and one-commit uploads.

Two subprocesses do the loading, each for every folder at once: one that cannot import hf_pvt, one that imports it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
import textwrap

import huggingface_hub
import pytest
import torch
import yaml
from conftest import FIXTURES, tiny_config
from transformers import (
    AutoModelForInstanceSegmentation,
    AutoModelForObjectDetection,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessorPil,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    ResNetConfig,
    ResNetModel,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

import hf_pvt
from hf_pvt import (
    HfPvtForInstanceSegmentation,
    HfPvtForObjectDetection,
    HfPvtForSemanticSegmentation,
    HfPvtImageProcessor,
    HubUploadError,
    make_hub_ready,
    push_to_hub,
    save_for_hub,
)
from hf_pvt.sharing import CARD_MARKER, render_model_card

PHOTO = FIXTURES / "coco_000000039769.png"
ADE_PHOTO = FIXTURES / "ade20k_val_00000001.jpg"
ALL_STAGES = ["stage1", "stage2", "stage3", "stage4"]
DETR_KWARGS = {
    "use_timm_backbone": False,
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "num_queries": 5,
    "num_labels": 3,
}
SEGMENTATION_PROCESSOR = {"size": {"height": 64, "width": 64}, "do_center_crop": False}


def _upernet():
    config = UperNetConfig(
        backbone_config=tiny_config("v1", out_features=ALL_STAGES),
        hidden_size=32,
        auxiliary_in_channels=48,
        auxiliary_channels=16,
        num_labels=5,
    )
    return UperNetForSemanticSegmentation(config), HfPvtImageProcessor(**SEGMENTATION_PROCESSOR)


def _detr():
    config = DetrConfig(backbone_config=tiny_config("v2", out_features=["stage4"]), **DETR_KWARGS)
    return DetrForObjectDetection(config), DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})


def _conditional_detr():
    config = ConditionalDetrConfig(backbone_config=tiny_config("v1", out_features=["stage4"]), **DETR_KWARGS)
    return ConditionalDetrForObjectDetection(config), None


def _deformable_detr():
    config = DeformableDetrConfig(
        backbone_config=tiny_config("v2-linear", out_features=["stage2", "stage3", "stage4"]),
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        **DETR_KWARGS,
    )
    return DeformableDetrForObjectDetection(config), None


def _rt_detr():
    import transformers

    config = transformers.RTDetrConfig(
        backbone_config=tiny_config("v2", out_features=["stage2", "stage3", "stage4"]),
        encoder_in_channels=[32, 48, 64],
        feat_strides=[8, 16, 32],
        d_model=32,
        encoder_hidden_dim=32,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        decoder_in_channels=[32, 32, 32],
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=5,
        num_labels=3,
        num_denoising=0,
    )
    return transformers.RTDetrForObjectDetection(config), None


def _mask2former():
    config = Mask2FormerConfig(
        backbone_config=tiny_config("v2", out_features=ALL_STAGES),
        hidden_dim=32,
        feature_size=32,
        mask_feature_size=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=5,
        num_labels=3,
    )
    return Mask2FormerForUniversalSegmentation(config), None


def _semantic_fpn():
    config = tiny_config("v2", num_labels=4, decoder_hidden_size=16, decoder_head_size=32)
    return HfPvtForSemanticSegmentation(config), HfPvtImageProcessor(**SEGMENTATION_PROCESSOR)


def _retinanet():
    config = tiny_config("v2", num_labels=3, decoder_hidden_size=16, detection_feat_channels=16, detection_num_convs=1)
    processor = HfPvtImageProcessor.for_object_detection(size={"shortest_edge": 64, "longest_edge": 96})
    return HfPvtForObjectDetection(config), processor


def _mask_rcnn():
    config = tiny_config(
        "v1", num_labels=3, decoder_hidden_size=16, rcnn_fc_channels=32, mask_head_channels=8, mask_head_num_convs=1
    )
    processor = HfPvtImageProcessor.for_instance_segmentation(size={"shortest_edge": 64, "longest_edge": 96})
    return HfPvtForInstanceSegmentation(config), processor


# name: (builder, Auto class that loads it, pipeline task run on the folder, or None)
HEADS = {
    "upernet": (_upernet, "AutoModelForSemanticSegmentation", "image-segmentation"),
    "detr": (_detr, "AutoModelForObjectDetection", "object-detection"),
    "conditional_detr": (_conditional_detr, "AutoModelForObjectDetection", None),
    "deformable_detr": (_deformable_detr, "AutoModelForObjectDetection", None),
    "rt_detr": (_rt_detr, "AutoModelForObjectDetection", None),
    "mask2former": (_mask2former, "AutoModelForUniversalSegmentation", None),
    "semantic_fpn": (_semantic_fpn, "AutoModelForSemanticSegmentation", "image-segmentation"),
    "retinanet": (_retinanet, "AutoModelForObjectDetection", "object-detection"),
    "mask_rcnn": (_mask_rcnn, "AutoModelForInstanceSegmentation", None),  # its pipeline: test_instance_pipeline_*
}
OWN_HEADS = ("semantic_fpn", "retinanet", "mask_rcnn")
AUTO_CLASSES = {
    "AutoModelForInstanceSegmentation": AutoModelForInstanceSegmentation,
    "AutoModelForObjectDetection": AutoModelForObjectDetection,
    "AutoModelForSemanticSegmentation": AutoModelForSemanticSegmentation,
    "AutoModelForUniversalSegmentation": AutoModelForUniversalSegmentation,
}


def flat_tensors(outputs) -> dict[str, torch.Tensor]:
    """An output's tensors by name; per-image lists (Mask R-CNN's detections) one tensor per image."""
    found = {}
    for name, value in outputs.items():
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            found.update({f"{name}.{index}": item for index, item in enumerate(value)})
    return found


# Shared by both subprocesses: run every folder's model on the same input, every pipeline on the same photo, and
# count the custom-code questions (input() is where Transformers asks; stdin is closed as in a batch job).
COMMON = (
    """
import builtins, json, sys
import numpy as np
import torch
import transformers
"""
    + inspect.getsource(flat_tensors)
    + """

root, photo = sys.argv[1], sys.argv[2]
manifest = json.load(open(f"{root}/manifest.json"))
asked = []
real_input = builtins.input
builtins.input = lambda *args: asked.append(str(args)[:200]) or real_input(*args)


tensors = flat_tensors


def run_models(names=None, **kwargs):
    pixel_values = torch.load(f"{root}/pixel_values.pt")
    results, kinds = {}, {}
    for name, entry in manifest.items():
        if names is not None and name not in names:
            continue
        auto_class = getattr(transformers, entry["auto_class"])
        model = auto_class.from_pretrained(f"{root}/{name}", **kwargs).eval()
        with torch.no_grad():
            results[name] = tensors(model(pixel_values))
        backbone = next(m for m in model.modules() if type(m).__name__ in ("HfPvtBackbone", "HfPvtModel"))
        kinds[name] = [type(model).__module__, type(model.config).__module__, type(backbone).__module__]
    return results, kinds


def run_pipelines(**kwargs):
    from PIL import Image

    found = {}
    for name, entry in manifest.items():
        if entry["task"] is None:
            continue
        predict = transformers.pipeline(entry["task"], model=f"{root}/{name}", **kwargs)
        image = Image.open(photo).convert("RGB")
        if entry["task"] == "object-detection":
            found[name] = [[d["label"], d["score"], sorted(d["box"].items())] for d in predict(image, threshold=0.0)]
        else:
            found[name] = [[s["label"], int(np.asarray(s["mask"]).sum())] for s in predict(image)]
        found[name + ":processor"] = type(predict.image_processor).__module__
    return found
"""
)

WITHOUT_HF_PVT = (
    """
import importlib.abc, sys


class NoHfPvt(importlib.abc.MetaPathFinder):
    # Stands in for a Python where hf_pvt is not installed.
    def find_spec(self, name, path=None, target=None):
        if name == "hf_pvt" or name.startswith("hf_pvt."):
            raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoHfPvt())
sys.path = [p for p in sys.path if p not in ("", ".")]
"""
    + COMMON
    + """
try:
    import hf_pvt  # noqa: F401
    raise SystemExit("hf_pvt should not be importable here")
except ModuleNotFoundError:
    pass
results, kinds = run_models(trust_remote_code=True)
torch.save(results, f"{root}/outputs_without_hf_pvt.pt")
found = run_pipelines(trust_remote_code=True)
# A model loaded from remote code saves its code again.
model = transformers.AutoModelForSemanticSegmentation.from_pretrained(f"{root}/upernet", trust_remote_code=True)
model.save_pretrained(f"{root}/upernet_saved_again")
print(json.dumps({"kinds": kinds, "pipelines": found, "asked": asked}))
"""
)

WITH_HF_PVT = (
    COMMON
    + """
import hf_pvt

results, kinds = run_models()
torch.save(results, f"{root}/outputs_with_hf_pvt.pt")
found = run_pipelines()
# trust_remote_code=True with hf_pvt imported: the folder's code names the head, hf_pvt's own backbone runs.
remote, remote_kinds = run_models(["upernet", "mask2former"], trust_remote_code=True)
same = {name: all(torch.equal(remote[name][k], results[name][k]) for k in results[name]) for name in remote}
before = sorted((p.name, p.stat().st_mtime_ns) for p in __import__("pathlib").Path(f"{root}/upernet").iterdir())
try:
    hf_pvt.push_to_hub(f"{root}/upernet", "someone/pvt-upernet")
    offline_error = None
except hf_pvt.HubUploadError as error:
    offline_error = str(error)
after = sorted((p.name, p.stat().st_mtime_ns) for p in __import__("pathlib").Path(f"{root}/upernet").iterdir())
print(json.dumps({
    "kinds": kinds, "remote_kinds": remote_kinds, "pipelines": found, "asked": asked, "remote_equal": same,
    "offline_error": offline_error, "folder_untouched": before == after,
}))
"""
)


def start_script(script: str, root, tmp_path) -> subprocess.Popen:
    """Run `script` on the folders under `root` with stdin closed, offline, with its own remote-code cache."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(
        [sys.executable, str(path), str(root), str(PHOTO)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip


def finish_script(process: subprocess.Popen) -> tuple[dict, str]:
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1]), stdout + stderr


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory):
    """Every head saved with save_for_hub under one root, with the input and the original models' weights."""
    root = tmp_path_factory.mktemp("hub_dense")
    torch.manual_seed(0)
    pixel_values = torch.rand(1, 3, 96, 96)
    torch.save(pixel_values, root / "pixel_values.pt")
    manifest, originals = {}, {}
    for name, (build, auto_class, task) in HEADS.items():
        model, processor = build()
        model.eval()
        save_for_hub(model, root / name, image_processor=processor)
        manifest[name] = {"auto_class": auto_class, "task": task}
        originals[name] = model
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, originals


@pytest.fixture(scope="module")
def reports(hub_folders, tmp_path_factory):
    """(with hf_pvt, without hf_pvt): each subprocess's report and output; the two run side by side."""
    root, _ = hub_folders
    processes = [
        start_script(WITH_HF_PVT, root, tmp_path_factory.mktemp("with_hf_pvt")),
        start_script(WITHOUT_HF_PVT, root, tmp_path_factory.mktemp("without_hf_pvt")),
    ]
    try:
        return [finish_script(process) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


@pytest.fixture(scope="module")
def with_hf_pvt(reports):
    return reports[0]


@pytest.fixture(scope="module")
def without_hf_pvt(reports):
    return reports[1]


def test_folders_carry_code_and_auto_map_for_every_head(hub_folders):
    root, originals = hub_folders
    for name, model in originals.items():
        config = json.loads((root / name / "config.json").read_text())
        own = config["model_type"] == "hf_pvt"
        if own:
            assert config["auto_map"]["AutoConfig"] == "configuration_hf_pvt.HfPvtConfig"
        else:
            # The head's config class is the only head-specific part: one module serves every head.
            assert config["auto_map"] == {"AutoConfig": f"hub_hf_pvt.{type(model.config).__name__}"}
            assert config["backbone_config"]["model_type"] == "hf_pvt"
            assert (root / name / "hub_hf_pvt.py").read_bytes() == (root / "upernet" / "hub_hf_pvt.py").read_bytes()
        for module in {"configuration_hf_pvt", "modeling_hf_pvt", "image_processing_hf_pvt"}:
            assert (root / name / f"{module}.py").is_file(), (name, module)
        card = (root / name / "README.md").read_text()
        metadata = yaml.safe_load(card.split("---")[1])
        task = "object-detection" if "detr" in name or name == "retinanet" else "image-segmentation"
        assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == task
        assert {"hf_pvt", "vision", config["model_type"]} <= set(metadata["tags"])
        assert CARD_MARKER in card and "trust_remote_code=True" in card


def test_round_trip_without_hf_pvt_is_bit_equal_for_every_head(hub_folders, with_hf_pvt, without_hf_pvt):
    root, originals = hub_folders
    report, _ = without_hf_pvt
    local = torch.load(root / "outputs_with_hf_pvt.pt")
    remote = torch.load(root / "outputs_without_hf_pvt.pt")
    assert set(remote) == set(HEADS)
    # Mask R-CNN's per-image detections and masks are compared too, and there are some.
    assert remote["mask_rcnn"]["pred_boxes.0"].shape[0] > 0 and "pred_mask_logits.0" in remote["mask_rcnn"]
    pixel_values = torch.load(root / "pixel_values.pt")
    for name, original in originals.items():
        model_module, config_module, backbone_module = report["kinds"][name]
        assert backbone_module.startswith("transformers_modules."), name
        if name in OWN_HEADS:
            assert model_module.startswith("transformers_modules."), name
        else:
            # Transformers' own head class, its configuration from the folder's hub_hf_pvt module.
            assert model_module.startswith("transformers.models."), name
            assert config_module.startswith(f"transformers_modules.{name}.") and config_module.endswith(".hub_hf_pvt")
            # Each folder's weights run on the hf_pvt code saved with them.
            assert backbone_module.startswith(f"transformers_modules.{name}."), (name, backbone_module)
        assert remote[name].keys() == local[name].keys() and remote[name], name
        for key, value in remote[name].items():
            assert torch.equal(value, local[name][key]), (name, key)
        # And the folder holds the original weights: its outputs match the model that was saved.
        with torch.no_grad():
            expected = flat_tensors(original(pixel_values))
        for key, value in local[name].items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-5, msg=f"{name}.{key}")


def test_hf_pvt_imported_loads_the_same_folders(hub_folders, with_hf_pvt):
    report, _ = with_hf_pvt
    for name in HEADS:
        model_module, config_module, backbone_module = report["kinds"][name]
        assert backbone_module == "hf_pvt.modeling_hf_pvt", name
        if name not in OWN_HEADS:
            assert config_module.startswith("transformers.models."), name
    # With trust_remote_code=True as well: the folder's code for the head's config, hf_pvt's own backbone.
    for _, config_module, backbone_module in report["remote_kinds"].values():
        assert config_module.startswith("transformers_modules.") and backbone_module == "hf_pvt.modeling_hf_pvt"
    assert report["remote_equal"] == {"upernet": True, "mask2former": True}


def test_pipelines_never_ask_about_custom_code(with_hf_pvt, without_hf_pvt):
    with_report, with_output = with_hf_pvt
    without_report, without_output = without_hf_pvt
    for report, output in ((with_report, with_output), (without_report, without_output)):
        assert report["asked"] == []
        assert "Do you wish to run the custom code" not in output
    pipelines = {name for name, (_, _, task) in HEADS.items() if task}
    assert {name for name in with_report["pipelines"] if ":" not in name} == pipelines
    for name in pipelines:
        assert with_report["pipelines"][name], name  # something was found or segmented
        assert without_report["pipelines"][name] == with_report["pipelines"][name], name
    assert with_report["pipelines"]["upernet:processor"] == "hf_pvt.image_processing_hf_pvt"
    assert without_report["pipelines"]["upernet:processor"].startswith("transformers_modules.")


def test_model_loaded_from_remote_code_saves_its_code_again(hub_folders, without_hf_pvt):
    root, _ = hub_folders
    folder = root / "upernet_saved_again"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "hub_hf_pvt.UperNetConfig"}
    for module in ("hub_hf_pvt", "configuration_hf_pvt", "modeling_hf_pvt", "image_processing_hf_pvt"):
        assert (folder / f"{module}.py").read_bytes() == (root / "upernet" / f"{module}.py").read_bytes()


def test_offline_push_is_a_clear_error_and_leaves_the_folder(with_hf_pvt):
    report, _ = with_hf_pvt
    assert "HF_HUB_OFFLINE" in report["offline_error"] and "hf upload someone/pvt-upernet" in report["offline_error"]
    assert report["folder_untouched"]


def test_video_processor_lookup_says_there_is_none(hub_folders):
    root, _ = hub_folders
    with pytest.raises(ValueError, match="take images, not videos"):
        AutoVideoProcessor.from_pretrained(str(root / "upernet"))


# ------------------------------------------------------------------------------------ folders, cards, uploads


class FakeHub:
    """Records what HfApi is asked to do; `fail` makes the upload raise as a dropped connection would."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail, self.snapshots = [], fail, []

    def __call__(self, token=None):
        return self

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        if self.fail:
            raise ConnectionError("Connection refused")
        folder = kwargs["folder_path"]
        self.snapshots.append({p.name: p.read_bytes() for p in folder.iterdir()})
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="abc",
        )


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_push_of_a_plain_save_pretrained_folder_is_one_commit_with_code_and_card(tmp_path, monkeypatch, online):
    model, processor = _detr()
    model.save_pretrained(tmp_path / "detr")  # plain save: no code, no auto_map
    processor.save_pretrained(tmp_path / "detr")
    assert "auto_map" not in json.loads((tmp_path / "detr" / "config.json").read_text())
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", hub)
    url = push_to_hub(tmp_path / "detr", "someone/pvt-detr", private=True)
    assert url == "https://huggingface.co/someone/pvt-detr/commit/abc"
    assert [call[0] for call in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][2]["private"] is True
    uploaded = hub.snapshots[0]
    assert {"config.json", "model.safetensors", "hub_hf_pvt.py", "modeling_hf_pvt.py", "README.md"} <= set(uploaded)
    assert json.loads(uploaded["config.json"])["auto_map"] == {"AutoConfig": "hub_hf_pvt.DetrConfig"}
    assert b'from_pretrained("someone/pvt-detr", trust_remote_code=True)' in uploaded["README.md"]


def test_failed_upload_keeps_the_folder(hub_folders, tmp_path, monkeypatch, online):
    root, _ = hub_folders
    before = _digest(root / "semantic_fpn")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub(fail=True))
    with pytest.raises(HubUploadError, match="Connection refused.*folder is intact"):
        push_to_hub(root / "semantic_fpn", "someone/pvt-fpn", commit_message="x")
    after = _digest(root / "semantic_fpn")
    # Nothing was removed and the weights and configurations are as they were; the card now names the repository
    # (the code files are refreshed to this hf_pvt's, which they already were).
    assert set(after) == set(before)
    assert {k for k in before if before[k] != after[k]} <= {"README.md"} | {k for k in before if k.endswith(".py")}
    assert "someone/pvt-fpn" in (root / "semantic_fpn" / "README.md").read_text()


def test_make_hub_ready_is_idempotent_and_keeps_authors_cards(hub_folders, tmp_path):
    root, _ = hub_folders
    assert make_hub_ready(root / "mask2former") == sorted(
        {"box_ops_hf_pvt.py", "configuration_hf_pvt.py", "cpu_paths_hf_pvt.py", "dense_inputs_hf_pvt.py",
         "hub_hf_pvt.py", "image_checks_hf_pvt.py", "image_processing_hf_pvt.py", "instance_masks_hf_pvt.py",
         "mask_rcnn_hf_pvt.py", "modeling_hf_pvt.py", "neck_hf_pvt.py", "retinanet_hf_pvt.py", "roi_ops_hf_pvt.py",
         "semantic_fpn_hf_pvt.py", "variants_hf_pvt.py"}
    )  # fmt: skip
    before = _digest(root / "mask2former")
    make_hub_ready(root / "mask2former", rewrite_model_card=True)
    assert _digest(root / "mask2former") == before
    (root / "mask2former" / "README.md").write_text("# My own card\n")
    make_hub_ready(root / "mask2former", repo_id="someone/m2f", rewrite_model_card=True)
    assert (root / "mask2former" / "README.md").read_text() == "# My own card\n"


def test_model_card_names_the_preset_and_the_task(tmp_path):
    config = DetrConfig(
        backbone_config=hf_pvt.HfPvtConfig.from_preset("pvt-v2-b0", out_features=["stage4"]), use_timm_backbone=False
    )
    config.architectures = ["DetrForObjectDetection"]
    config.save_pretrained(tmp_path)
    card = render_model_card(tmp_path, repo_id="someone/detr-pvt-v2-b0")
    assert "hf_pvt `pvt-v2-b0`" in card and "| backbone stages used | stage4 |" in card
    assert 'pipeline("object-detection"' not in card  # no image processor saved: no pipeline example
    assert 'AutoModelForObjectDetection.from_pretrained("someone/detr-pvt-v2-b0")' in card
    assert "PVT v2: Improved Baselines" in card


def test_clear_errors(tmp_path, online):
    resnet = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1]))
    with pytest.raises(ValueError, match="holds no hf_pvt configuration"):
        save_for_hub(resnet, tmp_path / "resnet")
    assert not (tmp_path / "resnet").exists()
    with pytest.raises(TypeError, match="PreTrainedModel"):
        save_for_hub(torch.nn.Linear(2, 2), tmp_path / "linear")
    with pytest.raises(FileNotFoundError, match="holds no model configuration"):
        make_hub_ready(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        push_to_hub(tmp_path, "someone/x")
    with pytest.raises(ValueError, match="not a Hub repository id"):
        push_to_hub(tmp_path, "not a repo id")
    model, _ = _conditional_detr()
    model.config.auto_map = {"AutoConfig": "my_code.MyConfig"}
    model.save_pretrained(tmp_path / "foreign")
    with pytest.raises(ValueError, match="code that is not hf_pvt's"):
        make_hub_ready(tmp_path / "foreign")


def test_segmentation_example_pushes_through_hf_pvt(tmp_path, monkeypatch, online):
    import importlib.util
    import shutil

    data = tmp_path / "ade"
    (data / "images").mkdir(parents=True)
    (data / "annotations").mkdir()
    shutil.copy(ADE_PHOTO, data / "images" / ADE_PHOTO.name)
    shutil.copy(FIXTURES / "ade20k_val_00000001_label.png", data / "annotations" / f"{ADE_PHOTO.stem}.png")
    HfPvtForSemanticSegmentation(tiny_config("v2", depths=[1, 1, 1, 1])).save_pretrained(tmp_path / "start")
    path = FIXTURES.parent.parent / "examples" / "run_semantic_segmentation.py"
    spec = importlib.util.spec_from_file_location("run_semantic_segmentation", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", hub)
    example.main([
        "--data_dir", str(data), "--model", str(tmp_path / "start"), "--output_dir", str(tmp_path / "out"),
        "--max_steps", "1", "--batch_size", "1", "--crop_size", "64", "--reduce_labels", "--num_workers", "0",
        "--push_to_hub", "--hub_model_id", "someone/pvt-ade",
    ])  # fmt: skip
    assert [call[0] for call in hub.calls] == ["create_repo", "upload_folder"]
    uploaded = hub.snapshots[0]
    assert {"config.json", "preprocessor_config.json", "modeling_hf_pvt.py", "README.md", "eval_results.json"} <= set(
        uploaded
    )
    assert b"someone/pvt-ade" in uploaded["README.md"]
