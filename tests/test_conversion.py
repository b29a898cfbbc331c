"""Checkpoint conversion: every source layout converts to a model that equals an independent implementation.

Ground truth: tests/reference_pvt.py (the authors' layout and numerics) and, for Transformers' folders,
Transformers' own PvtForImageClassification / PvtV2ForImageClassification.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CHECKPOINT, TINY_HEADS, tiny_reference

import hf_pvt  # noqa: F401  (registers the Auto classes)
from hf_pvt import HfPvtBackbone, HfPvtConfig, HfPvtForImageClassification
from hf_pvt import model_cards as model_card
from hf_pvt.conversion import cli, output_folder, verify
from hf_pvt.conversion import convert as convert_module
from hf_pvt.conversion.cli import main
from hf_pvt.conversion.convert import convert
from hf_pvt.conversion.detect import detect_architecture, match_preset
from hf_pvt.conversion.sources import ConversionError
from tests.reference_pvt import VARIANTS, build_reference, random_init_

REPO = Path(__file__).resolve().parent.parent
COCO = REPO / "tests" / "fixtures" / "coco_000000039769.png"
TINY = {**TINY_CHECKPOINT, "num_classes": 10}
KINDS = {"v1": {"version": 1}, "v2": {"version": 2}, "v2-linear": {"version": 2, "linear": True}}


def pixels(size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def run(*argv) -> int:
    return main([str(a) for a in argv])


def no_leftovers(parent: Path, name: str) -> bool:
    return not any(p.name == name or p.name.startswith(f".{name}.") for p in parent.iterdir())


# ------------------------------------------------------------------------------------ original layout


@pytest.mark.parametrize(
    "kind,torch_format,wrapping",
    [
        ("v1", "legacy", "raw"),
        ("v1", "zip", "model"),
        ("v1", "zip", "backbone-prefix"),
        ("v2", "legacy", "raw"),
        ("v2", "zip", "state_dict"),
        ("v2", "zip", "model"),
        ("v2-linear", "legacy", "state_dict"),
        ("v2-linear", "zip", "backbone-prefix"),
    ],
)
def test_original_layout_converts_to_the_reference_numerics(tmp_path, kind, torch_format, wrapping):
    reference = tiny_reference(kind, **TINY)
    state_dict = reference.state_dict()
    if wrapping == "model":
        state_dict = {"model": state_dict, "epoch": 300, "optimizer": {"state": {}, "param_groups": []}}
    elif wrapping == "state_dict":
        state_dict = {"state_dict": state_dict, "meta": {"epoch": 12}}
    elif wrapping == "backbone-prefix":
        state_dict = {"state_dict": {f"backbone.{k}": v for k, v in state_dict.items()}}
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save(state_dict, checkpoint, _use_new_zipfile_serialization=torch_format == "zip")

    assert run(checkpoint, tmp_path / "out", "--num-heads", TINY_HEADS) == 0
    model = HfPvtForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = pixels()
    with torch.no_grad():
        assert (model(pixel_values=x).logits - reference(x)).abs().max() < 1e-5
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["pvt_version"] == KINDS[kind]["version"]
    assert config["linear_attention"] == (kind == "v2-linear")
    assert config["architectures"] == ["HfPvtForImageClassification"]


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_detector_checkpoint_converts_to_a_backbone(tmp_path, kind, capsys):
    reference = tiny_reference(kind, **TINY)
    dense = {k: v for k, v in reference.state_dict().items() if not k.startswith("head.")}
    if kind == "v1":  # the authors' dense-prediction PVT has no cls token and no final norm
        dense = {k: v for k, v in dense.items() if k != "cls_token" and not k.startswith("norm.")}
    wrapped = {f"backbone.{k}": v for k, v in dense.items()}
    wrapped["neck.lateral_convs.0.conv.weight"] = torch.zeros(8, 16, 1, 1)
    torch.save({"state_dict": wrapped, "meta": {}}, tmp_path / "retinanet.pth")

    assert run(tmp_path / "retinanet.pth", tmp_path / "out", "--num-heads", TINY_HEADS) == 0
    assert "left out 1 tensors" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["HfPvtBackbone"]
    backbone = HfPvtBackbone.from_pretrained(tmp_path / "out", out_indices=[0, 1, 2, 3]).eval()
    x = pixels()
    with torch.no_grad():
        ours, theirs = backbone(pixel_values=x).feature_maps, reference.forward_dense(x)
    assert len(ours) == 4
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) < 1e-5


def test_classification_checkpoint_converts_to_a_backbone_on_request(tmp_path, capsys):
    torch.save(tiny_reference("v1", **TINY).state_dict(), tmp_path / "cls.pth")
    assert run(tmp_path / "cls.pth", tmp_path / "out", "--num-heads", TINY_HEADS, "--task", "backbone") == 0
    out = capsys.readouterr().out
    assert "head.weight" in out and "cls_token" in out and "norm.weight" in out


# ------------------------------------------------------------------------------ other source layouts


def to_timm_layout(state_dict: dict) -> dict:
    """timm's pvt_v2 names, written from timm's module tree (patch_embed, stages.i.downsample/blocks/norm)."""
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("patch_embed1."):
            key = "patch_embed." + key[len("patch_embed1.") :]
        elif m := re.match(r"patch_embed(\d)\.(.*)", key):
            key = f"stages.{int(m[1]) - 1}.downsample.{m[2]}"
        elif m := re.match(r"block(\d)\.(.*)", key):
            key = f"stages.{int(m[1]) - 1}.blocks.{m[2]}".replace(".dwconv.dwconv.", ".dwconv.")
        elif m := re.match(r"norm(\d)\.(.*)", key):
            key = f"stages.{int(m[1]) - 1}.norm.{m[2]}"
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("kind", ["v2", "v2-linear"])
def test_timm_layout(tmp_path, kind):
    reference = tiny_reference(kind, **TINY)
    timm_state = to_timm_layout(reference.state_dict())
    assert "stages.1.downsample.proj.weight" in timm_state and "stages.0.blocks.0.mlp.dwconv.weight" in timm_state
    torch.save(timm_state, tmp_path / "timm.pth")
    assert run(tmp_path / "timm.pth", tmp_path / "out", "--num-heads", TINY_HEADS) == 0
    model = HfPvtForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = pixels()
    with torch.no_grad():
        assert (model(pixel_values=x).logits - reference(x)).abs().max() < 1e-5


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            is_norm_weight = "layer_norm" in name and name.endswith("weight")
            parameter.copy_(1.0 + 0.1 * noise if is_norm_weight else 0.05 * noise)


@pytest.mark.parametrize("kind,weights_file", [("v1", "safetensors"), ("v2", "bin"), ("v2-linear", "safetensors")])
def test_transformers_folders(tmp_path, kind, weights_file):
    from transformers import PvtConfig, PvtForImageClassification, PvtV2Config, PvtV2ForImageClassification

    sizes = {"hidden_sizes": TINY["embed_dims"], "num_attention_heads": TINY["num_heads"], "depths": TINY["depths"]}
    sizes.update(mlp_ratios=TINY["mlp_ratios"], sr_ratios=TINY["sr_ratios"], num_labels=10)
    if kind == "v1":
        theirs = PvtForImageClassification(PvtConfig(image_size=64, **sizes))
    else:
        theirs = PvtV2ForImageClassification(PvtV2Config(linear_attention=kind == "v2-linear", **sizes))
    _randomise(theirs.eval())
    folder = tmp_path / "transformers"
    if weights_file == "safetensors":
        theirs.save_pretrained(folder)
    else:
        theirs.config.save_pretrained(folder)
        torch.save(theirs.state_dict(), folder / "pytorch_model.bin")

    assert run(folder, tmp_path / "out") == 0  # heads come from the folder's config.json
    # Transformers' ports use LayerNorm eps 1e-6 everywhere; with that eps hf_pvt must compute the same function.
    ours = HfPvtForImageClassification.from_pretrained(tmp_path / "out", embedding_layer_norm_eps=1e-6).eval()
    x = pixels()
    with torch.no_grad():
        assert (ours(pixel_values=x).logits - theirs(pixel_values=x).logits).abs().max() < 1e-5
    assert ours.config.num_attention_heads == TINY["num_heads"]


# ----------------------------------------------------------------------------- variants and detection


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_released_variant_is_detected(name):
    with torch.device("meta"):
        reference = build_reference(name)
    architecture = detect_architecture(dict(reference.state_dict()))
    assert match_preset(architecture) == name.replace("_", "-")


def test_pvt_v2_b0_full_conversion(tmp_path):
    reference = random_init_(build_reference("pvt_v2_b0"), 3)
    torch.save(reference.state_dict(), tmp_path / "b0.pth", _use_new_zipfile_serialization=False)
    conversion = convert(tmp_path / "b0.pth")
    assert conversion.variant == "pvt-v2-b0" and conversion.num_source_tensors == len(reference.state_dict())
    x = pixels(64)[:1]
    with torch.no_grad():
        assert (conversion.model(pixel_values=x).logits - reference(x)).abs().max() < 1e-5
    assert conversion.model.config.id2label[281] == "tabby"


# ------------------------------------------------------------------------------------------ errors


def _tiny_checkpoint(tmp_path: Path, edit=None, name: str = "ckpt.pth") -> Path:
    state_dict = dict(tiny_reference("v2", **TINY).state_dict())
    if edit is not None:
        edit(state_dict)
    torch.save(state_dict, tmp_path / name)
    return tmp_path / name


def _fails(tmp_path: Path, capsys, *argv) -> str:
    assert run(*argv) == 1
    assert no_leftovers(tmp_path, "out")
    return capsys.readouterr().err


def test_unknown_missing_and_misshaped_keys_are_listed(tmp_path, capsys):
    def edit(sd):
        sd["block1.0.attn.extra.weight"] = torch.zeros(3)
        del sd["block2.1.mlp.fc2.bias"]
        sd["head.bias"] = torch.zeros(11)

    err = _fails(tmp_path, capsys, _tiny_checkpoint(tmp_path, edit), tmp_path / "out", "--num-heads", TINY_HEADS)
    assert "1 unknown keys: block1.0.attn.extra.weight" in err
    assert "1 missing keys: pvt.stages.1.blocks.1.mlp.fc2.bias" in err
    assert "head.bias: checkpoint (11,), model (10,)" in err


def test_conflicting_variant_names_the_fields(tmp_path, capsys):
    torch.save(random_init_(build_reference("pvt_v2_b0")).state_dict(), tmp_path / "b0.pth")
    err = _fails(tmp_path, capsys, tmp_path / "b0.pth", tmp_path / "out", "--variant", "pvt_v2_b2")
    assert "not pvt-v2-b2" in err and "hidden_sizes: checkpoint [32, 64, 160, 256]" in err and "depths:" in err


@pytest.mark.parametrize("torch_format", ["zip", "legacy"])
def test_truncated_file(tmp_path, capsys, torch_format):
    path = _tiny_checkpoint(tmp_path)
    torch.save(torch.load(path), path, _use_new_zipfile_serialization=torch_format == "zip")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    err = _fails(tmp_path, capsys, path, tmp_path / "out", "--num-heads", TINY_HEADS)
    assert "truncated or not a checkpoint" in err


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"patch_embed1.proj.weight": torch.zeros(1), "payload": _Payload(marker)}, tmp_path / "evil.pth")
    err = _fails(tmp_path, capsys, tmp_path / "evil.pth", tmp_path / "out")
    assert "Refused to load" in err and "system" in err
    assert not marker.exists()


def test_existing_output_needs_overwrite_and_failed_writes_leave_nothing(tmp_path, capsys, monkeypatch):
    checkpoint = _tiny_checkpoint(tmp_path)
    (tmp_path / "out").mkdir()
    assert run(checkpoint, tmp_path / "out", "--num-heads", TINY_HEADS) == 1
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "out").rmdir()

    def broken_card(*args, **kwargs):
        raise ConversionError("disk full while writing README.md")

    monkeypatch.setattr(convert_module, "render_conversion_card", broken_card)
    assert _fails(tmp_path, capsys, checkpoint, tmp_path / "out", "--num-heads", TINY_HEADS)


# ------------------------------------------------------------------------------- the Hub folder


def test_folder_is_hub_ready_and_loads_with_remote_code_alone(tmp_path):
    reference = random_init_(build_reference({**VARIANTS["pvt_v2_b0"], **TINY}), 0)
    torch.save(reference.state_dict(), tmp_path / "ckpt.pth")
    assert run(tmp_path / "ckpt.pth", tmp_path / "out", "--num-heads", TINY_HEADS) == 0
    folder = tmp_path / "out"
    assert {p.name for p in folder.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "configuration_hf_pvt.py",
        "modeling_hf_pvt.py",
        "image_processing_hf_pvt.py",
    }
    assert not list(folder.glob("*.bin"))
    assert "AutoModelForImageClassification" in json.loads((folder / "config.json").read_text())["auto_map"]
    x = pixels()
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(reference(x), tmp_path / "expected.pt")
    # A fresh interpreter without hf_pvt on its path: only the folder's own code is available.
    script = (
        "import sys, torch\n"
        "from transformers import AutoImageProcessor, AutoModelForImageClassification\n"
        f"model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()\n"
        f"AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "assert 'hf_pvt' not in sys.modules\n"
        f"x, expected = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "print(float((model(pixel_values=x).logits - expected).abs().max()))\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


@pytest.mark.parametrize("network", ["offline", "refused"])
def test_push_without_network_fails_clearly_and_keeps_the_folder(tmp_path, capsys, monkeypatch, network):
    from huggingface_hub import constants

    # Never the real Hub: an endpoint nothing listens on, and (first case) offline mode on top.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    if network == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    checkpoint = _tiny_checkpoint(tmp_path)
    assert run(checkpoint, tmp_path / "out", "--num-heads", TINY_HEADS, "--push-to-hub", "someone/pvt-test") == 1
    err = capsys.readouterr().err
    assert "Upload to someone/pvt-test failed" in err and "intact" in err
    assert ("offline" in err.lower()) if network == "offline" else ("connect" in err.lower())
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------ verification


def test_verify_reports_mismatch_for_random_weights_and_match_for_its_own_logits(tmp_path, monkeypatch):
    torch.save(random_init_(build_reference("pvt_v2_b0"), 5).state_dict(), tmp_path / "b0.pth")
    model = convert(tmp_path / "b0.pth").model
    result = verify.verify_classifier(model, COCO, "pvt-v2-b0")
    assert result.matches is False and "MISMATCH" in result.report()
    assert len(result.top5) == 5 and all(isinstance(label, str) for _, label, _ in result.top5)

    monkeypatch.setitem(verify.PUBLISHED_LOGITS, "pvt-v2-b0", result.first_logits)
    again = verify.verify_classifier(model, COCO, "pvt-v2-b0")
    assert again.matches is True and again.max_abs_diff < 1e-4 and "MATCH" in again.report()

    monkeypatch.setitem(verify.PUBLISHED_LOGITS, "pvt-v2-b0", [9.0, 9.0, 9.0])
    assert run(tmp_path / "b0.pth", tmp_path / "out2", "--verify", COCO) == 1
    assert no_leftovers(tmp_path, "out2")


# ------------------------------------------------------------------------------------------- cards


def test_model_cards_are_up_to_date_and_their_metadata_parses():
    rendered = model_card.render_variant_cards()
    assert len(rendered) == 11
    for name, card in rendered.items():
        committed = REPO / "model_cards" / name
        assert committed.is_file(), f"run `python -m hf_pvt.conversion.model_card` to create {committed}"
        assert committed.read_text() == card, f"{committed} is stale: run `python -m hf_pvt.conversion.model_card`"
        front_matter = yaml.safe_load(card.split("---\n")[1])
        assert front_matter["license"] == "apache-2.0" and front_matter["library_name"] == "transformers"
        assert {"image-classification", "vision", "pvt", "hf_pvt"} <= set(front_matter["tags"])
        assert front_matter["datasets"] == ["imagenet-1k"]
        top1 = front_matter["model-index"][0]["results"][0]["metrics"][0]["value"]
        assert top1 == model_card.RESULTS[name[: -len(".md")]]["top1"]
        assert "trust_remote_code=True" in card and "import hf_pvt" in card and "box AP" in card


# --------------------------------------------------------------------- honest cards (issue 12, item 5)


def _card(folder: Path) -> str:
    return (folder / "README.md").read_text()


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def _transformers_b0_folder(folder: Path) -> Path:
    from transformers import PvtV2Config, PvtV2ForImageClassification

    preset = HfPvtConfig.from_preset("pvt-v2-b0")
    sizes = {k: getattr(preset, k) for k in ("hidden_sizes", "num_attention_heads", "depths", "mlp_ratios")}
    theirs = PvtV2ForImageClassification(PvtV2Config(num_labels=1000, sr_ratios=preset.sr_ratios, **sizes))
    _randomise(theirs, seed=4)
    theirs.save_pretrained(folder)
    return folder


def test_card_states_published_results_only_for_the_authors_exact_release(tmp_path, capsys, monkeypatch):
    reference = random_init_(build_reference("pvt_v2_b0"), 3)
    torch.save(reference.state_dict(), tmp_path / "b0.pth")
    assert run(tmp_path / "b0.pth", tmp_path / "authors") == 0
    card = _card(tmp_path / "authors")
    assert "70.5% top-1" in card and "the weights are the authors' own" in card
    assert _front_matter(card)["model-index"][0]["results"][0]["metrics"][0]["value"] == 70.5

    def assert_no_claims(card: str, source: str) -> None:
        assert "70.5" not in card and "authors' own" not in card and "trained on ImageNet-1k" not in card
        assert "model-index" not in _front_matter(card) and "datasets" not in _front_matter(card)
        assert f"converted from `{source}`" in card and "reports no results" in card

    # Other head counts: the same tensor shapes, but not the released architecture.
    assert run(tmp_path / "b0.pth", tmp_path / "heads", "--num-heads", "2,2,5,8") == 0
    assert "with attention heads [2, 2, 5, 8] (not [1, 2, 5, 8]) this is a custom model" in capsys.readouterr().out
    assert json.loads((tmp_path / "heads" / "config.json").read_text())["num_attention_heads"] == [2, 2, 5, 8]
    assert_no_claims(_card(tmp_path / "heads"), "b0.pth")
    assert "PVT (custom configuration)" in _card(tmp_path / "heads")
    err = _fails(
        tmp_path, capsys, tmp_path / "b0.pth", tmp_path / "out", "--variant", "pvt-v2-b0", "--num-heads", "2,2,5,8"
    )
    assert "--variant pvt-v2-b0 has attention heads [1, 2, 5, 8]" in err

    # A fine-tuned head (10 classes) on the released architecture: no ImageNet accuracy.
    tuned = random_init_(build_reference("pvt_v2_b0", num_classes=10), 3)
    torch.save(tuned.state_dict(), tmp_path / "tuned.pth")
    assert run(tmp_path / "tuned.pth", tmp_path / "tuned") == 0
    assert_no_claims(_card(tmp_path / "tuned"), "tuned.pth")

    # A Transformers folder of the exact architecture holds weights of unknown origin (random here) ...
    folder = _transformers_b0_folder(tmp_path / "transformers")
    assert run(folder, tmp_path / "from-transformers") == 0
    card = _card(tmp_path / "from-transformers")
    assert_no_claims(card, "transformers")
    assert "Transformers `pvt_v2` folder" in card and "PVT with the PVTv2-B0 architecture" in card
    # ... unless --verify reproduces the published logits: then they are the authors' weights, whatever the layout.
    logits = verify.verify_classifier(convert(folder).model, COCO, "pvt-v2-b0").first_logits
    monkeypatch.setitem(verify.PUBLISHED_LOGITS, "pvt-v2-b0", logits)
    assert run(folder, tmp_path / "verified", "--verify", COCO) == 0
    assert "70.5% top-1" in _card(tmp_path / "verified")


# --------------------------------------------------------------- output safety (issue 12, item 5)


def test_output_that_is_or_contains_the_source_is_refused(tmp_path, capsys):
    (tmp_path / "ckpts").mkdir()
    checkpoint = _tiny_checkpoint(tmp_path / "ckpts")
    content = checkpoint.read_bytes()
    for output in (tmp_path / "ckpts", tmp_path, checkpoint):
        assert run(checkpoint, output, "--overwrite", "--num-heads", TINY_HEADS) == 1
        assert "is the source or contains it" in capsys.readouterr().err
    assert checkpoint.read_bytes() == content and sorted(os.listdir(tmp_path / "ckpts")) == ["ckpt.pth"]

    folder = _transformers_b0_folder(tmp_path / "transformers")
    before = sorted(os.listdir(folder))
    assert run(folder, folder, "--overwrite") == 1
    assert "is the source or contains it" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == before
    assert run(folder, folder / "converted") == 0  # writing inside the source folder is harmless


def test_overwrite_replaces_only_a_model_folder_and_leaves_nothing_beside_it(tmp_path, capsys):
    checkpoint = _tiny_checkpoint(tmp_path)
    out = tmp_path / "out"
    out.write_text("not a folder")
    assert run(checkpoint, out, "--overwrite", "--num-heads", TINY_HEADS) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "out"]
    out.unlink()

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run(checkpoint, out, "--overwrite", "--num-heads", TINY_HEADS) == 1
    assert "not a model folder" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()

    assert run(checkpoint, out, "--overwrite", "--num-heads", TINY_HEADS) == 0  # empty folder
    first = (out / "model.safetensors").read_bytes()
    other = _tiny_checkpoint(tmp_path, lambda sd: sd["head.bias"].add_(1.0), name="other.pth")
    assert run(other, out, "--overwrite", "--num-heads", TINY_HEADS) == 0  # a previous conversion
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "other.pth", "out"]


def test_output_folders_get_the_permissions_of_mkdir(tmp_path):
    checkpoint = _tiny_checkpoint(tmp_path)
    for umask, folder_mode, file_mode in ((0o022, 0o755, 0o644), (0o027, 0o750, 0o640)):
        previous = os.umask(umask)
        try:
            assert run(checkpoint, tmp_path / f"u{umask:o}" / "out", "--num-heads", TINY_HEADS) == 0
        finally:
            os.umask(previous)
        out = tmp_path / f"u{umask:o}" / "out"
        assert out.stat().st_mode & 0o777 == folder_mode
        assert out.parent.stat().st_mode & 0o777 == folder_mode
        assert (out / "model.safetensors").stat().st_mode & 0o777 == file_mode


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_killed_runs_are_cleaned_by_the_next_run(tmp_path, capsys):
    checkpoint = _tiny_checkpoint(tmp_path)
    # A conversion killed (SIGKILL) after writing its staging folder, before renaming it into place.
    script = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from hf_pvt.conversion import cli\n"
        "write = cli.write_folder\n"
        "def write_then_die(*args, **kwargs):\n"
        "    write(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "cli.write_folder = write_then_die\n"
        f"cli.main([{str(checkpoint)!r}, {str(tmp_path / 'out')!r}, '--num-heads', {TINY_HEADS!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -9, result.stderr[-2000:]
    (staging,) = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert staging.name.startswith(".out.") and (staging / "model.safetensors").is_file()
    assert staging.stat().st_mode & 0o777 == 0o777 & ~_umask()

    # An --overwrite killed between moving the old folder aside and moving the new one in.
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "config.json").write_text("{}")
    old = output_folder.side_entry(tmp_path / "kept", "old", pid=_dead_pid())
    os.rename(tmp_path / "kept", old)
    # A live run's staging folder (this process's parent) is never touched.
    live = output_folder.side_entry(tmp_path / "busy", "partial", pid=os.getppid())
    live.mkdir()

    assert run(checkpoint, tmp_path / "out", "--num-heads", TINY_HEADS) == 0
    out = capsys.readouterr().out
    assert f"removed {staging.name}" in out and f"restored {tmp_path / 'kept'}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt.pth", "kept", "out", live.name])
    assert (tmp_path / "kept" / "config.json").read_text() == "{}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_sigterm_and_ctrl_c_leave_nothing(tmp_path, capsys, monkeypatch):
    checkpoint = _tiny_checkpoint(tmp_path)
    write = cli.write_folder

    def write_then_terminate(*args, **kwargs):
        write(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli, "write_folder", write_then_terminate)
    assert run(checkpoint, tmp_path / "a" / "b" / "out", "--num-heads", TINY_HEADS) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]  # nor the parents it created
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# -------------------------------------------------------- checks before any work (issue 12, item 5)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--push-to-hub", "not a repo id"], "is not a valid Hub repo id"),
        (["--push-to-hub", "a/b/c"], "is not a valid Hub repo id"),
        (["--verify", "missing.png"], "no such file"),
        (["--verify", "ckpt.pth"], "not a readable image"),
        (["--verify", str(COCO), "--task", "backbone"], "cannot check a --task backbone model"),
        (["--variant", "pvt-v3-b9"], "Unknown --variant 'pvt-v3-b9'"),
        (["--num-heads", "1,0,2,2"], "--num-heads must be positive integers"),
        (["--private"], "--private applies to the repo --push-to-hub creates"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, monkeypatch, extra, message):
    checkpoint = _tiny_checkpoint(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("the conversion started despite a bad argument")

    monkeypatch.setattr(cli, "convert", no_work)
    monkeypatch.chdir(tmp_path)
    err = _fails(tmp_path, capsys, checkpoint, tmp_path / "out", *extra)
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


# --------------------------------------------------- one `error:` line per bad input (issue 12, item 5)


def _write_bytes(name: str, data: bytes):
    def make(tmp_path: Path) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    return make


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tiny_reference("v2", **TINY).state_dict().items()})


def _folder(config, index=None, shards=()):
    def make(tmp_path: Path) -> Path:
        folder = tmp_path / "folder"
        folder.mkdir()
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        if index is not None:
            (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        for name in shards:
            (folder / name).write_bytes(_safetensors_bytes())
        return folder

    return make


def _with_tensor(key: str, make_tensor):
    def make(tmp_path: Path) -> Path:
        state_dict = dict(tiny_reference("v2", **TINY).state_dict())
        state_dict[key] = make_tensor(state_dict[key])
        torch.save(state_dict, tmp_path / "ckpt.pth")
        return tmp_path / "ckpt.pth"

    return make


PVT_V2 = {"model_type": "pvt_v2", "num_attention_heads": [1, 2, 3, 4]}
BAD_INPUTS = {
    "empty .pth": (_write_bytes("x.pth", b""), "is empty (0 bytes)"),
    "random bytes .pth": (_write_bytes("x.pth", bytes(range(256)) * 40), "truncated or not a checkpoint"),
    "empty .safetensors": (_write_bytes("x.safetensors", b""), "is empty (0 bytes)"),
    "random .safetensors": (_write_bytes("x.safetensors", bytes(range(256)) * 40), "not a safetensors file"),
    "truncated .safetensors": (_write_bytes("x.safetensors", _safetensors_bytes()[:5000]), "truncated"),
    "config.json not JSON": (_folder("{not json"), "is not valid JSON"),
    "config.json a list": (_folder("[1, 2]"), "holds a JSON list"),
    "foreign model type": (_folder({"model_type": "vit"}), "model_type 'vit', which is not a PVT model"),
    "an hf_pvt folder": (_folder({"model_type": "hf_pvt"}), "already an hf_pvt folder: load it with from_pretrained"),
    "no weights": (_folder(PVT_V2), "has no model.safetensors"),
    "missing shard": (_folder(PVT_V2, {"weight_map": {"a": "model-1.safetensors"}}), "lacks the shards"),
    "index without map": (_folder(PVT_V2, {"metadata": {}}), "has no 'weight_map'"),
    "shard outside": (_folder(PVT_V2, {"weight_map": {"a": "../ckpt.safetensors"}}), "not a file of"),
    "absolute shard": (_folder(PVT_V2, {"weight_map": {"a": "/etc/passwd"}}), "not a file of"),
    "int8 tensor": (_with_tensor("head.bias", lambda t: t.to(torch.int8)), "head.bias (torch.int8)"),
    "complex tensor": (_with_tensor("head.bias", lambda t: t.to(torch.complex64)), "are not floating point"),
    "NaN weights": (_with_tensor("head.bias", lambda t: t.index_fill(0, torch.tensor([1]), float("nan"))), "NaN"),
    "Inf weights": (_with_tensor("block1.0.attn.q.weight", lambda t: t * float("inf")), "infinite values"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_give_one_error_line(tmp_path, capsys, name):
    make, message = BAD_INPUTS[name]
    (tmp_path / "ckpt.safetensors").write_bytes(_safetensors_bytes())  # what '../' shards would reach
    err = _fails(tmp_path, capsys, make(tmp_path), tmp_path / "out", "--num-heads", TINY_HEADS)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err
    assert "calls code" not in err  # only a pickle that names a global is called malicious


def test_non_finite_weights_convert_only_when_allowed(tmp_path, capsys):
    checkpoint = BAD_INPUTS["NaN weights"][0](tmp_path)
    assert run(checkpoint, tmp_path / "out", "--num-heads", TINY_HEADS, "--allow-non-finite") == 0
    err = capsys.readouterr().err
    assert "warning: converted 1 tensors holding NaN or infinite values: head.bias (1 of 10 values)" in err
    model = HfPvtForImageClassification.from_pretrained(tmp_path / "out")
    assert model.classifier.bias.isnan().sum() == 1


@pytest.mark.parametrize("where", ["parent is a file", "mkdir refused"])
def test_unwritable_destination_is_one_error_line_before_the_conversion(tmp_path, capsys, monkeypatch, where):
    checkpoint = _tiny_checkpoint(tmp_path)
    monkeypatch.setattr(cli, "convert", lambda *a, **k: pytest.fail("converted into nowhere"))
    if where == "parent is a file":
        (tmp_path / "file").write_text("")
        output, message = tmp_path / "file" / "out", "is a file, not a folder"
    else:  # what a read-only folder does to a non-root user (tests may run as root, which may write anywhere)

        def refuse(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(output_folder.os, "mkdir", refuse)
        output, message = tmp_path / "new" / "out", "Permission denied"
    assert run(checkpoint, output, "--num-heads", TINY_HEADS) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) in (["ckpt.pth", "file"], ["ckpt.pth"])


def test_unexpected_failures_are_one_line_unless_debugging(tmp_path, capsys, monkeypatch):
    checkpoint = _tiny_checkpoint(tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("something nobody anticipated\nsecond line")

    monkeypatch.setattr(cli, "convert", boom)
    err = _fails(tmp_path, capsys, checkpoint, tmp_path / "out", "--num-heads", TINY_HEADS)
    expected = "RuntimeError: something nobody anticipated. Nothing was written; rerun with --debug for the traceback."
    assert err == f"error: {expected}\n"
    with pytest.raises(RuntimeError, match="nobody anticipated"):
        run(checkpoint, tmp_path / "out", "--num-heads", TINY_HEADS, "--debug")
    assert no_leftovers(tmp_path, "out")
