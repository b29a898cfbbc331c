"""Seeded fuzz of every public entry point: a correct result or a clear ValueError/TypeError, never anything else.

Each area draws a few hundred inputs, most of them wrong in one or more ways a careless or hostile user would
produce (wrong types, NaN, empty, negative, mismatched sizes, corrupt files). The contract, checked on every input:

- accepted inputs give a complete, well-formed result (the properties are checked per area);
- rejected inputs raise ValueError or TypeError whose message names what was wrong;
- nothing else escapes (no IndexError, RuntimeError or ZeroDivisionError from deep inside), and the converter's
  command line answers a bad input with exit code 1, one `error:` line and nothing left on disk.

The tallies (inputs, results, errors by type) are printed at the end of the run (`pytest -s tests/test_fuzz.py` or in
the terminal summary). Seeds are fixed, so a failure reproduces.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import FIXTURES, TINY, tiny_config

from hf_pvt import (
    HfPvtConfig,
    HfPvtForImageClassification,
    HfPvtForObjectDetection,
    HfPvtForSemanticSegmentation,
    HfPvtImageProcessor,
)
from hf_pvt.conversion.cli import main as convert_main

TALLIES: dict[str, Counter] = {}
SUMMARY_KEYS = ("inputs", "accepted", "unexpected", "wrong results")
NAN, INF = float("nan"), float("inf")


class Contract:
    """Runs one input through an entry point and records what happened; unexpected outcomes are collected."""

    def __init__(self, area: str):
        self.area = area
        self.tally = TALLIES.setdefault(area, Counter())
        self.violations: list[str] = []

    def call(self, description: str, function, keywords: tuple[str, ...]):
        """The result, or None after a ValueError/TypeError whose message contains one of `keywords`."""
        self.tally["inputs"] += 1
        try:
            result = function()
        except (ValueError, TypeError) as error:
            self.tally[type(error).__name__] += 1
            message = str(error).lower()
            if not any(keyword.lower() in message for keyword in keywords):
                self.violations.append(f"{description}: {type(error).__name__} names none of {keywords}: {error}")
            return None
        except Exception as error:  # noqa: BLE001 - the point: nothing else may escape
            self.tally["unexpected"] += 1
            self.violations.append(f"{description}: unexpected {type(error).__name__}: {str(error)[:300]}")
            return None
        self.tally["accepted"] += 1
        return result

    def check(self, description: str, condition: bool, what: str) -> None:
        if not condition:
            self.tally["wrong results"] += 1
            self.violations.append(f"{description}: accepted, but {what}")

    def assert_clean(self) -> None:
        assert not self.violations, f"{len(self.violations)} contract violations:\n" + "\n".join(self.violations[:30])
        assert self.tally["accepted"] and self.tally["inputs"] > self.tally["accepted"], "the fuzz must hit both sides"


@pytest.fixture(scope="module", autouse=True)
def print_tallies(request):
    yield
    lines = ["", "fuzz tallies (area: inputs, accepted, errors by type, unexpected, wrong results):"]
    for area, tally in TALLIES.items():
        errors = ", ".join(f"{k} {v}" for k, v in sorted(tally.items()) if k not in SUMMARY_KEYS)
        lines.append(
            f"  {area}: {tally['inputs']} inputs, {tally['accepted']} accepted, {errors or 'no errors'}, "
            f"{tally['unexpected']} unexpected, {tally['wrong results']} wrong results"
        )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n".join(lines))


# ------------------------------------------------------------------------------------------------- configs

STAGES = [16, 32, 48, 64]
CONFIG_VALUES: dict[str, list] = {
    "pvt_version": [1, 2, 0, 3, True, "2", 2.0, None],
    "linear_attention": [True, False, "false", 0, None],
    "num_channels": [1, 3, 4, 0, -1, "3", 3.0, True],
    "image_size": [224, 64, 0, -32, [224, 224], "224", 100, 32],
    "hidden_sizes": [STAGES, [0, 32, 48, 64], [16, 32, 48], [16.0, 32, 48, 64], "16", [-16, 32, 48, 64], []],
    "depths": [[1, 1, 1, 1], [0, 1, 1, 1], [2.5, 1, 1, 1], [1, -1, 1, 1], [1, 1, 1], (1, 2, 1, 1)],
    "num_attention_heads": [[1, 2, 3, 4], [1, 2, 5, 4], [0, 1, 1, 1], [1, 2, 3], [1, 1, 1, 1]],
    "mlp_ratios": [[2, 2, 2, 2], [NAN, 2, 2, 2], [INF, 2, 2, 2], [0, 2, 2, 2], [0.5, 2, 2, 2], [1.5, 2, 2, 2]],
    "sr_ratios": [[8, 4, 2, 1], [8, 4, 2, 2], [0, 4, 2, 1], [8, 4, 2], [1, 1, 1, 1]],
    "patch_sizes": [[4, 2, 2, 2], [7, 3, 3, 3], [0, 2, 2, 2], None],
    "strides": [[4, 2, 2, 2], [0, 2, 2, 2], [4, 2, 2], None],
    "layer_norm_eps": [1e-6, -1e-6, 0.0, NAN, "1e-6", 1, INF],
    "embedding_layer_norm_eps": [1e-5, -1.0, NAN],
    "hidden_dropout_prob": [0.0, 0.5, 1.0, -0.1, NAN, True],
    "drop_path_rate": [0.0, 0.1, 1.5, INF],
    "initializer_range": [0.02, -1.0, NAN, "0.02"],
    "decoder_hidden_size": [32, 0, -1, 32.5],
    "decoder_head_size": [32, 0, "32"],
    "hidden_act": ["gelu", "relu", "nope", 3],
    "qkv_bias": [True, False, "false"],
    "out_features": [["stage1"], ["stage9"], "stage1", ["stage2", "stage4"]],
    "anchor_ratios": [[0.5, 1.0, 2.0], [], [0, 1], ["a"], [1]],
    "detection_pos_iou_threshold": [0.5, 1.5, -0.1, 0.3],
    "focal_loss_alpha": [0.25, 2.0, NAN],
    "num_labels": [3, 1, 0],
}
# Words an error may use for a field ("Stage 2: hidden size 32 is not divisible by 5 attention heads").
SYNONYMS = {"num_attention_heads": ("attention head",), "detection_pos_iou_threshold": ("iou threshold",)}


def field_keywords() -> tuple[str, ...]:
    keywords = set()
    for name in [*CONFIG_VALUES, "total stride", "sr_ratio", "mlp_ratio", "num_stages", "out_indices"]:
        spaced = name.replace("_", " ")
        keywords |= {name, spaced, name.rstrip("s"), spaced.rstrip("s"), *SYNONYMS.get(name, ())}
    return tuple(keywords)


def check_accepted_config(contract: Contract, description: str, config: HfPvtConfig) -> None:
    round_trip = HfPvtConfig.from_dict(config.to_dict())
    contract.check(description, round_trip.to_dict() == config.to_dict(), "to_dict/from_dict does not round-trip")
    try:
        with torch.device("meta"):  # every accepted configuration must build (meta: no memory, no time)
            HfPvtForImageClassification(config)
    except Exception as error:  # noqa: BLE001
        contract.check(description, False, f"the model does not build: {type(error).__name__}: {error}")
    for name in ("hidden_sizes", "depths", "num_attention_heads", "sr_ratios"):
        values = getattr(config, name)
        contract.check(description, all(type(v) is int for v in values), f"{name} holds non-ints {values}")
    contract.check(description, all(math.isfinite(r) and r > 0 for r in config.mlp_ratios), "mlp_ratios not finite")
    contract.check(description, type(config.linear_attention) is bool, "linear_attention is not a bool")


def test_fuzz_config_constructor():
    contract, rng, keywords = Contract("HfPvtConfig(**kwargs)"), random.Random(0), field_keywords()
    for case in range(300):
        fields = rng.sample(sorted(CONFIG_VALUES), rng.randint(1, 3))
        kwargs = {**TINY, **{name: rng.choice(CONFIG_VALUES[name]) for name in fields}}
        description = f"case {case} {({name: kwargs[name] for name in fields})}"
        config = contract.call(description, lambda kwargs=kwargs: HfPvtConfig(**kwargs), keywords)
        if config is not None:
            check_accepted_config(contract, description, config)
    contract.assert_clean()


def test_fuzz_config_files(tmp_path):
    """config.json files edited by hand: wrong types, foreign model types, unknown and missing fields."""
    contract, rng = Contract("from_pretrained(config.json)"), random.Random(1)
    keywords = (*field_keywords(), "model_type", "hf-pvt-convert")
    base = tiny_config("v2").to_dict()
    for case in range(150):
        data = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            action = rng.random()
            name = rng.choice(sorted(CONFIG_VALUES))
            if action < 0.6:
                value = rng.choice(CONFIG_VALUES[name])
                data[name] = value if not (isinstance(value, float) and not math.isfinite(value)) else str(value)
            elif action < 0.75:
                data.pop(name, None)
            elif action < 0.85:
                data["model_type"] = rng.choice(["pvt", "pvt_v2", "vit", "hf_pvt"])
            else:
                data[f"unknown_{case}"] = rng.choice([1, "x", None])
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(data))
        config = contract.call(f"case {case} {data}", lambda f=folder: HfPvtConfig.from_pretrained(f), keywords)
        if config is not None:
            check_accepted_config(contract, f"case {case}", config)
    contract.assert_clean()


# ------------------------------------------------------------------------------------------------- forward


@pytest.fixture(scope="module")
def classifiers():
    torch.manual_seed(0)
    return {member: HfPvtForImageClassification(tiny_config(member, depths=[1, 1, 1, 1])).eval() for member in
            ("v1", "v2", "v2-linear")}


def random_pixels(rng: random.Random):
    shape = [rng.choice([0, 1, 1, 2]), rng.choice([3] * 8 + [1, 4]), rng.choice([0, 1, 16, 28, 29, 32, 33, 47, 64]),
             rng.choice([1, 29, 32, 32, 47, 64])]
    roll = rng.random()
    if roll < 0.05:
        shape = shape[1:]  # no batch dimension
    elif roll < 0.08:
        shape = [1, *shape]  # one too many
    dtype = rng.choice([torch.float32] * 8 + [torch.float64, torch.bfloat16, torch.int64, torch.uint8, torch.bool])
    values = torch.randn(shape).to(dtype)
    return (values.numpy() if dtype != torch.bfloat16 else values) if rng.random() < 0.05 else values


def test_fuzz_forward(classifiers):
    contract, rng = Contract("model(pixel_values)"), random.Random(2)
    keywords = ("pixel_values", "images of", "channels")
    for case in range(300):
        member = rng.choice(sorted(classifiers))
        model = classifiers[member]
        model.set_attn_implementation(rng.choice(["sdpa", "eager"]))
        pixel_values = random_pixels(rng)
        flags = {"output_hidden_states": rng.random() < 0.3, "output_attentions": rng.random() < 0.3}
        description = f"case {case} {member} {type(pixel_values).__name__} {tuple(pixel_values.shape)} " \
                      f"{pixel_values.dtype} {flags}"
        with torch.no_grad():
            outputs = contract.call(description, lambda m=model, x=pixel_values, f=flags: m(x, **f), keywords)
        if outputs is None:
            continue
        batch = pixel_values.shape[0]
        contract.check(description, outputs.logits.shape == (batch, 7), f"logits of shape {outputs.logits.shape}")
        contract.check(description, bool(torch.isfinite(outputs.logits).all()), "non-finite logits")
        if flags["output_attentions"]:
            contract.check(description, len(outputs.attentions) == 4, "attentions missing")
        if flags["output_hidden_states"]:
            contract.check(description, len(outputs.hidden_states) == 4, "hidden states missing")
    contract.assert_clean()


def test_fuzz_segmentation_and_detection_labels():
    torch.manual_seed(0)
    head = {"decoder_hidden_size": 32, "decoder_head_size": 32, "detection_feat_channels": 32,
            "detection_num_convs": 1, "num_labels": 3, "depths": [1, 1, 1, 1]}
    segmenter = HfPvtForSemanticSegmentation(tiny_config("v2", **head)).eval()
    detector = HfPvtForObjectDetection(tiny_config("v2", **head)).eval()
    contract, rng = Contract("model(labels=...)"), random.Random(3)
    pixel_values = torch.randn(2, 3, 32, 32)
    for case in range(100):
        shape = rng.choice([(2, 32, 32), (2, 16, 16), (2, 40, 24), (2, 0, 0), (1, 32, 32), (2, 1, 32, 32), (32, 32)])
        values = rng.choice([(0, 3), (0, 3), (0, 4), (-1, 3), (255, 256)])
        labels = torch.randint(*values, shape)
        kind = rng.random()
        if kind < 0.2:
            labels = labels.numpy()
        elif kind < 0.25:
            labels = labels.float()
        elif kind < 0.28:
            labels = labels.tolist()
        with torch.no_grad():
            outputs = contract.call(f"segmentation case {case} {shape} {values} {type(labels).__name__}",
                                    lambda y=labels: segmenter(pixel_values, labels=y), ("labels",))
        if outputs is not None:
            contract.check(f"segmentation case {case}", bool(torch.isfinite(outputs.loss)), "non-finite loss")

    for case in range(100):
        targets = []
        for _ in range(rng.choice([2, 2, 2, 2, 1, 3])):
            count = rng.choice([0, 1, 3])
            boxes = torch.rand(count, 4) * rng.choice([1.0, 1.0, 1.0, 1.0, -1.0, NAN])
            classes = torch.randint(rng.choice([0, 0, 0, -1]), rng.choice([3, 3, 3, 5]), (count,))
            target = {"boxes": boxes, "class_labels": classes}
            if rng.random() < 0.03:
                target.pop(rng.choice(["boxes", "class_labels"]))
            if rng.random() < 0.03:
                target["boxes"] = boxes[:, :3]
            targets.append(target)
        labels = targets if rng.random() > 0.05 else targets[0]
        with torch.no_grad():
            outputs = contract.call(f"detection case {case}", lambda y=labels: detector(pixel_values, labels=y),
                                    ("labels", "boxes", "class_labels"))
        if outputs is not None:
            contract.check(f"detection case {case}", bool(torch.isfinite(outputs.loss)), "non-finite loss")
    contract.assert_clean()


# ------------------------------------------------------------------------------------------- image processor


def random_image(rng: random.Random):
    height, width = rng.choice([0, 1, 7, 40]), rng.choice([0, 1, 9, 33])
    kind = rng.random()
    if kind < 0.3:  # PIL, every mode a user meets
        mode = rng.choice(["RGB", "L", "RGBA", "P", "I;16", "I", "F", "1", "CMYK", "LA"])
        if height == 0 or width == 0:
            height, width = 5, 5
        image = PIL.Image.new(mode, (width, height))
        if mode in ("I;16", "I", "F"):
            scale = {"I;16": 65535, "I": rng.choice([255, 70000]), "F": rng.choice([1.0, 255.0])}[mode]
            array = (np.random.default_rng(rng.randint(0, 99)).random((height, width)) * scale)
            image = PIL.Image.fromarray(array.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
        return image
    channels = rng.choice([None, 1, 3, 4, 5])
    shape = (height, width) if channels is None else rng.choice([(height, width, channels), (channels, height, width)])
    dtype = rng.choice([np.uint8, np.uint8, np.float32, np.float64, np.uint16, np.int32, np.bool_, np.int8])
    array = np.random.default_rng(rng.randint(0, 99)).random(shape)
    array = (array * rng.choice([1, 1, 255, 300, -1])).astype(dtype)
    if rng.random() < 0.2 and array.size and array.dtype.kind == "f":
        array.flat[0] = rng.choice([NAN, INF])
    return torch.from_numpy(array.copy()) if rng.random() < 0.15 and dtype not in (np.uint16,) else array


PROCESSOR_VALUES = {
    "size": [{"shortest_edge": 32}, {"height": 32, "width": 40}, {"shortest_edge": 0}, 0, -5, 32, {"height": 0,
             "width": 4}, {"longest_edge": 40}, "32", {"shortest_edge": 24, "longest_edge": 40}],
    "crop_size": [{"height": 24, "width": 24}, {"height": 0, "width": 5}, 16, -1, {"width": 3}],
    "do_center_crop": [True, False],
    "do_normalize": [True, False],
    "resample": [2, 3, 0, 99],
    "image_mean": [[0.5, 0.5, 0.5], [0.5], 0.5, [0.5, 0.5]],
    "image_std": [[0.2, 0.2, 0.2], [0.0, 1.0, 1.0], 0.2],
    "do_reduce_labels": [True, False],
}


def test_fuzz_image_processor():
    contract, rng = Contract("image processor"), random.Random(4)
    keywords = ("image", "size", "crop", "pixel", "channel", "dtype", "mode", "mean", "std", "resample", "shape")
    for case in range(300):
        images = [random_image(rng) for _ in range(rng.choice([1, 1, 2]))]
        kwargs = {name: rng.choice(PROCESSOR_VALUES[name]) for name in rng.sample(sorted(PROCESSOR_VALUES), 2)}
        description = f"case {case} {[getattr(i, 'mode', getattr(i, 'shape', None)) for i in images]} {kwargs}"

        tensors = rng.choice(["pt", "np"])

        def run(kwargs=kwargs, images=images, tensors=tensors):
            return HfPvtImageProcessor(**kwargs)(images, return_tensors=tensors)

        batch = contract.call(description, run, keywords)
        if batch is None:
            continue
        pixels = np.asarray(batch["pixel_values"])
        contract.check(description, pixels.ndim == 4 and pixels.shape[:2] == (len(images), 3), f"shape {pixels.shape}")
        contract.check(description, bool(np.isfinite(pixels).all()), "non-finite pixel values")
        if kwargs.get("do_normalize", True) is not False:
            continue
        contract.check(description, pixels.min() >= 0 and pixels.max() <= 1, "unnormalised pixels outside [0, 1]")
    contract.assert_clean()


def test_fuzz_segmentation_maps():
    contract, rng = Contract("image processor + segmentation_maps"), random.Random(5)
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    for case in range(200):
        shape = rng.choice([(20, 30), (20, 30), (30, 20), (1, 20, 30), (20, 30, 1), (2, 20, 30), (0, 0)])
        high = rng.choice([3, 151, 256, 300])
        seg = np.random.default_rng(case).integers(rng.choice([0, 0, -1]), high, size=shape)
        seg = seg.astype(rng.choice([np.uint8, np.int64, np.float32, np.uint16])) if high <= 256 else seg
        if rng.random() < 0.1:
            seg = seg + 0.5
        reduce = rng.random() < 0.5
        processor = HfPvtImageProcessor.for_dense_prediction(32, 32, do_reduce_labels=reduce)
        batch = contract.call(f"case {case} {shape} {seg.dtype} <{high} reduce={reduce}",
                              lambda p=processor, y=seg: p(image, segmentation_maps=y, return_tensors="pt"),
                              ("segmentation map", "class id", "label", "size", "shape", "dtype"))
        if batch is None:
            continue
        labels = batch["labels"]
        contract.check(f"case {case}", tuple(labels.shape) == (1, 32, 32), f"labels of shape {tuple(labels.shape)}")
        source = np.asarray(seg).reshape(20, 30) if np.asarray(seg).size == 600 else None
        if source is not None and not reduce:
            contract.check(f"case {case}", set(labels.unique().tolist()) <= set(np.unique(source).tolist()),
                           "labels hold ids the map does not")
    contract.assert_clean()


def test_fuzz_detection_annotations():
    contract, rng = Contract("image processor + annotations"), random.Random(6)
    processor = HfPvtImageProcessor.for_object_detection(size={"shortest_edge": 64, "longest_edge": 96})
    image = np.asarray(PIL.Image.open(FIXTURES / "coco_000000039769.png").convert("RGB").resize((80, 60)))
    for case in range(150):
        annotations = []
        for _ in range(rng.choice([0, 1, 3])):
            bbox = [rng.uniform(-10, 70), rng.uniform(-10, 50), rng.uniform(-5, 40), rng.uniform(-5, 40)]
            if rng.random() < 0.1:
                bbox = bbox[:3]
            if rng.random() < 0.05:
                bbox[0] = NAN
            annotation = {"bbox": bbox, "category_id": rng.choice([0, 1, 2, -1, "cat"]), "iscrowd": rng.choice([0, 1])}
            if rng.random() < 0.05:
                annotation.pop(rng.choice(["bbox", "category_id"]))
            annotations.append(annotation)
        target = {"image_id": case, "annotations": annotations}
        if rng.random() < 0.05:
            target = annotations
        batch = contract.call(
            f"case {case} {target}",
            lambda t=target: processor(image, annotations=t, return_tensors="pt"),
            ("annotation", "bbox", "category", "box", "image_id", "label"),
        )
        if batch is None:
            continue
        boxes = batch["labels"][0]["boxes"]
        contract.check(f"case {case}", boxes.ndim == 2 and boxes.shape[-1] == 4, f"boxes of shape {boxes.shape}")
        contract.check(f"case {case}", bool(torch.isfinite(boxes).all()) and bool((boxes >= 0).all()),
                       f"boxes {boxes.tolist()} not finite and non-negative")
    contract.assert_clean()


# ------------------------------------------------------------------------------------------------ converter


def corrupt_checkpoint(rng: random.Random, source: dict[str, torch.Tensor], path: Path) -> str:
    """Write a damaged (or intact) checkpoint at `path` and say how it was damaged."""
    state = dict(source)
    damages = ["truncated", "random bytes", "empty", "extra key", "missing key", "wrong shape", "nan", "int8",
               "complex", "wrapped", "not a dict", "flipped bytes"]
    kind = rng.choice(["intact"] * 4 + damages)
    if kind == "extra key":
        state["block9.0.surprise"] = torch.zeros(3)
    elif kind == "missing key":
        state.pop(rng.choice(sorted(state)))
    elif kind == "wrong shape":
        key = rng.choice(sorted(state))
        state[key] = torch.zeros(*[s + 1 for s in state[key].shape])
    elif kind == "nan":
        key = rng.choice([k for k in sorted(state) if state[k].is_floating_point()])
        state[key] = state[key].clone().fill_(NAN)
    elif kind in ("int8", "complex"):
        key = rng.choice(sorted(state))
        state[key] = state[key].to(torch.int8 if kind == "int8" else torch.complex64)
    payload = {"state_dict": state} if kind == "wrapped" else ([1, 2] if kind == "not a dict" else state)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    if kind == "truncated":
        data = data[: rng.randint(1, len(data) - 1)]
    elif kind == "random bytes":
        data = rng.randbytes(rng.randint(1, 4000))
    elif kind == "empty":
        data = b""
    elif kind == "flipped bytes":
        data = bytearray(data)
        for _ in range(20):
            data[rng.randrange(len(data))] ^= 0xFF
        data = bytes(data)
    path.write_bytes(data)
    return kind


def test_fuzz_converter_cli(tmp_path):
    """The command line on damaged checkpoints and odd arguments: exit 0 with a whole folder, or exit 1 with one
    `error:` line, no traceback, and no file or folder left behind."""
    from reference_pvt import build_reference, random_init_

    reference = random_init_(build_reference({"embed_dims": STAGES, "num_heads": [1, 2, 3, 4], "depths": [1, 1, 1, 1],
                                              "mlp_ratios": [2] * 4, "sr_ratios": [8, 4, 2, 1], "version": 2,
                                              "linear": False, "num_classes": 5}), 0)
    source = reference.state_dict()
    tally = TALLIES.setdefault("hf-pvt-convert", Counter())
    violations, rng = [], random.Random(7)
    for case in range(60):
        workdir = tmp_path / f"case{case}"
        workdir.mkdir()
        checkpoint = workdir / "model.pth"
        kind = corrupt_checkpoint(rng, source, checkpoint)
        args = [str(checkpoint), str(workdir / "out"), "--num-heads", rng.choice(["1,2,3,4", "1,2,3,4", "0,1,1,1",
                                                                                    "x", "1,2,3"])]
        if rng.random() < 0.2:
            args += ["--variant", rng.choice(["pvt-v2-b0", "pvt-v9", "pvt-v2-b2"])]
        if rng.random() < 0.1:
            args += ["--task", rng.choice(["backbone", "classification", "segmentation"])]
        before = set(workdir.iterdir())
        stdout, stderr = io.StringIO(), io.StringIO()
        tally["inputs"] += 1
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = convert_main(args)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        except Exception as error:  # noqa: BLE001
            tally["unexpected"] += 1
            violations.append(f"case {case} ({kind}): raised {type(error).__name__}: {error}")
            continue
        errors = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
        description = f"case {case} ({kind}, {args[2:]})"
        if "Traceback" in stderr.getvalue():
            violations.append(f"{description}: printed a traceback")
        if code == 0:
            tally["accepted"] += 1
            written = {p.name for p in (workdir / "out").iterdir()}
            if not {"config.json", "model.safetensors", "README.md"} <= written:
                violations.append(f"{description}: exit 0 but the folder holds only {sorted(written)}")
            if kind not in ("intact", "wrapped", "flipped bytes"):  # flipped bytes may land in weights: undetectable
                violations.append(f"{description}: a damaged checkpoint converted")
        else:
            tally["exit 1 with one error: line" if code == 1 else f"exit {code}"] += 1
            if code not in (1, 2) or (code == 1 and len(errors) != 1):
                violations.append(f"{description}: exit {code} with stderr {stderr.getvalue()!r}")
            if set(workdir.iterdir()) != before:
                violations.append(f"{description}: left {sorted(p.name for p in set(workdir.iterdir()) - before)}")
    assert not violations, "\n".join(violations)
    assert tally["accepted"] and tally["exit 1 with one error: line"]


# ======================================================================================== ONNX export and Hub sharing
# (issue 20, round three) export_onnx / verify_onnx arguments without real exports (torch.onnx's exporter is replaced
# by a stub that stops the call once every argument has passed), make_hub_ready on damaged and odd folders (links
# included), save_for_hub arguments, push_to_hub arguments offline. Accepted calls are checked for what must hold:
# nothing written where an export stopped, sources and link targets untouched, folders complete and loadable.


class _ExportReached(Exception):
    """Raised by the stub exporter: every argument of export_onnx passed its checks."""


def _onnx_fuzz_models():
    torch.manual_seed(0)
    classifier = HfPvtForImageClassification(tiny_config("v2", depths=[1, 1, 1, 1])).eval()
    detector = HfPvtForObjectDetection(
        tiny_config("v2", depths=[1, 1, 1, 1], num_labels=3, decoder_hidden_size=16, detection_feat_channels=16)
    )
    mask_rcnn = type("HfPvtForInstanceSegmentation", (HfPvtForImageClassification,), {})
    return {
        "classifier": classifier,
        "detector (training mode)": detector.train(),
        "bf16 classifier": HfPvtForImageClassification(tiny_config("v2", depths=[1, 1, 1, 1])).to(torch.bfloat16),
        "Mask R-CNN": mask_rcnn(tiny_config("v2", depths=[1, 1, 1, 1])),
        "nn.Linear": torch.nn.Linear(2, 2),
        "None": None,
        "a folder name": "my-pvt",
    }


def _onnx_fuzz_path(rng: random.Random, root: Path):
    kinds = ["file", "file", "file", "nested", "str", "existing file", "existing dir", "under a file", "empty", "nul",
             "int", "bytes", "trailing slash", "link to dir", "dangling link", "link to file"]  # fmt: skip
    kind = rng.choice(kinds)
    if kind == "file":
        return kind, root / "model.onnx"
    if kind == "nested":
        return kind, root / "new" / "deeper" / "model.onnx"
    if kind == "str":
        return kind, str(root / "model.onnx")
    if kind == "existing file":
        (root / "old.onnx").write_bytes(b"old")
        return kind, root / "old.onnx"
    if kind == "existing dir":
        (root / "folder").mkdir(exist_ok=True)
        return kind, root / "folder"
    if kind == "under a file":
        (root / "plain").write_text("x")
        return kind, root / "plain" / "model.onnx"
    if kind == "trailing slash":
        return kind, f"{root / 'model.onnx'}/"
    if kind in ("link to dir", "dangling link", "link to file"):
        target = {"link to dir": root, "dangling link": root / "gone", "link to file": root / "target.onnx"}[kind]
        if kind == "link to file":
            target.write_bytes(b"target")
        link = root / f"link{rng.randrange(10**6)}.onnx"
        link.symlink_to(target)
        return kind, link
    return kind, {"empty": "", "nul": "a\0b.onnx", "int": 7, "bytes": b"model.onnx"}[kind]


def test_fuzz_export_onnx_arguments(tmp_path, monkeypatch):
    """export_onnx's arguments, every combination stopped before the export itself: accepted ones reach the exporter
    with nothing written yet, leave the model as it was, and leave no file, scratch folder or created parent."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from hf_pvt import export_onnx

    def stub(*args, **kwargs):
        raise _ExportReached

    monkeypatch.setattr(torch.onnx, "export", stub)
    models = _onnx_fuzz_models()
    contract, rng = Contract("export_onnx(model, path, ...)"), random.Random(20)
    values = {
        "opset_version": [None, 18, 23, np.int64(20), 7, 17, 24, "17", True, 18.0, -1],
        "verify": [True, False, True, "yes", 1, None],
        "atol": [1e-4, 0, 0.5, np.float32(1e-3), NAN, INF, -1.0, "1e-4", True],
    }
    keywords = ("opset_version", "verify", "atol", "path", "export")
    for case in range(300):
        root = tmp_path / f"case{case}"
        root.mkdir()
        name = rng.choice(["classifier"] * 4 + ["detector (training mode)"] * 2 + sorted(models))
        model = models[name]
        kind, path = _onnx_fuzz_path(rng, root)
        kwargs = {key: rng.choice(options) for key, options in values.items() if rng.random() < 0.4}
        before = sorted(p.name for p in root.iterdir())
        training = getattr(model, "training", None)
        description = f"case {case} {name} {kind} {kwargs}"

        def call(model=model, path=path, kwargs=kwargs):
            try:
                export_onnx(model, path, **kwargs)
            except _ExportReached:
                return "reached the exporter"
            return "returned"

        outcome = contract.call(description, call, keywords)
        after = sorted(p.name for p in root.iterdir())
        contract.check(description, after == before, f"left {sorted(set(after) - set(before))} behind")
        if (root / "target.onnx").exists():
            contract.check(description, (root / "target.onnx").read_bytes() == b"target", "wrote through a link")
        if (root / "old.onnx").exists():
            contract.check(description, (root / "old.onnx").read_bytes() == b"old", "touched the old file")
        if outcome is not None:
            contract.check(description, outcome == "reached the exporter", "returned without exporting")
            contract.check(description, model.training == training, "changed the model's train/eval mode")
            contract.check(description, kind not in ("existing dir", "under a file", "link to dir"), "bad path passed")
    contract.assert_clean()


