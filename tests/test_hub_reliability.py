"""Hub sharing under issue 20 (reliability, round three): `make_hub_ready`, `save_for_hub` and `push_to_hub` check
everything before writing, write all or nothing (`config.json` last), replace links instead of writing through them,
and answer every bad input with a TypeError/ValueError that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from transformers import DetrConfig, DetrForObjectDetection

import hf_pvt
from hf_pvt import HfPvtForImageClassification, HfPvtImageProcessor, make_hub_ready, push_to_hub, save_for_hub

CODE = {"hub_hf_pvt.py", "configuration_hf_pvt.py", "modeling_hf_pvt.py"}


def detr(**backbone) -> DetrForObjectDetection:
    torch.manual_seed(0)
    config = DetrConfig(
        backbone_config=tiny_config("v2", depths=[1, 1, 1, 1], out_features=["stage4"], **backbone),
        use_timm_backbone=False, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16,
        decoder_ffn_dim=16, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=3, num_labels=2,
    )  # fmt: skip
    return DetrForObjectDetection(config)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Plain save_pretrained folders (no code, no auto_map for the head): a DETR head and an hf_pvt classifier."""
    root = tmp_path_factory.mktemp("saved")
    detr().save_pretrained(root / "detr")
    torch.manual_seed(0)
    HfPvtForImageClassification(tiny_config("v2", depths=[1, 1, 1, 1])).save_pretrained(root / "classifier")
    HfPvtImageProcessor().save_pretrained(root / "classifier")
    return root


def copy_of(saved: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved / name, tmp_path / name))


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under `root`, links not followed: a link's target, a file's bytes."""
    return {
        str(path.relative_to(root)): os.readlink(path) if path.is_symlink() else path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_symlink() or path.is_file()
    }


def edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def as_hub_cache(folder: Path) -> Path:
    """Lay `folder` out as the Hugging Face cache does: snapshots/<revision>/<file> links to blobs/<sha256>."""
    repo = folder.parent / f"models--someone--{folder.name}"
    (repo / "blobs").mkdir(parents=True)
    snapshot_dir = repo / "snapshots" / "0123abcd"
    snapshot_dir.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, repo / "blobs" / digest)
        (snapshot_dir / path.name).symlink_to(Path("../../blobs") / digest)
    return snapshot_dir


# ------------------------------------------------------------------------ item 1: links are never written through


def test_a_hub_cache_snapshot_is_made_ready_without_touching_its_blobs(saved, tmp_path):
    """Item 1: make_hub_ready rewrote config.json's blob in place, so the blob no longer matched its hash."""
    folder = as_hub_cache(copy_of(saved, "detr", tmp_path))
    blobs = folder.parent.parent / "blobs"
    before = snapshot(blobs)
    written = make_hub_ready(folder)
    assert snapshot(blobs) == before
    assert all(hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name for blob in blobs.iterdir())
    assert "config.json" in written and not (folder / "config.json").is_symlink()
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {"AutoConfig": "hub_hf_pvt.DetrConfig"}
    assert (folder / "model.safetensors").is_symlink()  # untouched files stay links
    assert CODE <= {p.name for p in folder.iterdir() if p.is_file()}


def test_a_linked_code_file_is_replaced_and_its_target_left_alone(saved, tmp_path):
    """Item 1: a linked modeling_hf_pvt.py overwrote the file it pointed to, wherever that was."""
    folder = copy_of(saved, "classifier", tmp_path)
    elsewhere = tmp_path / "someone_elses_modeling.py"
    elsewhere.write_text("# someone else's file\n")
    (folder / "modeling_hf_pvt.py").unlink()
    (folder / "modeling_hf_pvt.py").symlink_to(elsewhere)
    make_hub_ready(folder)
    assert elsewhere.read_text() == "# someone else's file\n"
    assert not (folder / "modeling_hf_pvt.py").is_symlink()
    package_file = Path(hf_pvt.__file__).parent / "modeling_hf_pvt.py"
    assert (folder / "modeling_hf_pvt.py").read_bytes() == package_file.read_bytes()


def test_code_linked_to_hf_pvt_itself_is_no_error(saved, tmp_path):
    """Item 6: a folder whose code links to the installed hf_pvt raised shutil.SameFileError."""
    folder = copy_of(saved, "classifier", tmp_path)
    package_file = Path(hf_pvt.__file__).parent / "configuration_hf_pvt.py"
    before = package_file.read_bytes()
    (folder / "configuration_hf_pvt.py").unlink()
    (folder / "configuration_hf_pvt.py").symlink_to(package_file)
    make_hub_ready(folder)
    assert package_file.read_bytes() == before


