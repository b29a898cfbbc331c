"""HfPvtBackbone: Transformers' backbone conventions, parity with the authors' dense forward, and Transformers' own
dense heads (UperNet, DETR, Conditional DETR, Deformable DETR, Mask2Former) running on it with real images."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, tiny_config, tiny_reference, to_hf_pvt_state_dict
from PIL import Image
from transformers import (
    AutoBackbone,
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from hf_pvt import HfPvtBackbone, HfPvtForImageClassification, HfPvtImageProcessor

ALL_STAGES = ["stage1", "stage2", "stage3", "stage4"]
ADE_IMAGES = [FIXTURES / f"ade20k_val_0000000{i}.jpg" for i in (1, 2, 3)]


def real_pixels(index: int, shortest_edge: int) -> torch.Tensor:
    """A real ADE20K photo, aspect ratio kept: sides that are generally no multiple of 32."""
    processor = HfPvtImageProcessor(size={"shortest_edge": shortest_edge}, do_center_crop=False)
    return processor(Image.open(ADE_IMAGES[index]), return_tensors="pt")["pixel_values"]


def backbone_from_reference(member: str, **config_overrides) -> tuple[HfPvtBackbone, torch.nn.Module]:
    """An HfPvtBackbone holding the reference's weights: classification keys renamed, `pvt.` stripped."""
    reference = tiny_reference(member)
    backbone = HfPvtBackbone(tiny_config(member, out_features=ALL_STAGES, **config_overrides)).eval()
    renamed = {k.removeprefix("pvt."): v for k, v in to_hf_pvt_state_dict(reference).items()}
    state = {k: v for k, v in renamed.items() if k in backbone.state_dict()}
    # Only the classification-only tensors are left behind: the head, and v1's cls token and final norm.
    left_out = {k.split(".")[0] if k.startswith("classifier") else k for k in set(renamed) - set(state)}
    expected = {"classifier"} | (
        {"stages.3.cls_token", "stages.3.norm.weight", "stages.3.norm.bias"} if member == "v1" else set()
    )
    assert left_out == expected
    backbone.load_state_dict(state, strict=True)
    return backbone, reference


@pytest.mark.parametrize("member", ["v1", "v2", "v2-linear"])
def test_backbone_conventions(member):
    backbone = AutoBackbone.from_config(tiny_config(member))
    assert isinstance(backbone, HfPvtBackbone)
    assert backbone.stage_names == ALL_STAGES
    # Transformers' default: only the last stage.
    assert backbone.out_features == ["stage4"] and backbone.out_indices == [3]
    assert backbone.channels == [64]

    backbone = AutoBackbone.from_config(tiny_config(member, out_indices=[0, 2])).eval()
    assert backbone.out_features == ["stage1", "stage3"]
    assert backbone.channels == [16, 48]
    assert backbone.out_feature_channels == dict(zip(ALL_STAGES, [16, 32, 48, 64]))
    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, 128, 96))
    assert [tuple(f.shape) for f in outputs.feature_maps] == [(2, 16, 32, 24), (2, 48, 8, 6)]
    assert outputs.hidden_states is None and outputs.attentions is None

    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 64), output_hidden_states=True, output_attentions=True)
    assert len(outputs.hidden_states) == len(outputs.attentions) == sum(tiny_config(member).depths)

    with pytest.raises(ValueError, match="out_features must be a subset of stage_names"):
        tiny_config(member, out_features=["stage5"])


@pytest.mark.parametrize("member", ["v1", "v2", "v2-linear"])
@pytest.mark.parametrize("index, shortest_edge", [(0, 96), (1, 100), (2, 75)])
def test_backbone_matches_reference_forward_dense(member, index, shortest_edge):
    backbone, reference = backbone_from_reference(member)
    pixel_values = real_pixels(index, shortest_edge)
    with torch.no_grad():
        expected = reference.forward_dense(pixel_values)
        feature_maps = backbone(pixel_values).feature_maps
    assert len(feature_maps) == 4
    for stride, got, want in zip((4, 8, 16, 32), feature_maps, expected):
        assert got.shape == want.shape
        for side, input_side in zip(got.shape[-2:], pixel_values.shape[-2:]):
            assert abs(side - input_side / stride) < 1
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("member", ["v1", "v2"])
@pytest.mark.parametrize("size", [(224, 224), (97, 131), (160, 64), (33, 250)])
def test_backbone_input_sizes(member, size):
    backbone, reference = backbone_from_reference(member)
    pixel_values = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for got, want in zip(backbone(pixel_values).feature_maps, reference.forward_dense(pixel_values)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("member", ["v1", "v2"])
def test_autobackbone_save_load_round_trip(member, tmp_path):
    backbone = AutoBackbone.from_config(tiny_config(member, out_features=["stage2", "stage4"])).eval()
    backbone.save_pretrained(tmp_path)
    # Transformers 5.24's AutoBackbone.from_pretrained asks the Hub whether the name exists before looking on disk,
    # so local folders fail there (HFValidationError); the class itself loads them.
    reloaded = HfPvtBackbone.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, HfPvtBackbone) and reloaded.out_features == ["stage2", "stage4"]
    pixel_values = real_pixels(1, 80)
    with torch.no_grad():
        for got, want in zip(reloaded(pixel_values).feature_maps, backbone(pixel_values).feature_maps):
            assert torch.equal(got, want)