class _Documented:
    """An error of a documented class other than ValueError/TypeError (HubUploadError, FileNotFoundError)."""

    def __init__(self, error: Exception):
        self.error = error


def _call_allowing(contract: Contract, description: str, function, keywords, documented: tuple[type, ...]):
    """`contract.call`, where the documented error classes count as clear errors too (tallied under their names)."""

    def run():
        try:
            return function()
        except documented as error:
            return _Documented(error)

    result = contract.call(description, run, keywords)
    if isinstance(result, _Documented):
        contract.tally["accepted"] -= 1
        contract.tally[type(result.error).__name__] += 1
        message = str(result.error).lower()
        if not any(keyword.lower() in message for keyword in keywords):
            contract.violations.append(f"{description}: {type(result.error).__name__} names none of {keywords}")
        return None
    return result


def _snapshot(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under `root` (links not followed): what it is and what it holds."""
    import os

    entries = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            entries[name] = ("link", os.readlink(path))
        elif path.is_dir():
            entries[name] = ("dir", "")
        else:
            entries[name] = ("file", path.read_bytes())
    return entries


@pytest.fixture(scope="module")
def hub_sources(tmp_path_factory):
    """Saved folders the fuzz copies and damages: an hf_pvt classifier and a DETR head on an hf_pvt backbone."""
    from transformers import DetrConfig, DetrForObjectDetection

    root = tmp_path_factory.mktemp("hub_sources")
    torch.manual_seed(0)
    HfPvtForImageClassification(tiny_config("v2", depths=[1, 1, 1, 1])).save_pretrained(root / "classifier")
    HfPvtImageProcessor().save_pretrained(root / "classifier")
    detr = DetrConfig(backbone_config=tiny_config("v2", depths=[1, 1, 1, 1], out_features=["stage4"]),
                      use_timm_backbone=False, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16,
                      decoder_ffn_dim=16, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=3,
                      num_labels=2)  # fmt: skip
    DetrForObjectDetection(detr).save_pretrained(root / "detr")
    return root


_CONFIG_EDITS = {
    "pvt_version": [3, "2", None, 7, 2],
    "hidden_sizes": ["16", [16, 32, 48], [16, 32, 48, 64]],
    "architectures": [5, "HfPvtModel", [5], None, [], ["HfPvtForImageClassification"]],
    "auto_map": ["str", 5, [], None, {"AutoTokenizer": ["tokenization_x.Tok", None]}, {"AutoModel": 5},
                 {"AutoConfig": "my_code.MyConfig"}, {"AutoConfig": None},
                 {"AutoModel": "modeling_hf_pvt.HfPvtModel"}],
    "model_type": [None, 5, "vit", "no-such-type", "upernet"],
}


def _damage_folder(rng: random.Random, folder: Path, outside: Path) -> list[str]:
    """Apply one to three damages (or none) to a saved folder; return their names."""
    import shutil

    damages = []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        kind = rng.choice(["edit config", "edit config", "edit backbone", "config bytes", "deep json", "weights",
                           "processor", "obstacle", "link code", "cache layout", "remove config"])
        config_path = folder / "config.json"
        if kind in ("edit config", "edit backbone") and config_path.is_file() and not config_path.is_symlink():
            try:
                config = json.loads(config_path.read_text())
            except (ValueError, RecursionError):
                continue
            if not isinstance(config, dict):
                continue
            target = config.get("backbone_config") if kind == "edit backbone" else config
            if not isinstance(target, dict):
                continue
            field = rng.choice(sorted(_CONFIG_EDITS))
            target[field] = rng.choice(_CONFIG_EDITS[field])
            config_path.write_text(json.dumps(config))
            kind = f"{kind} {field}={target[field]!r}"
        elif kind == "config bytes" and config_path.exists():
            config_path.unlink()
            config_path.write_bytes(rng.choice([b"", b"{", b"[1, 2]", b"\xff\xfe", b'{"model_type": "hf_pvt"'[:15]]))
        elif kind == "deep json" and config_path.exists():
            config_path.unlink()
            depth = rng.choice([50, 5000, 200000])
            config_path.write_text('{"model_type": "detr", "x": ' + "[" * depth + "]" * depth + "}")
            kind = f"deep json {depth}"
        elif kind == "weights" and (folder / "model.safetensors").exists():
            data = (folder / "model.safetensors").read_bytes()
            (folder / "model.safetensors").write_bytes(rng.choice([data[: len(data) // 2], b"", b"garbage" * 10]))
        elif kind == "processor":
            ours = b'{"image_processor_type": "HfPvtImageProcessor", "auto_map": '
            value = rng.choice([b"[]", b"{", b'{"image_processor_type": 5}', ours + b'"str"}',
                                ours + b'{"AutoImageProcessor": 5}}', ours + b"{}}"])
            path = folder / "preprocessor_config.json"
            if path.is_symlink():
                path.unlink()
            path.write_bytes(value)
        elif kind == "obstacle":
            name = rng.choice(["README.md", "modeling_hf_pvt.py", "hub_hf_pvt.py"])
            if (folder / name).is_symlink() or (folder / name).is_file():
                (folder / name).unlink()
            (folder / name).mkdir(exist_ok=True)
            kind = f"obstacle {name}"
        elif kind == "link code":
            # The folder's code is a link to a file elsewhere (someone's checkout): it must not be written to.
            name = rng.choice(["modeling_hf_pvt.py", "configuration_hf_pvt.py"])
            source = outside / f"linked_{name}"
            source.write_text("# someone else's file\n")
            if (folder / name).is_dir() and not (folder / name).is_symlink():
                continue
            (folder / name).unlink(missing_ok=True)
            (folder / name).symlink_to(source)
        elif kind == "cache layout":
            # The Hugging Face cache: every file a link to a content-addressed blob.
            blobs = outside / "blobs"
            blobs.mkdir(exist_ok=True)
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.is_symlink():
                    blob = blobs / f"{path.name}.{rng.randrange(10**9)}"
                    shutil.move(path, blob)
                    path.symlink_to(blob)
        elif kind == "remove config" and config_path.exists():
            config_path.unlink()
        damages.append(kind)
    return damages


def test_fuzz_make_hub_ready(tmp_path, hub_sources):
    """make_hub_ready on damaged and odd folders: a complete Hub-ready folder, or a clear error and the folder (and
    everything its links point to) exactly as it was. Accepted folders are checked to be complete and idempotent."""
    import shutil

    from hf_pvt import make_hub_ready

    contract, rng = Contract("make_hub_ready(folder)"), random.Random(21)
    keywords = ("config.json", "preprocessor_config", "folder", "auto_map", "architectures", "model_type",
                "pvt_version", "hidden_sizes", "safetensors", "repo_id", "rewrite_model_card", "json", "README.md",
                ".py")  # fmt: skip
    for case in range(200):
        case_root = tmp_path / f"case{case}"
        outside = case_root / "outside"
        outside.mkdir(parents=True)
        source = rng.choice(["classifier", "classifier", "detr"])
        folder = case_root / "folder"
        shutil.copytree(hub_sources / source, folder)
        damages = _damage_folder(rng, folder, outside)
        arguments = {}
        if rng.random() < 0.2:
            arguments["repo_id"] = rng.choice(["someone/pvt", "not a repo id", 5, "", None])
        if rng.random() < 0.2:
            arguments["rewrite_model_card"] = rng.choice([True, False, "yes", None])
        target = folder
        special = rng.random()
        if special < 0.05:
            target = case_root / "missing"
        elif special < 0.08:
            target = folder / "config.json"
        elif special < 0.1:
            target = rng.choice([None, 5])
        elif special < 0.15:
            target = case_root / "link-to-folder"
            target.symlink_to(folder)
        before_outside, before = _snapshot(outside), _snapshot(folder)
        description = f"case {case} {source} {damages} {arguments} target={target if special < 0.15 else 'folder'}"
        written = _call_allowing(
            contract, description, lambda t=target, a=arguments: make_hub_ready(t, **a), keywords,
            (FileNotFoundError,),
        )  # fmt: skip
        contract.check(description, _snapshot(outside) == before_outside, "wrote through a link (outside changed)")
        after = _snapshot(folder)
        if written is None:
            contract.check(description, after == before, f"failed but changed {_changed(before, after)}")
            continue
        config = json.loads((folder / "config.json").read_text())
        modules = {reference.split(".")[0] for value in config.get("auto_map", {}).values()
                   for reference in (value if isinstance(value, list) else [value]) if isinstance(reference, str)}
        for module in modules:
            path = folder / f"{module}.py"
            contract.check(description, path.is_file(), f"auto_map names {module} but {path.name} is missing")
        contract.check(description, not any(".tmp" in name or "partial" in name for name in after), "left temp files")
        try:
            make_hub_ready(target)
        except Exception as error:  # noqa: BLE001
            contract.check(description, False, f"a second run raised {type(error).__name__}: {error}")
        contract.check(description, _snapshot(folder) == after, "a second run changed files")
    contract.assert_clean()


def _changed(before: dict, after: dict) -> list[str]:
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def test_fuzz_save_for_hub_arguments(tmp_path):
    """save_for_hub: every argument checked before anything is saved; accepted calls give a complete folder."""
    from transformers import ResNetConfig, ResNetModel

    from hf_pvt import save_for_hub

    torch.manual_seed(0)
    classifier = HfPvtForImageClassification(tiny_config("v2", depths=[1, 1, 1, 1]))
    altered = HfPvtForImageClassification(tiny_config("v2", depths=[1, 1, 1, 1]))
    altered.config.depths = [1, 1, 1]  # changed after construction: a folder hf_pvt would refuse to load
    models = {
        "classifier": classifier,
        "altered config": altered,
        "resnet": ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1])),
        "nn.Linear": torch.nn.Linear(2, 2),
        "None": None,
    }
    processors = {"none": None, "hf_pvt": HfPvtImageProcessor(), "str": "x", "int": 5, "dict": {"size": 32}}
    contract, rng = Contract("save_for_hub(model, folder, ...)"), random.Random(22)
    keywords = ("model", "save_directory", "image_processor", "repo_id", "hidden_sizes", "hf_pvt", "folder")
    for case in range(150):
        root = tmp_path / f"case{case}"
        root.mkdir()
        model_name = rng.choice(["classifier"] * 5 + sorted(models))
        processor_name = rng.choice(["none", "hf_pvt", "hf_pvt", *sorted(processors)])
        destination = rng.choice(["new", "new", "new", "nested", "str", "file", "int", "none"])
        directory = {"new": root / "out", "nested": root / "a" / "b", "str": str(root / "out"), "file": root / "f",
                     "int": 3, "none": None}[destination]  # fmt: skip
        if destination == "file":
            directory.write_text("x")
        kwargs = {}
        if rng.random() < 0.3:
            kwargs["repo_id"] = rng.choice(["someone/pvt", "not a repo id", 5, None])
        description = f"case {case} {model_name} processor={processor_name} {destination} {kwargs}"
        before = _snapshot(root)
        model, processor = models[model_name], processors[processor_name]
        folder = contract.call(
            description, lambda m=model, d=directory, p=processor, k=kwargs: save_for_hub(m, d, p, **k), keywords
        )
        if folder is None:
            after = _snapshot(root)
            contract.check(description, after == before, f"failed but wrote {_changed(before, after)}")
            continue
        names = {path.name for path in Path(folder).iterdir()}
        contract.check(description, {"config.json", "model.safetensors", "README.md", "modeling_hf_pvt.py"} <= names,
                       f"the folder holds only {sorted(names)}")  # fmt: skip
        contract.check(description, (processor_name == "hf_pvt") == ("preprocessor_config.json" in names),
                       "the image processor was saved or not saved wrongly")  # fmt: skip
    contract.assert_clean()


def test_fuzz_push_to_hub_arguments_offline(tmp_path, hub_sources, monkeypatch):
    """push_to_hub offline: wrong arguments are TypeError/ValueError (FileNotFoundError for a folder without
    config.json); right ones get the documented HubUploadError, tallied as accepted. The folder is never touched
    (offline, push_to_hub stops before making it Hub-ready)."""
    import shutil

    import huggingface_hub

    from hf_pvt import HubUploadError, push_to_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "folder"
    shutil.copytree(hub_sources / "classifier", folder)
    (tmp_path / "plain").write_text("x")
    before = _snapshot(folder)
    values = {
        "repo_id": ["someone/pvt", "pvt", None, 5, "", "not a repo id", "a/b/c", "x" * 200, ["someone/pvt"]],
        "private": [False, True, "yes", None, 1],
        "token": [None, "hf_abc", False, 5, ["hf"]],
        "commit_message": ["Upload", "", None, 5],
        "ignore_patterns": [None, "*.bin", ["*.bin", "*.pt"], [5], 5, []],
    }
    folders = {"folder": folder, "str": str(folder), "missing": tmp_path / "missing", "file": tmp_path / "plain",
               "int": 5, "none": None}  # fmt: skip
    contract, rng = Contract("push_to_hub(folder, repo_id, ...) offline"), random.Random(23)
    keywords = ("repo_id", "private", "token", "commit_message", "ignore_patterns", "folder", "config.json")
    for case in range(200):
        where = rng.choice(["folder"] * 6 + sorted(folders))
        repo_id = rng.choice(["someone/pvt"] * 4 + values["repo_id"])
        kwargs = {key: rng.choice(values[key]) for key in sorted(values) if key != "repo_id" and rng.random() < 0.3}
        description = f"case {case} {where} {repo_id!r} {kwargs}"

        def push(f=folders[where], r=repo_id, k=kwargs):
            try:
                push_to_hub(f, r, **k)
            except HubUploadError as error:  # the documented answer to valid arguments offline
                return str(error)
            return None

        message = _call_allowing(contract, description, push, keywords, (FileNotFoundError,))
        if message is not None:
            contract.check(description, "HF_HUB_OFFLINE" in message and "intact" in message, f"said {message!r}")
        contract.check(description, _snapshot(folder) == before, "touched the folder")
    contract.assert_clean()


# ================================================================== detector inputs, post-processing, converter names
# (issue 20, round three) The detector's labels and pixel_values (odd dtypes, numpy, 3-D, lists, huge and pixel-scale
# boxes, empty batches, padded batches), `post_process_object_detection` on altered outputs and arguments, the
# detection processor's `image_id` / `category_id` at and beyond int64, and the converter's class names from
# `meta["CLASSES"]`. Every input is built knowing whether it is valid: a valid one must be accepted and its result
# checked, an invalid one refused with an error naming the problem; both directions are contract violations.


def _detector_pixels(rng: random.Random, batch: int, height: int, width: int):
    """pixel_values, whether they are valid, and the problem."""
    pixels = torch.randn(batch, 3, height, width)
    kind = rng.choice(["tensor"] * 8 + ["float64", "bfloat16", "numpy", "3-D", "int64", "list", "1 channel"])
    if kind == "float64":
        return pixels.double(), True, ""
    if kind == "bfloat16":
        return pixels.bfloat16(), True, ""
    if kind == "numpy":
        return pixels.numpy(), False, "numpy pixel_values"
    if kind == "3-D":
        return torch.randn(3, height, width), False, "3-D pixel_values"
    if kind == "int64":
        return (pixels * 50).long(), False, "integer pixel_values"
    if kind == "list":
        return pixels.tolist(), False, "pixel_values as lists"
    if kind == "1 channel":
        return pixels[:, :1], False, "one channel"
    return pixels, True, ""


def _detector_target(rng: random.Random, num_labels: int) -> tuple[dict, bool, str]:
    """One image's DETR-style target, whether it is valid, and the problem."""
    count = rng.choice([0, 1, 1, 3])
    centres, sizes = torch.rand(count, 2) * 0.6 + 0.2, torch.rand(count, 2) * 0.35 + 0.05
    boxes: object = torch.cat([centres, sizes], dim=1)
    classes: object = torch.randint(0, num_labels, (count,))
    valid, problem = True, ""
    box_kind = rng.choice(["ok"] * 10 + ["numpy", "list", "float64", "huge", "pixels", "nan", "inf", "negative",
                                         "complex", "bool", "strings", "None", "three columns"])  # fmt: skip
    if box_kind == "numpy":
        boxes = boxes.numpy()
    elif box_kind == "list":
        boxes = boxes.tolist()
    elif box_kind == "float64":
        boxes = boxes.double()
    elif box_kind in ("huge", "pixels", "nan", "inf", "negative") and count:
        boxes = boxes.clone()
        boxes[0, rng.randrange(2, 4) if box_kind == "negative" else rng.randrange(4)] = {
            "huge": 3e38, "pixels": 64.0 * rng.uniform(3, 9), "nan": NAN, "inf": INF, "negative": -0.1
        }[box_kind]  # fmt: skip
        valid, problem = False, f"boxes {box_kind}"
    elif box_kind == "complex":
        boxes = boxes.to(torch.complex64)
        valid, problem = count == 0, "complex boxes"
    elif box_kind == "bool":
        boxes = boxes > 0.5
        valid, problem = count == 0, "bool boxes"
    elif box_kind == "strings":
        boxes = [["a", "b", "c", "d"]] * count
        valid, problem = count == 0, "string boxes"
    elif box_kind == "None":
        boxes, valid, problem = None, False, "boxes None"
    elif box_kind == "three columns":
        boxes, valid, problem = torch.rand(count, 3), False, "boxes (n, 3)"
    class_kind = rng.choice(["ok"] * 10 + ["int32", "uint8", "uint64", "list", "numpy", "out of range", "negative",
                                           "float", "bool", "complex", "None", "strings", "huge uint64",
                                           "too many"])  # fmt: skip
    if class_kind == "int32":
        classes = classes.int()
    elif class_kind == "uint8":
        classes = classes.to(torch.uint8)
    elif class_kind == "uint64":
        classes = classes.to(torch.uint64)
    elif class_kind == "list":
        classes = classes.tolist()
    elif class_kind == "numpy":
        classes = classes.numpy()
    elif class_kind in ("out of range", "negative", "huge uint64") and count:
        classes = classes.clone()
        classes[0] = num_labels if class_kind == "out of range" else -1
        if class_kind == "huge uint64":
            classes = torch.tensor([2**63 + 7] * count, dtype=torch.uint64)
        valid, problem = False, f"class ids {class_kind}"
    elif class_kind in ("float", "bool", "complex") and count:
        classes = {"float": classes.float(), "bool": classes > 0, "complex": classes.to(torch.complex64)}[class_kind]
        valid, problem = False, f"{class_kind} class ids"
    elif class_kind == "None":
        classes, valid, problem = None, False, "class_labels None"
    elif class_kind == "strings" and count:
        classes, valid, problem = ["cat"] * count, False, "string class ids"
    elif class_kind == "too many":
        classes, valid, problem = torch.zeros(count + 1, dtype=torch.long), False, "one class id too many"
    target = {"boxes": boxes, "class_labels": classes}
    if rng.random() < 0.03:
        target.pop(rng.choice(["boxes", "class_labels"]))
        valid, problem = False, "a key missing"
    return target, valid, problem


@pytest.fixture(scope="module")
def fuzz_detector():
    torch.manual_seed(0)
    head = {"decoder_hidden_size": 16, "detection_feat_channels": 16, "detection_num_convs": 1, "num_labels": 3,
            "depths": [1, 1, 1, 1]}  # fmt: skip
    return HfPvtForObjectDetection(tiny_config("v2", **head))


def test_fuzz_detector_labels_and_pixel_values(fuzz_detector):
    contract, rng = Contract("detector labels + pixel_values"), random.Random(20)
    keywords = ("pixel_values", "pixel_mask", "labels", "boxes", "class_labels")
    for case in range(240):
        fuzz_detector.train(rng.random() < 0.3)
        batch = rng.choice([0, 1, 2, 2, 3])
        height, width = rng.choice([(32, 32), (40, 56), (64, 48)])
        pixels, valid, problems = _detector_pixels(rng, batch, height, width)
        problems = [problems] if problems else []
        mask = None
        if rng.random() < 0.4 and batch:
            mask = torch.zeros(batch, height, width, dtype=torch.long)
            for image in range(batch):
                mask[image, : rng.randint(1, height), : rng.randint(1, width)] = 1
            if rng.random() < 0.1:
                mask, valid = mask[:, 1:], False
                problems.append("pixel_mask of another size")
        labels = None
        if rng.random() < 0.85:
            targets = [_detector_target(rng, 3) for _ in range(batch)]
            labels = [target for target, _, _ in targets]
            valid &= all(ok for _, ok, _ in targets)
            problems += [problem for _, ok, problem in targets if not ok]
            if rng.random() < 0.05:
                labels, valid = labels + [labels[0] if labels else {}], False
                problems.append("one target too many")
            elif rng.random() < 0.03 and labels:
                labels, valid = labels[0], False
                problems.append("a dict, not a list")
        description = f"case {case} batch {batch} {height}x{width} {problems or 'valid'}"
        with torch.no_grad():
            outputs = contract.call(
                description, lambda x=pixels, m=mask, y=labels: fuzz_detector(x, pixel_mask=m, labels=y), keywords
            )
        if outputs is None:
            if valid:
                contract.violations.append(f"{description}: a valid input was refused")
            continue
        contract.check(description, valid, f"an input with {problems} was accepted")
        anchors = outputs.logits.shape[1]
        contract.check(description, outputs.logits.shape == (batch, anchors, 3), f"logits {outputs.logits.shape}")
        contract.check(description, outputs.anchors.shape == (batch, anchors, 4), "anchors of the wrong shape")
        contract.check(description, outputs.spatial_shapes.shape == (batch, 5, 2), "spatial_shapes of the wrong shape")
        contract.check(description, bool(torch.isfinite(outputs.logits).all()), "non-finite logits")
        if labels is not None:
            contract.check(description, bool(torch.isfinite(outputs.loss)), f"loss {outputs.loss}")
    contract.assert_clean()


def _altered_outputs(rng: random.Random, outputs: dict) -> tuple[object, bool, str]:
    """A detection output as given to post-processing: altered or not, whether valid, and how."""
    fields = dict(outputs)
    names = ("logits", "pred_box_deltas", "anchors", "spatial_shapes", "image_sizes")
    kind = rng.choice(["as is"] * 6 + ["shared anchors", "2-D spatial_shapes", "per-level maps", "tuple",
                                        "tuple with loss", *(f"drop {n}" for n in names), "fewer logits rows",
                                        "fewer delta rows", "fewer anchors", "no labels", "deltas of 3",
                                        "integer logits", "NaN logits", "infinite deltas", "wrong spatial_shapes",
                                        "zero spatial_shapes", "float spatial_shapes", "one image_sizes row",
                                        "zero image size", "float image_sizes", "None", "a tensor", "DETR output",
                                        "4-D logits"])  # fmt: skip
    if kind == "as is":
        return fields, True, ""
    if kind == "shared anchors":
        return {**fields, "anchors": fields["anchors"][0]}, True, ""
    if kind == "2-D spatial_shapes":
        return {**fields, "spatial_shapes": fields["spatial_shapes"][0]}, True, ""
    if kind == "per-level maps":
        logits, deltas, anchors = outputs.level_maps()
        maps = {"logits": logits, "pred_box_deltas": deltas, "anchors": anchors, "image_sizes": fields["image_sizes"]}
        return maps, True, ""
    if kind == "tuple":
        return tuple(fields[n] for n in names), True, ""
    if kind == "tuple with loss":
        return (torch.tensor(1.0), {"loss_cls": torch.tensor(0.5)}, *(fields[n] for n in names)), True, ""
    if kind.startswith("drop "):
        fields.pop(kind[5:])
        return fields, False, kind
    altered = {
        "fewer logits rows": ("logits", lambda t: t[:, :-1]),
        "fewer delta rows": ("pred_box_deltas", lambda t: t[:, :-1]),
        "fewer anchors": ("anchors", lambda t: t[:, :-1]),
        "no labels": ("logits", lambda t: t[..., :0]),
        "deltas of 3": ("pred_box_deltas", lambda t: t[..., :3]),
        "integer logits": ("logits", lambda t: t.long()),
        "NaN logits": ("logits", lambda t: t.clone().fill_(NAN)),
        "infinite deltas": ("pred_box_deltas", lambda t: t.clone().fill_(INF)),
        "wrong spatial_shapes": ("spatial_shapes", lambda t: t + 1),
        "zero spatial_shapes": ("spatial_shapes", lambda t: t * 0),
        "float spatial_shapes": ("spatial_shapes", lambda t: t.float()),
        "one image_sizes row": ("image_sizes", lambda t: t[:1]),
        "zero image size": ("image_sizes", lambda t: t * 0),
        "float image_sizes": ("image_sizes", lambda t: t.float() + 0.5),
        "4-D logits": ("logits", lambda t: t[..., None]),
    }
    if kind in altered:
        name, change = altered[kind]
        return {**fields, name: change(fields[name])}, False, kind
    if kind == "DETR output":
        return {"logits": torch.randn(2, 10, 4), "pred_boxes": torch.rand(2, 10, 4)}, False, kind
    return (None if kind == "None" else torch.zeros(2, 3)), False, kind


POSTPROCESS_ARGUMENTS = {
    "threshold": [0.05, 0.0, 0.3, 1.0, -0.1, 1.5, NAN, "0.5", None, True],
    "nms_pre": [1000, 0, -1, 5, 1.5, "10"],
    "iou_threshold": [0.5, 0.0, 1.0, 2.0, NAN],
    "max_per_image": [100, 0, 3, -5, 2.0],
    "target_sizes": [None, [(60, 80), (90, 50)], "tensor", [(60, 80)], [(0, 5), (5, 5)], [(60.5, 80), (1, 1)], "x"],
}
POSTPROCESS_VALID = {
    "threshold": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
    "nms_pre": lambda v: isinstance(v, int),
    "iou_threshold": lambda v: isinstance(v, (int, float)) and 0 <= v <= 1,
    "max_per_image": lambda v: isinstance(v, int),
    "target_sizes": lambda v: v is None or v == "tensor" or v == [(60, 80), (90, 50)],
}


def test_fuzz_post_process_object_detection(fuzz_detector):
    contract, rng = Contract("post_process_object_detection"), random.Random(21)
    keywords = ("outputs", "logits", "pred_box_deltas", "anchors", "spatial_shapes", "image_sizes", "target_sizes",
                "target sizes", "threshold", "nms_pre", "max_per_image", "iou_threshold", "pred_boxes")  # fmt: skip
    processor = HfPvtImageProcessor.for_object_detection()
    pixel_mask = torch.zeros(2, 64, 64, dtype=torch.long)
    pixel_mask[0, :48, :64], pixel_mask[1, :64, :30] = 1, 1
    with torch.no_grad():
        fuzz_detector.eval()
        with torch.no_grad():
            fuzz_detector.bbox_head.retina_cls.bias.fill_(-0.5)  # scores near 0.4: many candidates above 0.05
        outputs = fuzz_detector(torch.randn(2, 3, 64, 64), pixel_mask=pixel_mask)
    for case in range(240):
        given, valid, problem = _altered_outputs(rng, outputs)
        problems = [problem] if problem else []
        kwargs = {}
        for name in rng.sample(sorted(POSTPROCESS_ARGUMENTS), rng.randint(0, 3)):
            kwargs[name] = rng.choice(POSTPROCESS_ARGUMENTS[name])
            if not POSTPROCESS_VALID[name](kwargs[name]):
                valid = False
                problems.append(f"{name}={kwargs[name]!r}")
            if kwargs[name] == "tensor":
                kwargs[name] = torch.tensor([[60, 80], [90, 50]])
        description = f"case {case} {problems or 'valid'} {sorted(kwargs)}"
        results = contract.call(
            description, lambda o=given, k=kwargs: processor.post_process_object_detection(o, **k), keywords
        )
        if results is None:
            if valid:
                contract.violations.append(f"{description}: a valid input was refused")
            continue
        contract.check(description, valid, f"an input with {problems} was accepted")
        contract.check(description, len(results) == 2, f"{len(results)} results for 2 images")
        threshold = kwargs.get("threshold", 0.05)
        cap = kwargs.get("max_per_image", 100)
        for index, result in enumerate(results):
            scores, labels, boxes = result["scores"], result["labels"], result["boxes"]
            count = len(scores)
            contract.check(description, labels.shape == (count,) and boxes.shape == (count, 4), "shapes disagree")
            contract.check(description, cap <= 0 or count <= cap, f"{count} detections over max_per_image {cap}")
            contract.check(description, bool((scores > threshold).all() & (scores <= 1).all()), "scores out of range")
            contract.check(description, bool(((labels >= 0) & (labels < 3)).all()), "labels out of range")
            limit = (kwargs["target_sizes"][index] if kwargs.get("target_sizes") is not None
                     else outputs.image_sizes[index]) if not isinstance(kwargs.get("target_sizes"), torch.Tensor) \
                else kwargs["target_sizes"][index]  # fmt: skip
            height, width = (int(v) for v in limit)
            inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)
            ordered = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
            contract.check(description, bool(torch.isfinite(boxes).all() & inside.all() & ordered.all()),
                           f"boxes outside the {height}x{width} image")  # fmt: skip
    contract.assert_clean()