# ------------------------------------------------------------------------ item 4: all or nothing, config last


def test_a_write_that_fails_midway_changes_nothing(saved, tmp_path, monkeypatch):
    """Item 4: auto_map was rewritten before the code was copied, so an unwritable folder ended with a config
    pointing at code that was not there. Now every file is staged first; a failure leaves the folder as it was."""
    folder = copy_of(saved, "detr", tmp_path)
    before = snapshot(folder)
    original, calls = tempfile.mkstemp, []

    def fail_on_third(*args, **kwargs):
        calls.append(kwargs.get("prefix"))
        if len(calls) == 3:
            raise PermissionError(13, "Permission denied", kwargs.get("dir"))
        return original(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", fail_on_third)
    with pytest.raises(PermissionError, match="nothing was changed"):
        make_hub_ready(folder)
    assert snapshot(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda c: c["backbone_config"].update(pvt_version=7), ValueError, "pvt_version must be 1"),
        (lambda c: c["backbone_config"].update(pvt_version="2"), TypeError, "pvt_version"),
        (lambda c: c["backbone_config"].update(pvt_version=None), TypeError, "pvt_version"),
        (lambda c: c["backbone_config"].update(hidden_sizes="16"), TypeError, "hidden_sizes"),
        (lambda c: c.update(architectures=5), TypeError, "architectures must be a list"),
        (lambda c: c.update(auto_map="str"), TypeError, "auto_map must be a JSON object"),
        (lambda c: c.update(auto_map={"AutoModel": 5}), TypeError, r"auto_map\['AutoModel'\]"),
        (lambda c: c.update(auto_map={"AutoTokenizer": ["tokenization_x.Tok", None]}), ValueError,
         "neither hf_pvt nor"),
        (lambda c: c.update(model_type=None), ValueError, "model_type must be a string"),
    ],
)  # fmt: skip
def test_bad_head_configurations_are_refused_before_anything_is_written(saved, tmp_path, edit, error, message):
    """Items 4 and 6: a backbone config with pvt_version 7 was rewritten and then failed with KeyError: 7; other
    values raised KeyError, AttributeError or unclear TypeErrors. Each is now refused, naming the field, and the
    folder is left as it was."""
    folder = copy_of(saved, "detr", tmp_path)
    edit_config(folder, edit)
    before = snapshot(folder)
    with pytest.raises(error, match=message):
        make_hub_ready(folder)
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda c: c.update(pvt_version=3), ValueError, "pvt_version must be 1"),
        (lambda c: c.update(hidden_sizes="16"), TypeError, "hidden_sizes"),
        (lambda c: c.update(depths=[1, 1, 1]), ValueError, "depths"),
    ],
)
def test_configurations_hf_pvt_would_refuse_are_not_made_hub_ready(saved, tmp_path, edit, error, message):
    """Item 6: a folder hf_pvt itself refuses to load (string hidden_sizes) was made "Hub-ready"."""
    folder = copy_of(saved, "classifier", tmp_path)
    edit_config(folder, edit)
    before = snapshot(folder)
    with pytest.raises(error, match=message):
        make_hub_ready(folder)
    assert snapshot(folder) == before


def test_list_valued_auto_map_entries_are_kept(saved, tmp_path):
    """Item 6: a list-valued auto_map entry (as Transformers writes for tokenizers) raised AttributeError. The
    author's own module in the folder is left alone, and so is a reference to another repository."""
    folder = copy_of(saved, "detr", tmp_path)
    (folder / "tokenization_x.py").write_text("class Tok: ...\n")
    tokenizer = ["tokenization_x.Tok", None]
    edit_config(folder, lambda c: c.update(auto_map={"AutoTokenizer": tokenizer, "AutoModel": "a/b--m.M"}))
    make_hub_ready(folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoTokenizer": tokenizer, "AutoModel": "a/b--m.M", "AutoConfig": "hub_hf_pvt.DetrConfig"}
    assert (folder / "tokenization_x.py").read_text() == "class Tok: ...\n"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "config.json").write_text('{"model_type": "detr", "x": ' + "[" * 100000 + "]" * 100000 + "}"),
         "nested too deeply"),
        (lambda f: (f / "config.json").write_text('{"model_type": "detr", "x": ' + "[" * 100 + "]" * 100 + "}"),
         "nested more than 64 levels"),
        (lambda f: (f / "config.json").write_text("[1, 2]"), "holds a JSON list, not an object"),
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:1000]),
         "model.safetensors is not a readable safetensors file"),
        (lambda f: (f / "README.md").mkdir(), "README.md is a folder"),
        (lambda f: (f / "modeling_hf_pvt.py").mkdir(), "modeling_hf_pvt.py is a folder"),
    ],
)  # fmt: skip
def test_damaged_folders_are_refused_and_left_as_they_were(saved, tmp_path, damage, message):
    """Item 6: deeply nested JSON raised RecursionError, truncated weights a SafetensorError."""
    folder = copy_of(saved, "detr", tmp_path)
    damage(folder)
    before = snapshot(folder)
    with pytest.raises(ValueError, match=message):
        make_hub_ready(folder)
    assert snapshot(folder) == before


