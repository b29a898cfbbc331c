"""The instance segmentation example end to end, offline: a tiny Mask R-CNN fitted on a synthetic COCO-format set,
its evaluation checked against the ground truth, and a smoke run on real COCO photos (coco128).

The synthetic set is written by the test: crops of the real photos in tests/fixtures as backgrounds, with filled
squares and circles (COCO category ids 3 and 7) whose masks are exact: squares as COCO polygons (pycocotools
rasterises [x, y, x + s, y, ...] to exactly the drawn pixels), circles as RLE of the drawn pixels (compressed and
uncompressed). COCO box and mask AP are computed by pycocotools inside the script.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from hf_pvt.instance_masks_hf_pvt import encode_rle

REPO = FIXTURES.parent.parent
EXAMPLES = REPO / "examples"
SCRIPT = EXAMPLES / "run_instance_segmentation.py"
COCO128 = REPO.parent / "shared" / "data" / "coco128"
COCO128_FIXTURE = FIXTURES / "coco128_instances"
BACKGROUNDS = [FIXTURES / "coco_000000039769.png", *(FIXTURES / f"ade20k_val_0000000{i}.jpg" for i in (1, 2, 3))]
CATEGORIES = [
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "circle", "supercategory": "shape"},
]
IMAGE_SIZES = [(128, 128), (160, 128), (128, 96)]  # (width, height)
SIDE_RANGE = (28, 64)
TINY_MASK_RCNN = {
    "hidden_sizes": [16, 32, 48, 64],
    "num_attention_heads": [1, 2, 3, 4],
    "mlp_ratios": [2, 2, 2, 2],
    "depths": [1, 1, 1, 1],
    "sr_ratios": [8, 4, 2, 1],
    "decoder_hidden_size": 32,
    "rcnn_fc_channels": 64,
    "mask_head_channels": 32,
    "mask_head_num_convs": 2,
    "rpn_train_nms_pre": 500,
    "rpn_test_nms_pre": 300,
    "rpn_max_proposals": 300,
    "rcnn_num_samples": 128,
}


def load_example():
    if str(EXAMPLES) not in sys.path:  # the script imports its COCO helpers from run_object_detection.py
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location("run_instance_segmentation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_shapes_split(root: Path, split: str, num_images: int, seed: int) -> None:
    """`root/split/*.jpg` and `root/annotations/instances_split.json`: 1-3 non-overlapping shapes per image."""
    rng = np.random.default_rng(seed)
    backgrounds = [Image.open(path).convert("RGB") for path in BACKGROUNDS]
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        background = backgrounds[rng.integers(len(backgrounds))]
        crop_width = int(rng.uniform(0.3, 1.0) * background.width)
        crop_height = min(background.height, round(crop_width * height / width))
        left = rng.integers(background.width - crop_width + 1)
        top = rng.integers(background.height - crop_height + 1)
        image = background.resize(
            (width, height), Image.BILINEAR, box=(left, top, left + crop_width, top + crop_height)
        )
        draw = ImageDraw.Draw(image)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(rng.integers(1, 4)):
            for _attempt in range(20):
                side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
                x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
                if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y for px, py, ps, _ in placed):
                    break
            else:
                continue
            category = CATEGORIES[int(rng.integers(2))]["id"]
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            corners = [x, y, x + side - 1, y + side - 1]  # PIL includes both end pixels
            (draw.rectangle if category == 3 else draw.ellipse)(corners, fill=colour)
            placed.append((x, y, side, category))
        image_id = 1000 + index  # ids that are not positions
        file_name = f"{split}_{index:03d}.jpg"
        image.save(root / split / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for x, y, side, category in placed:
            if category == 3:
                segmentation = [[x, y, x + side, y, x + side, y + side, x, y + side]]
                area = side * side
            else:
                canvas = Image.new("L", (width, height))
                ImageDraw.Draw(canvas).ellipse([x, y, x + side - 1, y + side - 1], fill=1)
                mask = np.asarray(canvas).astype(bool)
                segmentation = encode_rle(mask)
                if len(annotations) % 2:  # every other circle as uncompressed RLE (run lengths, column-major)
                    flat = mask.ravel(order="F")
                    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
                    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
                    segmentation = {"size": [height, width], "counts": ([0] if flat[0] else []) + runs}
                area = int(mask.sum())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, side, side],
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": segmentation,
                }
            )
    instances = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes_instances")
    write_shapes_split(root, "train", 48, seed=0)
    write_shapes_split(root, "val", 16, seed=1)
    return root


def common_args(data_dir: Path, output_dir: Path) -> list[str]:
    return [
        "--data_dir", str(data_dir), "--train_split", "train", "--eval_split", "val",
        "--model", "pvt-v2-b0", "--config_overrides", json.dumps(TINY_MASK_RCNN),
        "--output_dir", str(output_dir), "--min_size", "128", "--max_size", "160", "--num_workers", "0",
        "--cpu", "--logging_steps", "1000",
    ]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tensors are too small to gain from two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# From scratch, a tiny model wants a larger learning rate than the papers' 2e-4 for a pretrained encoder; clipping
# keeps it stable (measured over 360 steps: 2e-3 gives mask AP 0.35, 3e-3 0.32; 288 steps at 2e-3 0.25).
FIT = ["--num_train_epochs", "30", "--per_device_train_batch_size", "4", "--learning_rate", "2e-3",
       "--max_grad_norm", "5", "--warmup_steps", "20", "--lr_step_epochs", "25",
       "--eval_every_epochs", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(shapes_dir, tmp_path_factory):
    """One fine-tuning run of a tiny Mask R-CNN from scratch (360 steps, about a minute on one thread), scored
    before and after with pycocotools."""
    output_dir = tmp_path_factory.mktemp("mask_rcnn")
    results = load_example().main([*common_args(shapes_dir, output_dir), *FIT, "--eval_before_training"])
    return output_dir, results


def test_fine_tuning_raises_mask_ap_well_above_an_untrained_model(fitted, shapes_dir):
    output_dir, results = fitted
    before, after = results["initial_metrics"], results
    print(
        f"COCO box AP before {before['AP']:.4f} (AP50 {before['AP50']:.4f}), after {after['AP']:.4f} "
        f"(AP50 {after['AP50']:.4f}); mask AP before {before['mask_AP']:.4f} (AP50 {before['mask_AP50']:.4f}), "
        f"after {after['mask_AP']:.4f} (AP50 {after['mask_AP50']:.4f})"
    )
    assert before["mask_AP"] <= 0.02 and before["AP"] <= 0.02
    assert after["mask_AP"] >= 0.25 and after["mask_AP50"] >= 0.4
    assert after["AP"] >= 0.15 and after["steps"] == 360
    saved = json.loads((output_dir / "eval_results.json").read_text())
    assert saved["mask_AP"] == pytest.approx(after["mask_AP"])
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and "library_name: transformers" in card
    metadata = card.split("---\n")[1]
    assert f"value: {round(after['mask_AP'], 4)}" in metadata and "name: mask AP@[.50:.95]" in metadata

    # The same mask AP recomputed here from the saved folder, straight through pycocotools and pycocotools' own RLE
    # encoder: the script's gathering, label -> category id mapping and RLE writing add nothing of their own.
    from pycocotools import mask as mask_api
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from transformers import AutoImageProcessor, AutoModelForInstanceSegmentation

    model = AutoModelForInstanceSegmentation.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    coco = COCO(str(shapes_dir / "annotations" / "instances_val.json"))
    image_ids = sorted(coco.getImgIds())
    results = []
    for start in range(0, len(image_ids), 2):  # the script's evaluation batches (default size 2, padded)
        batch_ids = image_ids[start : start + 2]
        images = [Image.open(shapes_dir / "val" / coco.imgs[i]["file_name"]).convert("RGB") for i in batch_ids]
        with torch.no_grad():
            outputs = model(**processor(images, return_tensors="pt"))
        sizes = [image.size[::-1] for image in images]
        for image_id, found in zip(batch_ids, processor.post_process_instances(outputs, 0.05, target_sizes=sizes)):
            for label, mask, score in zip(found["labels"].tolist(), found["masks"], found["scores"].tolist()):
                rle = mask_api.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                results.append({"image_id": image_id, "category_id": {0: 3, 1: 7}[label], "segmentation": rle,
                                "score": score})  # fmt: skip
    evaluator = COCOeval(coco, coco.loadRes(results), iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(after["mask_AP"], abs=1e-6)
    assert evaluator.stats[1] == pytest.approx(after["mask_AP50"], abs=1e-6)


def test_saved_folder_segments_through_the_pipeline(fitted, shapes_dir):
    """pipeline("image-segmentation", subtask="instance") gives what the processor's post-processing gives; a
    batch of two images of different sizes (with a fixed padded size) gives what one image at a time gives."""
    from transformers import AutoImageProcessor, AutoModelForInstanceSegmentation, pipeline

    from hf_pvt import HfPvtImageProcessor

    output_dir, _ = fitted
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "square", "1": "circle"}
    model = AutoModelForInstanceSegmentation.from_pretrained(output_dir).eval()
    assert type(model).__name__ == "HfPvtForInstanceSegmentation"
    weights = load_file(output_dir / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    processor = AutoImageProcessor.from_pretrained(output_dir)
    segmenter = pipeline("image-segmentation", model=str(output_dir), subtask="instance")
    paths = sorted((shapes_dir / "val").glob("*.jpg"))[:4]
    images = [Image.open(path).convert("RGB") for path in paths]
    found = 0
    for image in images:
        with torch.no_grad():
            outputs = model(**processor(image, return_tensors="pt"))
        sizes = [image.size[::-1]]
        expected = processor.post_process_instance_segmentation(outputs, threshold=0.5, target_sizes=sizes)[0]
        segments = segmenter(image, threshold=0.5, overlap_mask_area_threshold=0.8)
        assert [s["label"] for s in segments] == [config["id2label"][str(i["label_id"])] for i in
                                                  expected["segments_info"]]  # fmt: skip
        assert [s["score"] for s in segments] == [i["score"] for i in expected["segments_info"]]
        for segment, info in zip(segments, expected["segments_info"]):
            assert segment["mask"].size == image.size
            assert np.array_equal(np.asarray(segment["mask"]) > 0, (expected["segmentation"] == info["id"]).numpy())
        found += len(segments)
    assert found > 0, "the fitted model found nothing above 0.5 in four validation images"

    # Batched: the pipeline stacks each image's pixel_values as they come, so images of different sizes need one
    # padded size for all (here the largest image, 128x160, as the processor resizes it).
    fixed = HfPvtImageProcessor.for_instance_segmentation(
        size={"shortest_edge": 128, "longest_edge": 160}, pad_size={"height": 160, "width": 160}
    )
    assert len({image.size for image in images}) > 1
    one = pipeline("image-segmentation", model=model, image_processor=fixed, subtask="instance", batch_size=1)
    two = pipeline("image-segmentation", model=model, image_processor=fixed, subtask="instance", batch_size=2)
    single, batched = one(images, threshold=0.3), two(images, threshold=0.3)
    assert [[s["label"] for s in r] for r in single] == [[s["label"] for s in r] for r in batched]
    for a, b in zip(single, batched):
        assert [s["score"] for s in a] == pytest.approx([s["score"] for s in b], abs=1e-4)
        for sa, sb in zip(a, b):
            differ = np.count_nonzero(np.asarray(sa["mask"]) != np.asarray(sb["mask"]))
            assert differ <= 0.001 * sa["mask"].width * sa["mask"].height


def test_resume_from_a_step_checkpoint_reproduces_an_uninterrupted_run(shapes_dir, tmp_path):
    example = load_example()
    short = ["--max_train_steps", "4", "--per_device_train_batch_size", "2", "--eval_every_epochs", "0",
             "--warmup_steps", "2", "--learning_rate", "1e-3"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    example.main([*common_args(shapes_dir, straight), *short])
    example.main([*common_args(shapes_dir, resumed), *short[:1], "2", *short[2:], "--checkpointing_steps", "2"])
    assert (resumed / "step_2").is_dir()
    results = example.main([*common_args(shapes_dir, resumed), *short, "--resume_from_checkpoint", "last"])
    assert results["steps"] == 4 and results["steps_this_run"] == 2
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_score_every_image_once(fitted, shapes_dir, tmp_path):
    """Two CPU processes (torchrun) evaluate 15 images (8 + 7, the last batch evened out with a repeat) after one
    tiny step; their gathered AP equals one process's AP of the saved folder."""
    instances = json.loads((shapes_dir / "annotations" / "instances_val.json").read_text())
    kept = {image["id"] for image in instances["images"][:15]}
    instances["images"] = instances["images"][:15]
    instances["annotations"] = [a for a in instances["annotations"] if a["image_id"] in kept]
    (tmp_path / "val15.json").write_text(json.dumps(instances))
    model_dir, _ = fitted
    output_dir = tmp_path / "two_processes"
    args = [
        "--data_dir", str(shapes_dir), "--train_split", "train", "--eval_annotations", str(tmp_path / "val15.json"),
        "--eval_images", str(shapes_dir / "val"), "--min_size", "128", "--max_size", "160", "--num_workers", "0",
        "--cpu", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "1",
        "--learning_rate", "1e-6", "--eval_every_epochs", "0",
    ]  # fmt: skip
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [*launcher, str(free_port()), str(SCRIPT), *args, "--model", str(model_dir)]
    command += ["--output_dir", str(output_dir), "--max_train_steps", "1"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("final: box AP") == 1  # printed by the main process only
    gathered = json.loads((output_dir / "eval_results.json").read_text())
    assert gathered["steps"] == 1 and gathered["mask_AP"] >= 0.2

    single = load_example().main(
        [*args, "--model", str(output_dir), "--output_dir", str(tmp_path / "single"), "--num_train_epochs", "0"]
    )
    assert single["steps"] == 0
    for name in ("AP", "AP50", "mask_AP", "mask_AP50"):
        assert single[name] == pytest.approx(gathered[name], abs=1e-6), name


# ------------------------------------------------------------------------------------------------ evaluation path


def ground_truth_as_instances(coco, image_id: int) -> dict[str, torch.Tensor]:
    """An image's non-crowd ground truth in `post_process_instances` form: boxes (x1, y1, x2, y2), scores 1,
    contiguous labels, boolean masks at the image's size (decoded by the processor's own decoder)."""
    from hf_pvt.instance_masks_hf_pvt import decode_segmentation

    info = coco.imgs[image_id]
    category_ids = sorted(coco.getCatIds())
    annotations = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    masks = [decode_segmentation(a["segmentation"], info["height"], info["width"]) for a in annotations]
    return {
        "boxes": boxes,
        "scores": torch.ones(len(annotations)),
        "labels": torch.tensor([category_ids.index(a["category_id"]) for a in annotations], dtype=torch.long),
        "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, info["height"], info["width"]),
    }


@pytest.mark.parametrize("folder", ["fixture", "coco128"])
def test_ground_truth_scored_as_predictions_gives_ap_one(folder):
    """The script's evaluation path (instances -> COCO results with RLE masks -> COCOeval bbox and segm) scores the
    ground truth itself at AP 1.0: real photos, polygons, crowd regions (ignored by COCOeval), COCO's sparse ids."""
    root = COCO128_FIXTURE if folder == "fixture" else COCO128
    if not (root / "instances.json").is_file():
        pytest.skip(f"{root} is not here (the shared data folder is absent)")
    example = load_example()
    coco = example.quiet_coco(root / "instances.json")
    category_ids = sorted(coco.getCatIds())
    box_results, mask_results = [], []
    for image_id in sorted(coco.getImgIds()):
        boxes, masks = example.coco_results(image_id, ground_truth_as_instances(coco, image_id), category_ids)
        box_results += boxes
        mask_results += masks
    assert any(a["iscrowd"] for a in coco.dataset["annotations"])
    metrics = example.instance_metrics(coco, box_results, mask_results)
    for name in ("AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75"):
        assert metrics[name] == pytest.approx(1.0), (name, metrics[name])


def test_fine_tuning_runs_end_to_end_on_real_coco_photos(tmp_path):
    """coco128 (real photos, polygons, crowd regions, 80 sparse category ids): a few steps at a small image size,
    evaluated with COCO box and mask AP, saved and reloaded. A smoke test: it proves the path, not a score."""
    if not (COCO128 / "instances.json").is_file():
        pytest.skip(f"{COCO128} is not here (the shared data folder is absent)")
    instances = json.loads((COCO128 / "instances.json").read_text())
    images = sorted(instances["images"], key=lambda image: image["id"])
    train_ids, eval_ids = {i["id"] for i in images[:16]}, {i["id"] for i in images[16:24]}
    for name, ids in (("train", train_ids), ("eval", eval_ids)):
        subset = {**instances, "images": [i for i in images if i["id"] in ids],
                  "annotations": [a for a in instances["annotations"] if a["image_id"] in ids]}  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(subset))
    output_dir = tmp_path / "coco128_run"
    results = load_example().main([
        "--train_annotations", str(tmp_path / "train.json"), "--train_images", str(COCO128 / "images"),
        "--eval_annotations", str(tmp_path / "eval.json"), "--eval_images", str(COCO128 / "images"),
        "--model", "pvt-v2-b0", "--config_overrides", json.dumps(TINY_MASK_RCNN),
        "--output_dir", str(output_dir), "--min_size", "160", "--max_size", "224", "--num_workers", "0", "--cpu",
        "--max_train_steps", "6", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
        "--warmup_steps", "2", "--eval_every_epochs", "0", "--dataset_name", "coco128",
    ])  # fmt: skip
    print(f"coco128 smoke run: box AP {results['AP']:.4f}, mask AP {results['mask_AP']:.4f}")
    assert results["steps"] == 6
    assert all(0 <= results[name] <= 1 for name in ("AP", "AP50", "mask_AP", "mask_AP50"))
    assert all(np.isfinite(record["loss"]) for record in results["train_losses"])
    config = json.loads((output_dir / "config.json").read_text())
    assert len(config["id2label"]) == 80  # every category of the file, not only those in 16 images