ID_VALUES = [0, 1, 7, 2**31, 2**63 - 1, 2**63, 2**64, -1, -(2**63), -(2**63) - 1, np.int64(5), np.int32(7),
             np.uint8(3), np.uint64(5), np.uint64(2**63), True, 1.0, "3", None, 2.5, np.float64(3.0)]  # fmt: skip


def test_fuzz_detection_processor_ids():
    contract, rng = Contract("image processor + ids at and beyond int64"), random.Random(22)
    processor = HfPvtImageProcessor.for_object_detection(size={"shortest_edge": 64, "longest_edge": 96})
    image = np.zeros((60, 80, 3), np.uint8)

    def is_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    for case in range(200):
        image_id, category_id = rng.choice(ID_VALUES), rng.choice(ID_VALUES)
        count = rng.choice([1, 1, 2])
        objects = [{"bbox": [5, 5, 20, 20], "category_id": category_id}] * count
        annotation = {"image_id": image_id, "annotations": objects}
        valid = is_int(image_id) and -(2**63) <= int(image_id) < 2**63
        valid &= is_int(category_id) and 0 <= int(category_id) < 2**63
        description = f"case {case} image_id {image_id!r} category_id {category_id!r}"
        batch = contract.call(description, lambda a=annotation: processor(image, annotations=a, return_tensors="pt"),
                              ("image_id", "category_id"))  # fmt: skip
        if batch is None:
            if valid:
                contract.violations.append(f"{description}: valid ids were refused")
            continue
        contract.check(description, valid, "ids out of int64 (or not integers) were accepted")
        labels = batch["labels"][0]
        contract.check(description, labels["image_id"].tolist() == [int(image_id)], f"image_id {labels['image_id']}")
        contract.check(description, labels["class_labels"].tolist() == [int(category_id)] * count,
                       f"class_labels {labels['class_labels']}")  # fmt: skip
    contract.assert_clean()


