"""Shared fixtures: tiny configurations of each family member, and the reference model with the same weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
FIXTURES = TESTS_DIR / "fixtures"
sys.path.insert(0, str(TESTS_DIR))
sys.path.insert(0, str(TESTS_DIR.parent))  # the repository root, for `tests.reference_pvt`

from reference_pvt import build_reference, random_init_  # noqa: E402

from hf_pvt import HfPvtConfig  # noqa: E402
from hf_pvt.conversion.layouts import ORIGINAL_TO_HF_PVT, rename_key  # noqa: E402

# Tiny but complete: four stages, every kind of spatial reduction, more than one block in a stage.
TINY = {
    "hidden_sizes": [16, 32, 48, 64],
    "num_attention_heads": [1, 2, 3, 4],
    "mlp_ratios": [2, 2, 2, 2],
    "depths": [2, 1, 1, 2],
    "sr_ratios": [8, 4, 2, 1],
}
FAMILY = {"v1": (1, False), "v2": (2, False), "v2-linear": (2, True)}
# The authors' layout of the tiny checkpoints the converter tests convert (stage 2 holds two blocks, so a `block2.1`
# exists), and their --num-heads: head counts leave no trace in the tensors.
TINY_CHECKPOINT = {
    "embed_dims": [16, 32, 48, 64],
    "num_heads": [1, 2, 3, 4],
    "depths": [1, 2, 1, 1],
    "mlp_ratios": [2, 2, 2, 2],
    "sr_ratios": [8, 4, 2, 1],
    "img_size": 64,
}
TINY_HEADS = "1,2,3,4"


def tiny_config(member: str = "v2", **overrides) -> HfPvtConfig:
    version, linear = FAMILY[member]
    return HfPvtConfig(**{**TINY, "pvt_version": version, "linear_attention": linear, "num_labels": 7, **overrides})


def tiny_reference(member: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """The authors' architecture in their key layout, with random non-trivial weights (`overrides`: the reference's
    constructor arguments, e.g. `**TINY_CHECKPOINT`)."""
    version, linear = FAMILY[member]
    reference = build_reference(
        {
            "embed_dims": TINY["hidden_sizes"],
            "num_heads": TINY["num_attention_heads"],
            "mlp_ratios": TINY["mlp_ratios"],
            "depths": TINY["depths"],
            "sr_ratios": TINY["sr_ratios"],
            "version": version,
            "linear": linear,
            "num_classes": 7,
            **overrides,
        }
    )
    return random_init_(reference, seed).eval()


def to_hf_pvt_state_dict(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {rename_key(key, ORIGINAL_TO_HF_PVT): value for key, value in reference.state_dict().items()}


@pytest.fixture(params=list(FAMILY))
def member(request) -> str:
    return request.param
