"""Every released variant, at full size, in every source layout it exists in, converts and matches.

Weights are random (no checkpoint can be downloaded here) but full-sized, so each variant's exact tensor
set, shapes and detection are exercised. Ground truth: tests/reference_pvt.py for the authors' and timm's
layouts, Transformers' own models for their folders.
"""

from __future__ import annotations

import pytest
import torch
from test_conversion import _randomise, to_timm_layout

from hf_pvt import HfPvtConfig, HfPvtForImageClassification
from hf_pvt.conversion.convert import convert
from tests.reference_pvt import VARIANTS, build_reference, random_init_

NAMES = list(VARIANTS)
PIXELS = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    # Full-depth random models give logits of order 1-10: compare relative to their scale.
    torch.testing.assert_close(ours, theirs, atol=1e-5 * float(theirs.abs().max()), rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_original_and_timm_layouts(tmp_path, name):
    reference = random_init_(build_reference(name), seed=NAMES.index(name))
    with torch.no_grad():
        expected = reference(PIXELS)
    layouts = {"original": reference.state_dict()}
    if name.startswith("pvt_v2"):
        layouts["timm"] = to_timm_layout(reference.state_dict())
    for layout, state_dict in layouts.items():
        path = tmp_path / f"{layout}.pth"
        # Alternate the two torch formats the authors' files come in (legacy for v2, zip for v1).
        torch.save(state_dict, path, _use_new_zipfile_serialization=name.startswith("pvt_v2") == (layout == "timm"))
        conversion = convert(path)
        assert conversion.variant == name.replace("_", "-"), layout
        assert conversion.num_source_tensors == len(state_dict)
        with torch.no_grad():
            assert_same_logits(conversion.model(pixel_values=PIXELS).logits, expected)
        path.unlink()


@pytest.mark.parametrize("name", NAMES)
def test_transformers_folders(tmp_path, name):
    from transformers import PvtConfig, PvtForImageClassification, PvtV2Config, PvtV2ForImageClassification

    preset = HfPvtConfig.from_preset(name)
    sizes = {
        key: getattr(preset, key)
        for key in ("hidden_sizes", "num_attention_heads", "depths", "mlp_ratios", "sr_ratios")
    }
    if preset.pvt_version == 1:
        theirs = PvtForImageClassification(PvtConfig(num_labels=1000, **sizes))
    else:
        theirs = PvtV2ForImageClassification(
            PvtV2Config(num_labels=1000, linear_attention=preset.linear_attention, **sizes)
        )
    _randomise(theirs.eval(), seed=NAMES.index(name))
    theirs.save_pretrained(tmp_path / "transformers")
    conversion = convert(tmp_path / "transformers")
    assert conversion.variant == name.replace("_", "-")
    # Same weights; with Transformers' epsilon (1e-6 everywhere) hf_pvt computes Transformers' function.
    config = {**conversion.model.config.to_dict(), "out_features": None, "out_indices": None}
    ours = HfPvtForImageClassification(HfPvtConfig(**{**config, "embedding_layer_norm_eps": 1e-6}))
    ours.load_state_dict(conversion.model.state_dict())
    # Transformers' v1 runs only at its configured 224x224 (other sizes fail in its position embeddings), so v1
    # is compared there.
    pixels = torch.nn.functional.interpolate(PIXELS, size=224) if preset.pvt_version == 1 else PIXELS
    with torch.no_grad():
        assert_same_logits(ours.eval()(pixel_values=pixels).logits, theirs(pixel_values=pixels).logits)