def _class_name_values(rng: random.Random, num_labels: int):
    """meta["CLASSES"] as a checkpoint may hold it, and the names it should give (None: it should not be used)."""
    names = [f"class {i}" for i in range(num_labels)]
    kind = rng.choice(["fit", "fit", "tuple", "spaces", "missing", "one short", "one more", "empty list", "ints",
                       "None inside", "bytes", "a string", "a dict", "repeated", "empty name", "blank name",
                       "nested", "numpy"])  # fmt: skip
    if kind == "fit":
        return names, names
    if kind == "tuple":
        return tuple(names), names
    if kind == "spaces":
        return [f" {name} " for name in names], names
    if kind == "missing":
        return None, "assumed"
    values = {
        "one short": names[:-1],
        "one more": [*names, "extra"],
        "empty list": [],
        "ints": list(range(num_labels)),
        "None inside": [*names[:-1], None],
        "bytes": [name.encode() for name in names],
        "a string": " ".join(names),
        "a dict": dict(enumerate(names)),
        "repeated": [*names[:-1], names[0]],
        "empty name": [*names[:-1], ""],
        "blank name": [*names[:-1], "   "],
        "nested": [[name] for name in names],
        "numpy": np.array(names),
    }[kind]
    return values, None


def test_fuzz_converter_class_names(tmp_path):
    """The class names the converter gives a detector from meta["CLASSES"]: the checkpoint's own when they name each
    class once, COCO's when an 80-class head has none, else LABEL_k; always with id2label and label2id exact inverses,
    and a note whenever the checkpoint's names are not used; end to end, the card claims nothing then."""
    import dataclasses

    from reference_retinanet import RetinaNetReference, mmdet_checkpoint, random_retinanet_

    from hf_pvt.conversion.coco_labels import COCO_DETECTION_LABELS
    from hf_pvt.conversion.convert import build_config
    from hf_pvt.conversion.sources import load_source

    tally = TALLIES.setdefault("hf-pvt-convert class names (meta['CLASSES'])", Counter())
    violations, rng = [], random.Random(23)
    backbone = {"embed_dims": STAGES, "num_heads": [1, 2, 3, 4], "depths": [1, 1, 1, 1], "mlp_ratios": [2] * 4,
                "sr_ratios": [8, 4, 2, 1], "img_size": 64, "version": 2}  # fmt: skip
    sources = {}
    for num_labels in (3, 80):
        reference = random_retinanet_(RetinaNetReference(backbone, num_classes=num_labels, fpn_channels=16,
                                                         feat_channels=16, stacked_convs=1), 0)  # fmt: skip
        path = tmp_path / f"retinanet{num_labels}.pth"
        torch.save(mmdet_checkpoint(reference), path)
        sources[num_labels] = load_source(path)
    for case in range(300):
        num_labels = rng.choice([3, 3, 80])
        meta, expected = _class_name_values(rng, num_labels)
        source = dataclasses.replace(sources[num_labels], meta_classes=meta, notes=[])
        tally["inputs"] += 1
        description = f"case {case} {num_labels} classes, meta {str(meta)[:60]!r}"
        try:
            config, _, task = build_config(source, None, [1, 2, 3, 4], "auto")
        except Exception as error:  # noqa: BLE001 - class names never stop a conversion
            tally["unexpected"] += 1
            violations.append(f"{description}: raised {type(error).__name__}: {error}")
            continue
        tally["accepted"] += 1
        labels = [config.id2label.get(i) for i in range(num_labels)]
        notes = [note for note in source.notes if "CLASSES" in note]
        one_to_one = sorted(config.id2label) == list(range(num_labels)) and len(set(labels)) == num_labels
        if not one_to_one or config.label2id != {name: i for i, name in enumerate(labels)}:
            violations.append(f"{description}: id2label and label2id are not exact inverses")
        if expected == "assumed":
            want = list(COCO_DETECTION_LABELS) if num_labels == 80 else [f"LABEL_{i}" for i in range(num_labels)]
            tally["names assumed (note)"] += 1
        elif expected is None:
            want = [f"LABEL_{i}" for i in range(num_labels)]
            tally["names not used: LABEL_k (note)"] += 1
        else:
            want = expected
            tally["the checkpoint's names"] += 1
        if labels != want:
            tally["wrong results"] += 1
            violations.append(f"{description}: labels {labels[:4]}..., expected {want[:4]}...")
        if (expected != want) != bool(notes) and expected is not None:
            violations.append(f"{description}: notes {notes}")
        if expected is None and len(notes) != 1:
            violations.append(f"{description}: unusable names without exactly one note: {notes}")
    # End to end, a few: exit 0, the note printed, the card without published results.
    for case, meta in enumerate([list(COCO_DETECTION_LABELS[:79]), [*COCO_DETECTION_LABELS[:79], "person"], None]):
        path = tmp_path / f"cli{case}.pth"
        reference = random_retinanet_(RetinaNetReference(backbone, num_classes=80, fpn_channels=16, feat_channels=16,
                                                         stacked_convs=1), case)  # fmt: skip
        checkpoint = mmdet_checkpoint(reference, meta)
        torch.save(checkpoint, path)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = convert_main([str(path), str(tmp_path / f"out{case}"), "--num-heads", "1,2,3,4"])
        tally["inputs"] += 1
        tally["accepted" if code == 0 else f"exit {code}"] += 1
        card = (tmp_path / f"out{case}" / "README.md").read_text() if code == 0 else ""
        if code != 0 or "note: " not in stdout.getvalue() or "CLASSES" not in stdout.getvalue() or "box AP" in card:
            violations.append(f"end-to-end {case}: exit {code}, {stdout.getvalue()[-300:]!r} {stderr.getvalue()!r}")
    assert not violations, f"{len(violations)} violations:\n" + "\n".join(violations[:30])