def test_make_hub_ready_arguments(saved, tmp_path):
    folder = copy_of(saved, "classifier", tmp_path)
    for kwargs, error, message in [
        ({"folder": None}, TypeError, "folder must be a str or os.PathLike"),
        ({"folder": tmp_path / "missing"}, FileNotFoundError, "does not exist"),
        ({"folder": folder / "config.json"}, ValueError, "is a file"),
        ({"folder": folder, "repo_id": 5}, TypeError, "repo_id must be a str"),
        ({"folder": folder, "repo_id": "not a repo id"}, ValueError, "not a Hub repository id"),
        ({"folder": folder, "rewrite_model_card": "yes"}, TypeError, "rewrite_model_card must be True or False"),
    ]:
        with pytest.raises(error, match=message):
            make_hub_ready(**kwargs)
    assert not (folder / "README.md").exists()


# ------------------------------------------------------------------------ save_for_hub and push_to_hub arguments


def test_save_for_hub_checks_its_arguments_before_saving(tmp_path):
    """Item 6: `save_for_hub(model, d, image_processor="x")` failed only after the model was saved."""
    model = detr()
    for kwargs, error, message in [
        ({"image_processor": "x"}, TypeError, "image_processor must be an image processor"),
        ({"repo_id": "not a repo id"}, ValueError, "not a Hub repository id"),
    ]:
        with pytest.raises(error, match=message):
            save_for_hub(model, tmp_path / "new" / "out", **kwargs)
    with pytest.raises(TypeError, match="save_directory must be a str"):
        save_for_hub(model, None)
    model.config.backbone_config.depths = [1, 1, 1]  # changed after construction: no longer a valid configuration
    with pytest.raises(ValueError, match="depths has 3 entries"):
        save_for_hub(model, tmp_path / "new" / "out")
    assert list(tmp_path.iterdir()) == []


def test_save_for_hub_leaves_nothing_when_saving_fails(tmp_path):
    class BrokenProcessor:
        def save_pretrained(self, folder):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_for_hub(detr(), tmp_path / "new" / "out", image_processor=BrokenProcessor())
    assert list(tmp_path.iterdir()) == []
    folder = save_for_hub(detr(), tmp_path / "new" / "out", repo_id="someone/detr")
    assert {"config.json", "model.safetensors", "README.md", *CODE} <= {p.name for p in folder.iterdir()}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["out"]


def test_push_to_hub_checks_its_arguments(saved, tmp_path):
    """Item 10a: `push_to_hub(folder, None)` passed the repo-id check."""
    folder = copy_of(saved, "classifier", tmp_path)
    before = snapshot(folder)
    for args, kwargs, error, message in [
        ((folder, None), {}, TypeError, "repo_id must be a str"),
        ((folder, 5), {}, TypeError, "repo_id must be a str"),
        ((folder, ""), {}, ValueError, "not a Hub repository id"),
        ((folder, "someone/x"), {"private": "yes"}, TypeError, "private must be True or False"),
        ((folder, "someone/x"), {"token": 5}, TypeError, "token must be a str"),
        ((folder, "someone/x"), {"commit_message": ""}, ValueError, "commit_message must be a non-empty str"),
        ((folder, "someone/x"), {"ignore_patterns": [5]}, TypeError, "ignore_patterns must be"),
        ((None, "someone/x"), {}, TypeError, "folder must be a str"),
    ]:
        with pytest.raises(error, match=message):
            push_to_hub(*args, **kwargs)
    assert snapshot(folder) == before


def test_saving_code_replaces_a_linked_module_and_leaves_its_target_alone(tmp_path):
    from hf_pvt.configuration_hf_pvt import copy_remote_code

    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text("keep me\n")
    (tmp_path / "modeling_hf_pvt.py").symlink_to(elsewhere)
    copied = copy_remote_code(["modeling_hf_pvt"], tmp_path)
    assert "modeling_hf_pvt.py" in copied
    assert elsewhere.read_text() == "keep me\n"
    assert not (tmp_path / "modeling_hf_pvt.py").is_symlink()
    assert not list(tmp_path.glob(".*.partial"))
