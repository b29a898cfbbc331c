"""HfPvtForSemanticSegmentation with the BatchNorm head computes what the authors' Semantic FPN (MMSegmentation
v0.13) computes, for v1, v2 and the linear variant: same logits, same class maps after the authors' test
preprocessing and whole-image inference; BatchNorm behaves as in MMSegmentation (running statistics in
evaluation, updated in training, SyncBatchNorm-convertible); GroupNorm folders saved before keep working.

Ground truth: tests/reference_semantic_fpn.py, a plain-torch Semantic FPN in MMSegmentation's key names that shares
no code with hf_pvt, with random weights and random BatchNorm running statistics. Its state dict is placed into
hf_pvt's model by a renaming table and `load_state_dict(strict=True)`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from PIL import Image
from reference_semantic_fpn import (
    SemanticFpnReference,
    align_resize,
    opencv_bilinear,
    random_semantic_fpn_,
    test_pipeline,
)

from hf_pvt import HfPvtConfig, HfPvtForSemanticSegmentation, HfPvtImageProcessor
from hf_pvt.conversion.layouts import ORIGINAL_TO_HF_PVT, rename_key

TINY_BACKBONE = {
    "embed_dims": [16, 32, 48, 64],
    "num_heads": [1, 2, 3, 4],
    "depths": [1, 2, 1, 1],
    "mlp_ratios": [2, 2, 2, 2],
    "sr_ratios": [8, 4, 2, 1],
    "img_size": 64,
}
KINDS = {"v1": {"version": 1}, "v2": {"version": 2}, "v2-linear": {"version": 2, "linear": True}}
FPN_CHANNELS, HEAD_CHANNELS, NUM_CLASSES = 32, 16, 150
LOGIT_ATOL = 1e-4
# Neck and head: MMSegmentation's names onto hf_pvt's (the backbone goes through the converter's table).
NECK_AND_HEAD = [
    (r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.", r"neck.\1.\2."),
    (r"^decode_head\.conv_seg\.", "decode_head.classifier."),
]


def reference_model(kind: str, seed: int = 0) -> SemanticFpnReference:
    reference = SemanticFpnReference(
        {**TINY_BACKBONE, **KINDS[kind]}, num_classes=NUM_CLASSES, fpn_channels=FPN_CHANNELS, channels=HEAD_CHANNELS
    )
    return random_semantic_fpn_(reference, seed)


def hf_pvt_config(kind: str, **overrides) -> HfPvtConfig:
    fields = {
        "pvt_version": KINDS[kind]["version"],
        "linear_attention": KINDS[kind].get("linear", False),
        "hidden_sizes": TINY_BACKBONE["embed_dims"],
        "num_attention_heads": TINY_BACKBONE["num_heads"],
        "depths": TINY_BACKBONE["depths"],
        "mlp_ratios": TINY_BACKBONE["mlp_ratios"],
        "sr_ratios": TINY_BACKBONE["sr_ratios"],
        "image_size": TINY_BACKBONE["img_size"],
        "decoder_hidden_size": FPN_CHANNELS,
        "decoder_head_size": HEAD_CHANNELS,
        "num_labels": NUM_CLASSES,
    }
    return HfPvtConfig(**{**fields, **overrides})


def to_hf_pvt(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            key = rename_key(key.removeprefix("backbone."), ORIGINAL_TO_HF_PVT)
        else:
            for pattern, replacement in NECK_AND_HEAD:
                key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def paired(kind: str, seed: int = 0) -> tuple[SemanticFpnReference, HfPvtForSemanticSegmentation]:
    reference = reference_model(kind, seed)
    model = HfPvtForSemanticSegmentation(hf_pvt_config(kind))
    model.load_state_dict(to_hf_pvt(reference.state_dict()), strict=True)  # every tensor, BN statistics included
    return reference, model.eval()


@pytest.mark.parametrize("kind", list(KINDS))
def test_logits_match_the_reference_on_non_square_inputs(kind):
    reference, model = paired(kind)
    generator = torch.Generator().manual_seed(1)
    for shape in [(2, 3, 96, 160), (1, 3, 100, 148)]:  # the second is no multiple of 32
        pixel_values = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = reference(pixel_values)
            logits = model(pixel_values).logits
        assert logits.shape == expected.shape
        assert (logits - expected).abs().max().item() < LOGIT_ATOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_class_maps_match_the_authors_test_procedure(kind):
    """A real ADE20K image (364x500, enlarged to 512x704) through the authors' test pipeline and whole-image
    inference on one side, the processor preset and its post-processing on the other: the same pixels, logits
    and class map at the original size."""
    reference, model = paired(kind)
    image = Image.open(FIXTURES / "ade20k_val_00000002.jpg")
    expected_pixels, original_size = test_pipeline(image)
    processor = HfPvtImageProcessor.for_semantic_segmentation()
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == expected_pixels.shape == (1, 3, 512, 704)
    assert (pixel_values - expected_pixels).abs().max().item() < 1e-5
    with torch.no_grad():
        expected_logits = reference.whole_inference(expected_pixels, original_size)
        expected_map = expected_logits.argmax(dim=1)[0]
        outputs = model(pixel_values)
    (result,) = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[original_size], return_segmentation_scores=True
    )
    assert (result["segmentation_scores"] - expected_logits[0]).abs().max().item() < LOGIT_ATOL
    assert torch.equal(result["segmentation"], expected_map)
    assert len(expected_map.unique()) > 3  # a map worth comparing


def test_processor_resizes_as_opencv():
    """The preset's resize is OpenCV's 8-bit bilinear resize: outputs recorded with cv2.resize(INTER_LINEAR) of
    opencv-python-headless 4.5.5 (tests/fixtures/opencv_bilinear_cases.npz) are reproduced value for value by
    the reference and by the processor."""
    cases = np.load(FIXTURES / "opencv_bilinear_cases.npz")
    image = cases["input"]
    processor = HfPvtImageProcessor.for_semantic_segmentation(align_to_multiple_of=None)
    for name in cases.files:
        match = re.fullmatch(r"(gray_)?w(\d+)_h(\d+)", name)
        if match is None:
            continue
        width, height = int(match.group(2)), int(match.group(3))
        source = image[..., 0].copy() if match.group(1) else image
        assert np.array_equal(opencv_bilinear(source, width, height), cases[name]), name
        if not match.group(1):
            resized = processor.resize(np.moveaxis(source, -1, 0), {"height": height, "width": width})
            assert np.array_equal(np.moveaxis(resized, 0, -1), cases[name]), name


def test_preset_sizes_follow_align_resize():
    """Keep-ratio into 2048x512 with mmcv's rounding, then each side resized up to a multiple of 32."""
    processor = HfPvtImageProcessor.for_semantic_segmentation()
    for height, width in [(364, 500), (512, 683), (300, 400), (1200, 1600), (97, 2500), (512, 512)]:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        expected = align_resize(image).shape[:2]
        assert processor(image)["pixel_values"][0].shape[-2:] == expected
        assert expected[0] % 32 == 0 and expected[1] % 32 == 0


