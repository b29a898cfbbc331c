"""The model against the independent reference, and the behaviour a Transformers user relies on."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY, TINY, tiny_config, tiny_reference, to_hf_pvt_state_dict

from hf_pvt import PRESETS, HfPvtBackbone, HfPvtConfig, HfPvtForImageClassification, HfPvtModel

# The papers' parameter counts (millions, as published) of the ImageNet models.
PUBLISHED_PARAMS_M = {
    "pvt-tiny": 13.2, "pvt-small": 24.5, "pvt-medium": 44.2, "pvt-large": 61.4,
    "pvt-v2-b0": 3.7, "pvt-v2-b1": 14.0, "pvt-v2-b2": 25.4, "pvt-v2-b2-li": 22.6,
    "pvt-v2-b3": 45.2, "pvt-v2-b4": 62.6, "pvt-v2-b5": 82.0,
}  # fmt: skip
SIZES = [(224, 224), (100, 132), (97, 61)]  # stored size, non-square, not a multiple of 32


def loaded_pair(member: str) -> tuple[torch.nn.Module, HfPvtForImageClassification]:
    reference = tiny_reference(member)
    model = HfPvtForImageClassification(tiny_config(member)).eval()
    model.load_state_dict(to_hf_pvt_state_dict(reference), strict=True)
    return reference, model


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts_match_the_paper(name):
    config = HfPvtConfig.from_preset(name, num_labels=1000)
    with torch.device("meta"):
        model = HfPvtForImageClassification(config)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e6 - PUBLISHED_PARAMS_M[name]) < 0.06, params


def test_pvt_v2_b2_matches_the_released_checkpoint_exactly():
    with torch.device("meta"):
        model = HfPvtForImageClassification(HfPvtConfig.from_preset("pvt_v2_b2", num_labels=1000))
    assert sum(p.numel() for p in model.parameters()) == 25_362_856
    assert len(model.state_dict()) == 334


def test_presets_accept_other_spellings_and_overrides():
    config = HfPvtConfig.from_preset("org/PVT_V2_B2_LI", num_labels=3, drop_path_rate=0.1)
    assert config.linear_attention and config.depths == [3, 4, 6, 3]
    assert config.num_labels == 3 and config.drop_path_rate == 0.1
    assert HfPvtConfig.from_preset("pvt-small").pvt_version == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_sizes": [16, 32, 48, 64], "num_attention_heads": [1, 2, 5, 4]}, "not divisible by 5"),
        ({"depths": [2, 2, 2]}, "depths has 3 entries"),
        ({"sr_ratios": [8, 4, 2, 1, 1]}, "sr_ratios has 5 entries"),
        ({"depths": [2, -1, 2, 2]}, "positive"),
        ({"pvt_version": 3}, "pvt_version must be 1"),
        ({"pvt_version": 1, "linear_attention": True}, "linear_attention exists only in PVTv2"),
        ({"pvt_version": 1, "sr_ratios": [8, 4, 2, 2]}, "last sr_ratio must be 1"),
        ({"pvt_version": 1, "image_size": 100}, "multiple of the total stride"),
        ({"drop_path_rate": 1.5}, "drop_path_rate must be in"),
        ({"out_features": ["stage7"]}, "out_features must be a subset"),
        ({"hidden_sizes": [0, 64, 160, 256]}, "hidden_sizes must hold positive"),
        ({"pvt_version": 1, "image_size": 0}, "image_size must be a positive"),
        ({"pvt_version": 1, "image_size": -32}, "image_size must be a positive"),
        ({"decoder_hidden_size": 0}, "decoder_hidden_size must be a positive"),
        ({"decoder_head_size": -128}, "decoder_head_size must be a positive"),
        ({"mlp_ratios": [float("nan"), 8, 4, 4]}, "mlp_ratios must hold positive finite"),
        ({"mlp_ratios": [float("inf"), 8, 4, 4]}, "mlp_ratios must hold positive finite"),
        ({"layer_norm_eps": -1e-6}, "layer_norm_eps must be a positive finite"),
        ({"embedding_layer_norm_eps": float("nan")}, "embedding_layer_norm_eps must be a positive finite"),
        ({"hidden_act": "gelu2"}, "hidden_act 'gelu2' is unknown"),
        ({"detection_neg_iou_threshold": 0.6}, "IoU thresholds"),
        ({"anchor_ratios": []}, "anchor_ratios must be a non-empty"),
    ],
)
def test_invalid_configs_raise_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HfPvtConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"linear_attention": "false"},
        {"qkv_bias": "false"},
        {"num_channels": "3"},
        {"depths": [2.5, 2, 2, 2]},
        {"pvt_version": True},
        {"pvt_version": 1, "image_size": [224, 224]},
        {"hidden_sizes": "64,128,320,512"},
    ],
)
def test_wrongly_typed_fields_raise_a_type_error_naming_the_field(kwargs):
    field = next(iter(kwargs)) if len(kwargs) == 1 else "image_size"
    with pytest.raises(TypeError, match=f"field '{field}'"):
        HfPvtConfig(**kwargs)
    with pytest.raises(TypeError, match=f"field '{field}'"):
        HfPvtConfig.from_preset("pvt-v2-b0", **kwargs)


@pytest.mark.parametrize("foreign", ["pvt", "pvt_v2"])
def test_foreign_configs_are_refused_with_a_pointer_to_the_converter(foreign, tmp_path):
    from transformers import PvtConfig, PvtV2Config, PvtV2ForImageClassification

    source = (PvtConfig if foreign == "pvt" else PvtV2Config)().to_dict()
    with pytest.raises(ValueError, match=f"model_type '{foreign}'.*hf-pvt-convert"):
        HfPvtConfig.from_dict(source)
    if foreign == "pvt_v2":  # a whole folder: refused before any weight is (mis)loaded
        PvtV2ForImageClassification(PvtV2Config(hidden_sizes=[16, 32, 40, 64], depths=[1, 1, 1, 1])).save_pretrained(
            tmp_path
        )
        with pytest.raises(ValueError, match="hf-pvt-convert"):
            HfPvtForImageClassification.from_pretrained(tmp_path)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown preset 'pvt-huge'.*pvt-v2-b2-li"):
        HfPvtConfig.from_preset("pvt-huge")


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config("v1", out_features=["stage2", "stage4"])
    config.save_pretrained(tmp_path)
    loaded = HfPvtConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.out_indices == [1, 3]
    assert loaded.auto_map["AutoModelForImageClassification"] == "modeling_hf_pvt.HfPvtForImageClassification"


# --- exact numerics against the reference ------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_the_reference_implementation(member, size, attn_implementation):
    reference, model = loaded_pair(member)
    model.set_attn_implementation(attn_implementation)
    pixel_values = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_logits = reference(pixel_values)
        expected_pooled = reference.forward_features(pixel_values)
        expected_maps = reference.forward_stages(pixel_values)
        outputs = model(pixel_values, output_hidden_states=True)
        base = model.pvt(pixel_values)
    torch.testing.assert_close(outputs.logits, expected_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(base.pooler_output, expected_pooled, atol=1e-5, rtol=0)
    for ours, theirs in zip(base.feature_maps, expected_maps, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(base.last_hidden_state, expected_maps[-1], atol=1e-5, rtol=0)
    assert len(outputs.hidden_states) == sum(TINY["depths"])


def test_backbone_follows_the_authors_dense_prediction_path(member):
    reference = tiny_reference(member)
    backbone = HfPvtBackbone(tiny_config(member, out_indices=[0, 1, 2, 3])).eval()
    state_dict = {key.removeprefix("pvt."): value for key, value in to_hf_pvt_state_dict(reference).items()}
    # A classification checkpoint holds more than a backbone needs: the head, and v1's cls token and final norm.
    unused = set(state_dict) - set(backbone.state_dict())
    assert all(key.startswith(("classifier", "stages.3.cls_token", "stages.3.norm")) for key in unused)
    backbone.load_state_dict({k: v for k, v in state_dict.items() if k not in unused}, strict=True)
    pixel_values = torch.randn(1, 3, 100, 132)
    with torch.no_grad():
        expected = reference.forward_dense(pixel_values)
        maps = backbone(pixel_values).feature_maps
    for ours, theirs in zip(maps, expected, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_layer_norm_epsilons_are_those_of_the_original():
    model = HfPvtModel(tiny_config("v2"))
    eps = {name: module.eps for name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)}
    assert eps["stages.0.patch_embed.norm"] == 1e-5
    assert eps["stages.0.blocks.0.attn.norm"] == 1e-5
    assert eps["stages.0.blocks.0.norm1"] == eps["stages.0.blocks.0.norm2"] == eps["stages.0.norm"] == 1e-6


def test_v1_position_embeddings_are_used_unchanged_at_the_stored_size():
    model = HfPvtModel(tiny_config("v1")).eval()
    stage = model.stages[0]
    stored = stage.pos_embed[:, stage.num_prefix_slots :]
    from hf_pvt.modeling_hf_pvt import resize_position_embedding

    assert resize_position_embedding(stored, stage.grid_size, *stage.grid_size) is stored
    resized = resize_position_embedding(stored, stage.grid_size, 25, 33)
    assert resized.shape == (1, 25 * 33, TINY["hidden_sizes"][0])


# --- input sizes, batches and errors ---------------------------------------------------------------


@pytest.mark.parametrize("size", [(32, 32), (32, 96), (65, 33), (224, 224)])
def test_feature_map_shapes_at_any_size(member, size):
    model = HfPvtModel(tiny_config(member)).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, *size))
    height, width = size
    for stage, feature_map in enumerate(outputs.feature_maps):
        assert feature_map.shape[:2] == (1, TINY["hidden_sizes"][stage])
        # v1 floors each patch grid, v2's padded overlapping patches round up.
        stride = 4 * 2**stage
        assert abs(feature_map.shape[2] - height / stride) < 1 and abs(feature_map.shape[3] - width / stride) < 1
    assert outputs.pooler_output.shape == (1, TINY["hidden_sizes"][-1])


def test_batch_results_equal_single_image_results(member):
    _, model = loaded_pair(member)
    pixel_values = torch.randn(4, 3, 96, 80)
    with torch.no_grad():
        batched = model(pixel_values).logits
        single = torch.cat([model(image[None]).logits for image in pixel_values])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.randn(1, 1, 64, 64), "has 1 channels but the model expects 3"),
        (torch.randn(1, 4, 64, 64), "has 4 channels"),
        (torch.randn(3, 64, 64), r"\(batch, channels, height, width\)"),
        (torch.randn(1, 3, 16, 64), "too small.*at least 32 pixels"),
    ],
)
def test_bad_inputs_raise_clear_errors(pixel_values, message):
    model = HfPvtModel(tiny_config("v1"))
    with pytest.raises(ValueError, match=message):
        model(pixel_values)


@pytest.mark.parametrize("member, minimum", [("v1", 32), ("v2", 29), ("v2-linear", 1)])
def test_min_input_size_is_exact(member, minimum):
    """The minimum counts the spatial-reduction kernels (sr 8 at stride 4 needs 29 px in v2's overlapping embedding);
    the model runs at the minimum and refuses one pixel less with the clear error, not a PyTorch kernel error."""
    model = HfPvtModel(tiny_config(member)).eval()
    assert model.min_input_size == minimum
    with torch.no_grad():
        model(torch.randn(1, 3, minimum, minimum + 3))
    if minimum > 1:
        with pytest.raises(ValueError, match=f"too small.*at least {minimum} pixels"):
            model(torch.randn(1, 3, minimum + 3, minimum - 1))


def test_empty_batch_gives_empty_outputs(member):
    model = HfPvtForImageClassification(tiny_config(member)).eval()
    with torch.no_grad():
        empty = model(torch.randn(0, 3, 64, 64)).logits
    assert empty.shape == (0, 7)


def test_config_output_attentions_returns_weights_with_default_sdpa(member):
    config = tiny_config(member, output_attentions=True)
    model = HfPvtForImageClassification(config).eval()
    assert model.config._attn_implementation == "sdpa"  # the layers must still switch to eager for the weights
    with torch.no_grad():
        attentions = model(torch.randn(1, 3, 64, 64)).attentions
        assert len(attentions) == sum(config.depths)
        assert model(torch.randn(1, 3, 64, 64), output_attentions=False).attentions is None


# --- attention, training features ------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_attention_implementations_agree_with_eager(member, implementation):
    _, model = loaded_pair(member)
    assert model.config._attn_implementation == "sdpa"  # the default
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        model.set_attn_implementation(implementation)
        fast = model(pixel_values).logits
        model.set_attn_implementation("eager")
        eager = model(pixel_values).logits
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=0)


def test_output_attentions_uses_eager_attention_even_under_sdpa():
    model = HfPvtModel(tiny_config("v2")).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64), output_attentions=True)
    assert len(outputs.attentions) == sum(TINY["depths"])
    first = outputs.attentions[0]
    # Stage 1 at 64x64: 16x16 query tokens attend to the 2x2 map left by the 8x spatial reduction.
    assert first.shape == (1, 1, 256, 4)
    torch.testing.assert_close(first.sum(-1), torch.ones(1, 1, 256))


def test_gradient_checkpointing_gives_the_same_gradients(member):
    torch.manual_seed(0)
    model = HfPvtForImageClassification(tiny_config(member)).train()
    pixel_values, labels = torch.randn(2, 3, 64, 64), torch.tensor([1, 4])

    def gradients():
        model.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for stage in model.pvt.stages for block in stage.blocks)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_stochastic_depth_drops_paths_in_training_only():
    model = HfPvtForImageClassification(tiny_config("v2", drop_path_rate=0.5))
    pixel_values = torch.randn(4, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    first = model(pixel_values).logits
    second = model(pixel_values).logits
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)
    rates = [block.drop_path for stage in model.pvt.stages for block in stage.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)


@pytest.mark.parametrize(
    "problem_type, labels",
    [
        ("single_label_classification", torch.tensor([0, 6])),
        ("multi_label_classification", torch.tensor([[0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0, 1]]).float()),
        ("regression", torch.randn(2, 7)),
    ],
)
def test_classification_losses_follow_problem_type(problem_type, labels):
    model = HfPvtForImageClassification(tiny_config("v1", problem_type=problem_type)).eval()
    outputs = model(torch.randn(2, 3, 64, 64), labels=labels)
    logits = outputs.logits
    expected = {
        "single_label_classification": lambda: torch.nn.functional.cross_entropy(logits, labels),
        "multi_label_classification": lambda: torch.nn.functional.binary_cross_entropy_with_logits(logits, labels),
        "regression": lambda: torch.nn.functional.mse_loss(logits, labels),
    }[problem_type]()
    torch.testing.assert_close(outputs.loss, expected)
    outputs.loss.backward()


def test_return_dict_false_gives_tuples():
    model = HfPvtForImageClassification(tiny_config("v2")).eval()
    logits = model(torch.randn(1, 3, 64, 64), return_dict=False)[0]
    assert logits.shape == (1, 7)


# --- saving and loading ----------------------------------------------------------------------------


def test_save_and_load_is_bit_exact(member, tmp_path):
    _, model = loaded_pair(member)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = HfPvtForImageClassification.from_pretrained(tmp_path).eval()
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name
    # Loaded tensors may sit at other memory alignments, which lets the CPU kernels take other SIMD paths:
    # outputs agree to rounding, and are bit-exact once the same bits sit in freshly allocated tensors.
    fresh = HfPvtForImageClassification(model.config).eval()
    fresh.load_state_dict(loaded.state_dict())
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, fresh(pixel_values).logits)
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, atol=1e-6, rtol=0)


def test_family_members_differ_only_by_config():
    classes = {type(m) for member in FAMILY for m in HfPvtModel(tiny_config(member)).modules()}
    names = {cls.__name__ for cls in classes if cls.__module__.startswith("hf_pvt")}
    assert names == {"HfPvtModel", "HfPvtStage", "HfPvtPatchEmbedding", "HfPvtBlock", "HfPvtAttention", "HfPvtMlp"}
