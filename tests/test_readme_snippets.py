"""Every fenced ```python block of README.md runs, as written, in a fresh folder.

The blocks of one `## ` section run in order in one namespace (a reader copies them one after the other), each
section in its own namespace, with the working directory a temporary folder, so nothing lands in the repository.
Names a snippet uses must be defined by the README itself: the test injects none.

What the test puts in place of what cannot run here, each listed below and nowhere else:
- the released presets are built tiny (`from_preset` keeps the family member, shrinks widths and depths), so a
  snippet's code path runs in a second instead of on a 25M-parameter model;
- the paths a reader replaces with their own (`path/to/...`, `output/checkpoint-4000`, a Hub id such as
  `your-name/...`) are folders the test writes first (`STAND_INS`), holding tiny models of the kind the snippet loads;
- `tests/fixtures/...` (the repository's test images) resolves through a link to the repository's fixtures;
- the lines in `NEEDS_NETWORK` upload to the Hub: the test runs them offline (`HF_HUB_OFFLINE=1`) and checks that
  they stop with `hf_pvt.HubUploadError`.

Whatever the snippets write must be a path that a checkout's .gitignore keeps out of the repository (`outputs/`).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import hf_pvt
from hf_pvt import HfPvtConfig

REPOSITORY = Path(__file__).resolve().parent.parent
README = REPOSITORY / "README.md"

# The sizes every preset is shrunk to (the snippet's own keyword arguments still win).
TINY_PRESET = {
    "hidden_sizes": [16, 32, 48, 64],
    "num_attention_heads": [1, 2, 3, 4],
    "depths": [1, 1, 1, 1],
    "mlp_ratios": [2, 2, 2, 2],
    "decoder_hidden_size": 32,
    "decoder_head_size": 32,
    "detection_feat_channels": 32,
    "detection_num_convs": 1,
}

# Lines that upload to the Hub (matched without their trailing comment). Offline they must raise HubUploadError.
NEEDS_NETWORK = {
    'hf_pvt.push_to_hub("outputs/upernet-pvt-v2-b2", "your-name/upernet-pvt-v2-b2")',
}

# Paths a reader replaces with their own, or Hub ids a snippet loads -> how the test makes that folder before the
# first block that names it. Hub ids get the folder an earlier block of the section saved (what push_to_hub uploads).
def _tiny_folder(class_name: str):
    def make(folder: Path) -> None:
        config = HfPvtConfig.from_preset("pvt-v2-b2", num_labels=1000)
        getattr(hf_pvt, class_name)(config).save_pretrained(folder)
        hf_pvt.HfPvtImageProcessor().save_pretrained(folder)

    return make


def _saved_upernet(folder: Path) -> None:
    """A folder as Trainer writes it: Transformers' UperNet on an hf_pvt backbone, saved with save_pretrained."""
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    backbone = HfPvtConfig.from_preset("pvt-v2-b2", out_features=["stage1", "stage2", "stage3", "stage4"])
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, hidden_size=32, num_labels=3))
    model.save_pretrained(folder)


def _copy_of(saved: str):
    """The folder an earlier block saved, once it exists (the block that saves it may name the Hub id too)."""

    def make(folder: Path) -> bool:
        if not Path(saved).is_dir():
            return False
        shutil.copytree(saved, folder)
        return True

    return make


STAND_INS = {
    "path/to/folder": _tiny_folder("HfPvtBackbone"),
    "path/to/pvt-v2-b2-classifier": _tiny_folder("HfPvtForImageClassification"),
    "output/checkpoint-4000": _saved_upernet,
    "your-name/upernet-pvt-v2-b2": _copy_of("outputs/upernet-pvt-v2-b2"),
}