def test_evaluation_uses_the_running_statistics():
    _, model = paired("v2")
    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batch = model(pixel_values).logits
        alone = model(pixel_values[:1]).logits  # no dependence on the rest of the batch
        assert (batch[:1] - alone).abs().max().item() < 1e-5
        model.decode_head.scale_heads[0][0].bn.running_mean.add_(1.0)
        assert (model(pixel_values[:1]).logits - alone).abs().max().item() > 1e-3


def test_training_updates_the_running_statistics_as_the_reference():
    reference, model = paired("v1")
    reference.train()
    model.train()
    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    before = {k: v.clone() for k, v in model.state_dict().items() if ".bn." in k}
    with torch.no_grad():
        reference(pixel_values)
        model(pixel_values)
    expected = to_hf_pvt(reference.state_dict())
    after = {k: v for k, v in model.state_dict().items() if ".bn." in k}
    assert len(after) == 5 * 7  # 7 conv-BN-ReLU steps (1 + 1 + 2 + 3), 5 tensors each
    for key, value in after.items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == int(before[key]) + 1 == int(expected[key])
        elif key.endswith(("running_mean", "running_var")):
            assert not torch.equal(value, before[key]), key
            assert (value - expected[key]).abs().max().item() < 1e-5, key


def test_sync_batchnorm_conversion_keeps_keys_and_outputs():
    _, model = paired("v2-linear")
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(pixel_values).logits
    keys = list(model.state_dict())
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == 7
    assert list(synced.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(synced.eval()(pixel_values).logits, expected)


TWO_PROCESSES = """
import os, sys, torch, torch.distributed as dist
sys.path[:0] = [{tests!r}, {root!r}]
from test_semantic_fpn_parity import paired

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + {store!r}, rank=rank, world_size=2)
torch.manual_seed(0)
_, model = paired("v1")
model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
pixel_values = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(5))
with torch.no_grad():
    local = model(pixel_values[2 * rank : 2 * rank + 2]).logits
gathered = [torch.empty_like(local) for _ in range(2)]
dist.all_gather(gathered, local)
if rank == 0:
    torch.save(torch.cat(gathered), {output!r})
    torch.save(model.state_dict(), {weights!r})
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_sync_batchnorm_under_two_processes(tmp_path):
    """Two gloo processes, each with its half of the batch, through the SyncBatchNorm-converted model: the gathered
    logits are the one-process logits, and the state dict saved there loads into a plain model. (Synchronised
    training itself needs GPUs: torch's SyncBatchNorm, and DistributedDataParallel around it, refuse CPU modules.)"""
    tests = str(FIXTURES.parent)
    script = TWO_PROCESSES.format(
        tests=tests,
        root=str(FIXTURES.parent.parent),
        store=str(tmp_path / "store"),
        output=str(tmp_path / "logits.pt"),
        weights=str(tmp_path / "weights.pt"),
    )
    (tmp_path / "worker.py").write_text(textwrap.dedent(script))
    env = {"OMP_NUM_THREADS": "1", **{k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}}
    workers = [
        subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(rank)], env=env, stderr=subprocess.PIPE)
        for rank in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr.decode()[-3000:]
    _, model = paired("v1")
    pixel_values = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(pixel_values).logits
    assert (torch.load(tmp_path / "logits.pt") - expected).abs().max().item() < 1e-5
    model.load_state_dict(torch.load(tmp_path / "weights.pt"), strict=True)


# ---------------------------------------------------------------------------------------------- the configuration


def test_new_configurations_default_to_batch_norm_and_old_segmentation_folders_keep_group_norm():
    assert HfPvtConfig().semantic_head_norm == "batch_norm"
    saved = hf_pvt_config("v2").to_dict()
    legacy = {k: v for k, v in saved.items() if k != "semantic_head_norm"}
    segmentation = {**legacy, "architectures": ["HfPvtForSemanticSegmentation"]}
    classifier = {**legacy, "architectures": ["HfPvtForImageClassification"]}
    assert HfPvtConfig.from_dict(segmentation).semantic_head_norm == "group_norm"
    assert HfPvtConfig.from_dict(classifier).semantic_head_norm == "batch_norm"
    assert HfPvtConfig.from_dict(legacy).semantic_head_norm == "batch_norm"
    assert HfPvtConfig.from_dict({**segmentation, "semantic_head_norm": "batch_norm"}).semantic_head_norm == (
        "batch_norm"
    )
    with pytest.raises(ValueError, match="semantic_head_norm"):
        HfPvtConfig(semantic_head_norm="sync_bn")


def test_group_norm_head_keeps_its_layout_and_width_rule():
    model = HfPvtForSemanticSegmentation(hf_pvt_config("v2", semantic_head_norm="group_norm", decoder_head_size=32))
    keys = [k for k in model.state_dict() if k.startswith("decode_head.scale_heads.3.")]
    assert keys == [f"decode_head.scale_heads.3.{step}.{name}" for step in range(3) for name in
                    ("conv.weight", "norm.weight", "norm.bias")]  # fmt: skip
    with pytest.raises(ValueError, match="multiple of 32"):
        HfPvtForSemanticSegmentation(hf_pvt_config("v2", semantic_head_norm="group_norm", decoder_head_size=16))
    bn_keys = [k for k in HfPvtForSemanticSegmentation(hf_pvt_config("v2")).state_dict() if ".scale_heads.3." in k]
    assert sorted({k.split(".")[3] for k in bn_keys}) == ["0", "2", "4"]


def test_folder_saved_before_the_batch_norm_head_predicts_as_before(tmp_path):
    """A GroupNorm folder whose config.json predates `semantic_head_norm` (the key is absent) loads as GroupNorm,
    every weight placed, and predicts exactly what the saving model predicted."""
    torch.manual_seed(0)
    model = HfPvtForSemanticSegmentation(hf_pvt_config("v2", semantic_head_norm="group_norm", decoder_head_size=32))
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    del config["semantic_head_norm"]
    config_path.write_text(json.dumps(config))
    loaded, info = HfPvtForSemanticSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert loaded.config.semantic_head_norm == "group_norm"
    assert not any(info.values()), info
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(pixel_values).logits, model.eval()(pixel_values).logits)