@pytest.mark.parametrize("member", ["v1", "v2"])
def test_backbone_loads_classification_checkpoint(member, tmp_path):
    classifier = HfPvtForImageClassification(tiny_config(member)).eval()
    classifier.save_pretrained(tmp_path)
    backbone = HfPvtBackbone.from_pretrained(tmp_path, out_features=ALL_STAGES).eval()
    pixel_values = real_pixels(2, 64)
    with torch.no_grad():
        dense = backbone(pixel_values).feature_maps
        classification = classifier.pvt(pixel_values).feature_maps
    # v2 has no classification-only parts; v1's last stage differs (no cls token, no final norm, by design).
    same_stages = 4 if member == "v2" else 3
    for got, want in zip(dense[:same_stages], classification[:same_stages]):
        assert torch.equal(got, want)
    if member == "v1":
        assert not torch.allclose(dense[3], classification[3])


@pytest.mark.parametrize("member", ["v1", "v2"])
def test_upernet_end_to_end_on_real_images(member, tmp_path):
    config = UperNetConfig(
        backbone_config=tiny_config(member, out_features=ALL_STAGES),
        hidden_size=32,
        auxiliary_in_channels=48,
        auxiliary_channels=16,
        num_labels=5,
    )
    model = UperNetForSemanticSegmentation(config)
    assert isinstance(model.backbone, HfPvtBackbone)
    # Two images per batch: UperNet's pooling branch has BatchNorm over 1x1 maps, which cannot train on one image.
    for height, width in [(96, 128), (100, 76)]:
        processor = HfPvtImageProcessor.for_dense_prediction(height, width)
        pixel_values = processor([Image.open(path) for path in ADE_IMAGES[:2]], return_tensors="pt")["pixel_values"]
        labels = torch.randint(0, 5, (2, height, width), generator=torch.Generator().manual_seed(height))
        outputs = model(pixel_values, labels=labels)
        assert outputs.logits.shape == (2, 5, height, width)
        model.zero_grad()
        outputs.loss.backward()
        assert model.backbone.stages[0].patch_embed.proj.weight.grad.abs().sum() > 0

    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert reloaded.config.backbone_config.model_type == "hf_pvt"
    pixel_values = real_pixels(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits, rtol=1e-5, atol=1e-6)


DETR_KWARGS = {
    "use_timm_backbone": False,
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 2,  # Deformable DETR's weight tying needs at least two decoder layers
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "num_queries": 5,
    "num_labels": 3,
}


@pytest.mark.parametrize("member", ["v1", "v2"])
@pytest.mark.parametrize(
    "config_class, model_class, out_features, extra",
    [
        (DetrConfig, DetrForObjectDetection, ["stage4"], {}),
        (ConditionalDetrConfig, ConditionalDetrForObjectDetection, ["stage4"], {}),
        (
            DeformableDetrConfig,
            DeformableDetrForObjectDetection,
            ["stage2", "stage3", "stage4"],
            {"num_feature_levels": 4, "encoder_n_points": 2, "decoder_n_points": 2},
        ),
    ],
    ids=["detr", "conditional_detr", "deformable_detr"],
)
def test_detr_family_on_real_images(member, config_class, model_class, out_features, extra):
    config = config_class(backbone_config=tiny_config(member, out_features=out_features), **DETR_KWARGS, **extra)
    model = model_class(config).eval()
    assert any(isinstance(module, HfPvtBackbone) for module in model.modules())
    for index, shortest_edge in [(0, 96), (1, 80)]:
        pixel_values = real_pixels(index, shortest_edge)
        with torch.no_grad():
            outputs = model(pixel_values)
        assert outputs.pred_boxes.shape == (1, 5, 4)
        assert outputs.logits.shape[:2] == (1, 5) and torch.isfinite(outputs.logits).all()
        assert ((outputs.pred_boxes >= 0) & (outputs.pred_boxes <= 1)).all()


@pytest.mark.parametrize("member", ["v1", "v2"])
def test_mask2former_on_real_images(member):
    config = Mask2FormerConfig(
        backbone_config=tiny_config(member, out_features=ALL_STAGES),
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
    model = Mask2FormerForUniversalSegmentation(config).eval()
    assert isinstance(model.model.pixel_level_module.encoder, HfPvtBackbone)
    for index, shortest_edge in [(0, 96), (2, 64)]:
        pixel_values = real_pixels(index, shortest_edge)
        with torch.no_grad():
            outputs = model(pixel_values)
        height, width = pixel_values.shape[-2:]
        assert outputs.class_queries_logits.shape == (1, 5, 4)
        # Mask logits come at the stride-4 level of the backbone.
        assert outputs.masks_queries_logits.shape[:2] == (1, 5)
        assert abs(outputs.masks_queries_logits.shape[-2] - height / 4) < 1
        assert abs(outputs.masks_queries_logits.shape[-1] - width / 4) < 1