def python_blocks() -> dict[str, list[tuple[int, str]]]:
    """{section title: [(first line number, code), ...]} for every ```python block, in README order."""
    sections: dict[str, list[tuple[int, str]]] = {}
    section, block, start = "(top)", None, 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if block is None and line.startswith("## "):
            section = line[3:].strip()
        elif block is None and line.strip() == "```python":
            block, start = [], number + 1
        elif block is not None and line.strip() == "```":
            sections.setdefault(section, []).append((start, "\n".join(block)))
            block = None
        elif block is not None:
            block.append(line)
    assert block is None, "README.md has an unclosed ```python block"
    return sections


BLOCKS = python_blocks()


def test_readme_has_the_snippets_this_test_knows_about():
    # The stand-ins above are written for these sections; a new section with Python runs too (parametrized below),
    # and this list says where to look when one fails for want of a stand-in.
    assert {"A short tour", "Dense prediction", "Object detection", "Sharing dense models"} <= set(BLOCKS)
    for section, blocks in BLOCKS.items():
        for start, code in blocks:
            ast.parse(code, filename=f"README.md:{start} ({section})")


def _offline_call(code: str) -> str:
    """Wrap the NEEDS_NETWORK lines of `code` so that they must raise HubUploadError (and nothing else)."""
    lines = []
    for line in code.splitlines():
        bare = re.sub(r"\s+#.*$", "", line).strip()
        if bare in NEEDS_NETWORK:
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(f"{indent}_expect_offline_failure(lambda: {bare}, {bare!r})")
        else:
            lines.append(line)
    return "\n".join(lines)


def _expect_offline_failure(call, text: str) -> None:
    with pytest.raises(hf_pvt.HubUploadError):
        call()
    OFFLINE_CHECKED.append(text)


OFFLINE_CHECKED: list[str] = []


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    """A working directory with the stand-ins in place, presets made tiny and the Hub unreachable."""
    original = HfPvtConfig.from_preset.__func__

    def tiny_from_preset(cls, name, **kwargs):
        return original(cls, name, **{**TINY_PRESET, **kwargs})

    monkeypatch.setattr(HfPvtConfig, "from_preset", classmethod(tiny_from_preset))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests").mkdir()
    os.symlink(REPOSITORY / "tests" / "fixtures", tmp_path / "tests" / "fixtures")
    torch.manual_seed(0)
    return tmp_path


@pytest.mark.parametrize("section", sorted(BLOCKS))
def test_readme_section_runs(section, readme_folder):
    namespace: dict = {"__name__": "__readme__", "_expect_offline_failure": _expect_offline_failure}
    made = set()
    for start, code in BLOCKS[section]:
        for path, make in STAND_INS.items():
            if path in code and not (readme_folder / path).exists() and make(readme_folder / path) is not False:
                made.add(path.split("/")[0])
        compiled = compile(_offline_call(code), f"README.md:{start} ({section})", "exec")
        exec(compiled, namespace)  # noqa: S102 - running the README's own code is the point
        for line in NEEDS_NETWORK:
            assert line not in code or line in OFFLINE_CHECKED, f"README.md:{start}: {line} did not run"
    # What the snippets wrote would, run from a checkout, land where .gitignore keeps it out of the repository.
    for entry in sorted(readme_folder.iterdir()):
        if entry.name in made or entry.name == "tests":
            continue
        files = [p for p in entry.rglob("*") if p.is_file()] if entry.is_dir() else [entry]
        for file in files[:3]:
            relative = file.relative_to(readme_folder).as_posix()
            ignored = subprocess.run(["git", "-C", str(REPOSITORY), "check-ignore", "-q", "--no-index", relative])
            assert ignored.returncode == 0, f"the {section!r} snippets write {relative}, which git would not ignore"


def test_network_lines_are_in_the_readme():
    """Each NEEDS_NETWORK line still appears in the README, so the list cannot go stale unnoticed."""
    text = README.read_text(encoding="utf-8")
    for line in NEEDS_NETWORK:
        assert line in text, f"NEEDS_NETWORK lists a line the README no longer has: {line}"
