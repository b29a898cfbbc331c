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

from conversion.convert import main as convert_main
from hf_pvt import (
    HfPvtConfig,
    HfPvtForImageClassification,
    HfPvtForObjectDetection,
    HfPvtForSemanticSegmentation,
    HfPvtImageProcessor,
)

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