def test_push_to_hub_offline_fails_clearly_and_keeps_the_folder(shapes_dir, tmp_path, monkeypatch):
    import huggingface_hub

    import hf_pvt

    monkeypatch.setattr(sys.modules[huggingface_hub.is_offline_mode.__module__], "HF_HUB_OFFLINE", True)
    output_dir = tmp_path / "not_pushed"
    with pytest.raises(hf_pvt.HubUploadError, match="HF_HUB_OFFLINE is set"):
        load_example().main(
            [*common_args(shapes_dir, output_dir), "--max_train_steps", "1", "--eval_every_epochs", "0",
             "--push_to_hub", "someone/pvt-shapes-mask-rcnn"]
        )  # fmt: skip
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "eval_results.json"):
        assert (output_dir / name).is_file(), name


def test_clear_errors(shapes_dir, tmp_path):
    example = load_example()
    args = common_args(shapes_dir, tmp_path / "out")
    with pytest.raises(ValueError, match="neither a folder, a Hub id nor a preset"):
        example.main([*args, "--model", "pvt-v9"])
    with pytest.raises(ValueError, match="applies only to presets"):
        example.main([*args, "--model", str(shapes_dir)])
    # Boxes without masks: the error names the annotation and points to the detection example.
    instances = json.loads((shapes_dir / "annotations" / "instances_train.json").read_text())
    del instances["annotations"][0]["segmentation"]
    (tmp_path / "train.json").write_text(json.dumps(instances))
    train_files = ["--train_annotations", str(tmp_path / "train.json"), "--train_images", str(shapes_dir / "train")]
    with pytest.raises(ValueError, match="has no 'segmentation'"):
        example.main([*args, *train_files, "--max_train_steps", "1", "--num_train_epochs", "1"])
    with pytest.raises(SystemExit):
        example.parse_args([*args, "--mask_threshold", "2"])
