#!/usr/bin/env python
"""Fine-tune a PVT Mask R-CNN (`HfPvtForInstanceSegmentation`) on a COCO-format folder; report COCO box and mask AP.

Folder layout (COCO 2017, or any folder shaped like it; `--train_annotations` / `--train_images` and the
`--eval_*` pair name the files directly instead):

    DATA_DIR/annotations/instances_{train2017,val2017}.json
    DATA_DIR/{train2017,val2017}/FILE_NAME        (file_name as the JSON's "images" entries give it)

Every object needs its `segmentation`: COCO polygons, or RLE (uncompressed or compressed). Crowd regions
(`iscrowd=1`) are not trained on, as in MMDetection (which sets them aside as `gt_bboxes_ignore` and whose Mask
R-CNN never reads them); COCOeval treats them as regions where detections count neither way.

The recipe defaults are the papers' (MMDetection v2 `mask_rcnn_pvt_v2_b2_fpn_1x_coco.py` and its siblings): AdamW
(lr 2e-4, weight decay 1e-4), the 1x schedule (12 epochs, learning rate x0.1 after epochs 8 and 11, 500 steps of
linear warm-up from 0.001x), images resized to fit 1333x800 keeping their aspect ratio and padded to a multiple of
32, horizontal flips with probability 0.5, 2 images per device (the papers trained on 8 GPUs, 16 images per step).
Evaluation is COCO box AP (`bbox`) and mask AP (`segm`, masks as compressed RLE) by pycocotools
(`pip install hf_pvt[examples]`).

Accelerate runs it on any number of processes or GPUs, with mixed precision, gradient accumulation, checkpoints
(`--checkpointing_steps`) and resume (`--resume_from_checkpoint`):

    accelerate launch --num_processes 8 examples/run_instance_segmentation.py --data_dir coco \\
        --model pvt-v2-b2-imagenet --output_dir mask-rcnn-pvt-v2-b2-coco --checkpointing_steps epoch

Several CPU processes start with torchrun and the script's `--cpu`:

    torchrun --nproc_per_node 2 examples/run_instance_segmentation.py --cpu --data_dir coco ...

`--model` is a preset name (random weights; `--config_overrides` changes its fields), or a folder or Hub id saved by
`save_pretrained`: an ImageNet classifier loads into the encoder (neck and heads start fresh); a Mask R-CNN loads
whole (its class layers start fresh if the label count differs). Category ids, sparse in COCO (1..90), become
contiguous label ids 0..C-1 in ascending id order, as MMDetection numbers them, and go back to category ids for
evaluation. The output folder (`hf_pvt.save_for_hub`: model, image processor, code, and a model card with the
measured AP) works with `pipeline("image-segmentation", model=output_dir, subtask="instance")`;
`--push_to_hub REPO_ID` uploads it in one commit.

This script shares the COCO reading, the schedule and the checkpoint lookup with `run_object_detection.py` (keep
both files together).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from PIL import Image
from run_object_detection import (
    COCO_METRICS,
    label_maps,
    newest_checkpoint,
    quiet_coco,
    split_files,
    step_schedule,
)
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import hf_pvt
from hf_pvt import PRESETS, HfPvtConfig, HfPvtForInstanceSegmentation, HfPvtImageProcessor
from hf_pvt.instance_masks_hf_pvt import encode_rle
from hf_pvt.variants_hf_pvt import normalize_preset_name

try:
    from pycocotools import mask as mask_api
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError as error:
    raise ImportError(
        "run_instance_segmentation.py reads COCO masks and computes COCO AP with pycocotools: `pip install "
        "pycocotools` (or `pip install hf_pvt[examples]`)."
    ) from error


# ----------------------------------------------------------------------------------------------------------------
# Data


def flip_segmentation(segmentation: Any, height: int, width: int) -> Any:
    """A COCO segmentation mirrored left-right in an image `width` pixels wide: polygon points x -> width - x (pixel
    i covers [i, i + 1)), RLE masks decoded, mirrored and written back as compressed RLE."""
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle.get("counts"), list):
            rle = mask_api.frPyObjects(rle, height, width)
        elif isinstance(rle.get("counts"), str):
            rle = {**rle, "counts": rle["counts"].encode()}
        return encode_rle(mask_api.decode(rle)[:, ::-1])
    flipped = []
    for polygon in segmentation:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        points[:, 0] = width - points[:, 0]
        flipped.append(points.reshape(-1).tolist())
    return flipped


class CocoInstanceFolder(Dataset):
    """Images of a COCO instances file with their annotations in the image processor's `annotations=` format
    (boxes, contiguous label ids, masks as the file gives them).

    Objects are kept as MMDetection's CocoDataset keeps them (positive area, box at least one pixel wide and
    high); for training, images without any annotation are left out. With `flip_prob`, an image and its
    annotations are mirrored with a probability drawn from (seed, epoch, index): the same flips on any number of
    workers and after a resume. (The mirror comes before the keep-ratio resize; mmdet's comes after it: the same
    up to the resize's rounding.)
    """

    def __init__(
        self,
        coco: COCO,
        image_dir: Path,
        category_ids: list[int],
        flip_prob: float = 0.0,
        seed: int = 0,
        skip_empty: bool = False,
    ):
        unknown = sorted(set(coco.getCatIds()) - set(category_ids))
        if unknown:
            raise ValueError(
                f"Category ids {unknown} of the evaluation set are not among the training set's {category_ids}: "
                "both annotation files must share one 'categories' list."
            )
        self.coco, self.image_dir, self.flip_prob, self.seed, self.epoch = coco, image_dir, flip_prob, seed, 0
        self.category_to_label = {category: label for label, category in enumerate(category_ids)}
        image_ids = sorted(coco.getImgIds())
        self.image_ids = [i for i in image_ids if coco.getAnnIds(imgIds=i)] if skip_empty else image_ids
        if not self.image_ids:
            raise ValueError(f"{image_dir}: the annotation file lists no usable images.")
        for annotation in coco.dataset["annotations"]:  # before training starts, not at the faulty batch
            if "segmentation" not in annotation:
                raise ValueError(
                    f"Annotation {annotation.get('id')} of image {annotation.get('image_id')} has no 'segmentation': "
                    "instance segmentation needs every object's mask (use run_object_detection.py for boxes only)."
                )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"Image {path} (id {image_id}) of the annotation file is missing.")
        image = Image.open(path).convert("RGB")
        flip = self.flip_prob > 0 and np.random.default_rng([self.seed, self.epoch, index]).random() < self.flip_prob
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        annotations = []
        for annotation in self.coco.imgToAnns[image_id]:
            x, y, w, h = annotation["bbox"]
            if annotation.get("area", w * h) <= 0 or w < 1 or h < 1:
                continue
            segmentation = annotation["segmentation"]
            if flip:
                x = image.width - x - w
                segmentation = flip_segmentation(segmentation, image.height, image.width)
            annotations.append(
                {
                    "bbox": [x, y, w, h],
                    "category_id": self.category_to_label[annotation["category_id"]],
                    "iscrowd": annotation.get("iscrowd", 0),
                    "segmentation": segmentation,
                }
            )
        return {
            "image": image,
            "target": {"image_id": image_id, "annotations": annotations},
            "orig_size": (image.height, image.width),
        }


def make_collate_fn(processor: HfPvtImageProcessor, with_labels: bool):
    """Batches: the processor resizes, normalises and pads (`pixel_values`, `pixel_mask`) and turns the COCO boxes
    and masks into the model's `labels`; evaluation batches carry image ids and original sizes instead."""

    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        images = [sample["image"] for sample in samples]
        if with_labels:
            inputs = processor(images, annotations=[s["target"] for s in samples], return_tensors="pt")
            labels = [{k: t[k] for k in ("class_labels", "boxes", "masks")} for t in inputs["labels"]]
            return {"pixel_values": inputs["pixel_values"], "pixel_mask": inputs["pixel_mask"], "labels": labels}
        inputs = processor(images, return_tensors="pt")
        return {
            "pixel_values": inputs["pixel_values"],
            "pixel_mask": inputs["pixel_mask"],
            "image_ids": torch.tensor([s["target"]["image_id"] for s in samples]),
            "orig_sizes": torch.tensor([s["orig_size"] for s in samples]),
        }

    return collate


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def coco_results(
    image_id: int, instances: dict[str, Any], category_ids: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One image's instances (`post_process_instances` format: `boxes` (k, 4) x1, y1, x2, y2 in original pixels,
    `scores`, `labels`, and `rles` or boolean `masks` at the original size) -> COCO result entries for `bbox` and
    for `segm` (the box's score for its mask too, as MMDetection writes them)."""
    boxes = torch.as_tensor(instances["boxes"]).float().cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]  # xyxy -> COCO's xywh
    scores = torch.as_tensor(instances["scores"]).float().tolist()
    labels = torch.as_tensor(instances["labels"]).tolist()
    rles = instances.get("rles")
    if rles is None:
        rles = [encode_rle(mask) for mask in instances["masks"]]
    box_results, mask_results = [], []
    for box, score, label, rle in zip(boxes.tolist(), scores, labels, rles):
        entry = {"image_id": image_id, "category_id": category_ids[label], "bbox": box, "score": score}
        box_results.append(entry)
        mask_results.append({**entry, "segmentation": rle})
    return box_results, mask_results


def coco_metrics(
    coco_gt: COCO, results: list[dict[str, Any]], iou_type: str, print_summary: bool = False
) -> dict[str, float]:
    """COCOeval (`bbox` or `segm`) over every image of `coco_gt`: AP@[.5:.95], AP50, AP75, AP/AR by area, AR."""
    if not results:  # loadRes cannot take an empty list; nothing detected scores 0 everywhere
        return dict.fromkeys(COCO_METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = sorted(coco_gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    if print_summary:
        print(f"COCO {iou_type}:\n{summary.getvalue()}", end="")
    return {name: float(value) for name, value in zip(COCO_METRICS, evaluator.stats)}


def instance_metrics(
    coco_gt: COCO,
    box_results: list[dict[str, Any]],
    mask_results: list[dict[str, Any]],
    print_summary: bool = False,
) -> dict[str, float]:
    """Box metrics under their COCO names (`AP`, `AP50`, ...) and mask metrics prefixed `mask_` (`mask_AP`, ...)."""
    boxes = coco_metrics(coco_gt, box_results, "bbox", print_summary)
    masks = coco_metrics(coco_gt, mask_results, "segm", print_summary)
    return {**boxes, **{f"mask_{name}": value for name, value in masks.items()}}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    processor: HfPvtImageProcessor,
    accelerator: Accelerator,
    coco_gt: COCO,
    category_ids: list[int],
    score_threshold: float,
    mask_threshold: float,
) -> dict[str, float]:
    """Instances of every evaluation image, encoded as RLE on their process, gathered, scored on the main one."""
    was_training = model.training
    model.eval()
    box_results: dict[int, list[dict[str, Any]]] = {}
    mask_results: dict[int, list[dict[str, Any]]] = {}
    for batch in tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_local_main_process):
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        found = processor.post_process_instances(
            outputs,
            threshold=score_threshold,
            mask_threshold=mask_threshold,
            target_sizes=batch["orig_sizes"],
            return_rle=True,
        )
        per_image = [
            (image_id, *coco_results(image_id, instances, category_ids))
            for image_id, instances in zip(batch["image_ids"].tolist(), found)
        ]
        # gather_for_metrics drops the samples repeated to even out the last batch; the dicts drop any other repeat.
        for image_id, boxes, masks in accelerator.gather_for_metrics(per_image, use_gather_object=True):
            box_results[image_id], mask_results[image_id] = boxes, masks
    model.train(was_training)
    metrics = [None]
    if accelerator.is_main_process:
        flat_boxes = [r for results in box_results.values() for r in results]
        flat_masks = [r for results in mask_results.values() for r in results]
        metrics = [instance_metrics(coco_gt, flat_boxes, flat_masks, print_summary=True)]
    broadcast_object_list(metrics)
    return metrics[0]


# ----------------------------------------------------------------------------------------------------------------
# Model, card


def sampling_generator(seed: int, accelerator: Accelerator, epoch: int, batch_index: int) -> torch.Generator:
    """The random generator of one batch's anchor and proposal sampling, seeded from (seed, process, epoch, batch):
    a resumed run draws the samples the interrupted one would have, on any number of processes, whatever else
    used torch's global generator in between (a data loader's start draws from it)."""
    state = np.random.SeedSequence([seed, accelerator.process_index, epoch, batch_index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def build_model(
    name_or_path: str, id2label: dict[int, str], config_overrides: str | None = None
) -> HfPvtForInstanceSegmentation:
    """A Mask R-CNN for `id2label`: from a preset (random weights) or a folder / Hub id saved by `save_pretrained`."""
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    overrides = json.loads(config_overrides) if config_overrides else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"--config_overrides must be a JSON object of config fields, got {config_overrides!r}.")
    is_local = Path(name_or_path).is_dir()
    if not is_local and "/" not in name_or_path:
        if normalize_preset_name(name_or_path) not in PRESETS:
            raise ValueError(
                f"--model {name_or_path!r} is neither a folder, a Hub id nor a preset; presets: {', '.join(PRESETS)}."
            )
        return HfPvtForInstanceSegmentation(HfPvtConfig.from_preset(name_or_path, **overrides, **labels))
    if overrides:
        raise ValueError(
            "--config_overrides changes the architecture, so it applies only to presets trained from scratch; "
            f"{name_or_path!r} is a checkpoint. Drop the flag or name a preset."
        )
    saved = HfPvtConfig.from_pretrained(name_or_path)
    # A classifier's head is not loaded at all; a Mask R-CNN's class layers are kept only with one output per label.
    return HfPvtForInstanceSegmentation.from_pretrained(
        name_or_path, ignore_mismatched_sizes=saved.num_labels != len(id2label), **labels
    )


def write_model_card(
    output_dir: Path,
    args: argparse.Namespace,
    config: HfPvtConfig,
    metrics: dict[str, float],
    num_train: int,
    num_eval: int,
    steps: int,
) -> None:
    """README.md with the YAML metadata the Hub reads (library, task, tags, dataset, the measured box and mask AP)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset_name = args.dataset_name or (args.data_dir.name if args.data_dir else "custom COCO-format dataset")
    split = args.eval_split if args.eval_annotations is None else Path(args.eval_annotations).stem
    model_name = output_dir.resolve().name
    results = [
        EvalResult(
            task_type="image-segmentation",
            dataset_type=args.hub_dataset_id or dataset_name,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(metrics[key], 4),
        )
        for key, metric_type, metric_name in (
            ("AP", "mAP", "box AP@[.50:.95]"),
            ("AP50", "mAP@0.5", "box AP@.50"),
            ("mask_AP", "mAP", "mask AP@[.50:.95]"),
            ("mask_AP50", "mAP@0.5", "mask AP@.50"),
        )
    ]
    data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="image-segmentation",
        tags=["image-segmentation", "instance-segmentation", "mask-rcnn", "hf_pvt", f"pvt_v{config.pvt_version}"],
        datasets=[args.hub_dataset_id] if args.hub_dataset_id else None,
        metrics=["mAP"],
        model_name=model_name,
        eval_results=results,
    )

    def row(name: str) -> str:
        box, mask = metrics[name], metrics[f"mask_{name}"]
        cells = [f"{v:.4f}" if v >= 0 else "n/a (no objects of that size)" for v in (box, mask)]
        return f"| {name} | {cells[0]} | {cells[1]} |"

    table = "\n".join(row(name) for name in COCO_METRICS)
    body = (
        f"# {model_name}\n\n"
        f"A Mask R-CNN with a {'PVTv2' if config.pvt_version == 2 else 'PVT'} encoder (hidden sizes "
        f"{config.hidden_sizes}, depths {config.depths}), fine-tuned from `{args.model}` on {dataset_name} "
        f"({num_train} training images, {steps} optimizer steps, {args.num_train_epochs}-epoch step schedule, "
        f"AdamW at learning rate {args.learning_rate}, {args.per_device_train_batch_size} images per device"
        f"{f', gradients clipped at norm {args.max_grad_norm}' if args.max_grad_norm > 0 else ''}) with hf_pvt's "
        "`examples/run_instance_segmentation.py`. Images are resized "
        f"to fit {args.max_size}x{args.min_size} keeping their aspect ratio.\n\n"
        f"## Evaluation\n\nCOCO metrics (pycocotools, `bbox` and `segm`) on {num_eval} images of the `{split}` "
        f"split, detections above score {args.score_threshold}:\n\n"
        f"| metric | box | mask |\n|---|---|---|\n{table}\n\n"
        "## Use\n\n```python\nfrom transformers import pipeline\n"
        "import hf_pvt  # or pass trust_remote_code=True\n\n"
        f'segmenter = pipeline("image-segmentation", model="{args.push_to_hub or model_name}", subtask="instance")\n'
        'segmenter("image.jpg", threshold=0.5)  # [{"score", "label", "mask": PIL image}, ...]\n```\n\n'
        "Every instance's own mask (overlaps kept), box, score and label, and COCO RLE for evaluation:\n\n"
        "```python\nimport torch\nfrom PIL import Image\n"
        "from transformers import AutoImageProcessor, AutoModelForInstanceSegmentation\n\n"
        f'model = AutoModelForInstanceSegmentation.from_pretrained("{args.push_to_hub or model_name}").eval()\n'
        f'processor = AutoImageProcessor.from_pretrained("{args.push_to_hub or model_name}")\n'
        'image = Image.open("image.jpg").convert("RGB")\n'
        "with torch.no_grad():\n"
        '    outputs = model(**processor(image, return_tensors="pt"))\n'
        "instances = processor.post_process_instances(outputs, threshold=0.05, target_sizes=[image.size[::-1]], "
        "return_rle=True)[0]\n"
        '# instances["boxes"], ["scores"], ["labels"], ["masks"] (k, H, W) bool, ["rles"] COCO RLE\n```\n'
    )
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body=body)
    card.save(output_dir / "README.md")


def push_folder(output_dir: Path, repo_id: str) -> str:
    """Upload the saved folder (not its training checkpoints) to `repo_id` in one commit; returns the commit URL.
    Offline or on a failed upload, `hf_pvt.HubUploadError` says so and the folder stays as it is."""
    return hf_pvt.push_to_hub(
        output_dir,
        repo_id,
        ignore_patterns=["step_*", "epoch_*"],
        commit_message="Mask R-CNN fine-tuned with hf_pvt's run_instance_segmentation.py",
    )


# ----------------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--data_dir", type=Path, help="COCO-layout folder (annotations/instances_SPLIT.json, SPLIT/)")
    data.add_argument("--train_split", default="train2017")
    data.add_argument("--eval_split", default="val2017")
    data.add_argument("--train_annotations", type=Path, help="instances JSON of the training set (overrides layout)")
    data.add_argument("--train_images", type=Path, help="folder of the training images (overrides the layout)")
    data.add_argument("--eval_annotations", type=Path)
    data.add_argument("--eval_images", type=Path)
    data.add_argument("--min_size", type=int, default=800, help="images resized to fit max_size x min_size")
    data.add_argument("--max_size", type=int, default=1333)
    data.add_argument("--flip_prob", type=float, default=0.5, help="probability of a horizontal flip in training")
    data.add_argument("--num_workers", type=int, default=2)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="pvt-v2-b0", help="preset (from scratch), folder or Hub id")
    model.add_argument("--config_overrides", help="presets only: JSON config fields, e.g. '{\"depths\": [1,1,1,1]}'")
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", type=Path, required=True)
    train.add_argument("--per_device_train_batch_size", type=int, default=2)
    train.add_argument("--per_device_eval_batch_size", type=int, default=2)
    train.add_argument("--learning_rate", type=float, default=2e-4)
    train.add_argument("--weight_decay", type=float, default=1e-4)
    train.add_argument("--num_train_epochs", type=int, default=12)
    train.add_argument("--max_train_steps", type=int, help="stop after this many optimizer steps (the schedule stays)")
    train.add_argument("--lr_step_epochs", type=int, nargs="*", default=[8, 11], help="epochs after which lr x gamma")
    train.add_argument("--lr_gamma", type=float, default=0.1)
    train.add_argument("--warmup_steps", type=int, default=500)
    train.add_argument("--warmup_ratio", type=float, default=0.001, help="learning rate factor at step 0")
    train.add_argument("--max_grad_norm", type=float, default=0.0, help="gradient clipping (0: none, as the papers)")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], help="default: the launcher's setting")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cpu", action="store_true", help="run on CPU, also with several processes (gloo)")
    train.add_argument("--logging_steps", type=int, default=50)
    train.add_argument("--checkpointing_steps", help="save the training state every N optimizer steps, or 'epoch'")
    train.add_argument("--resume_from_checkpoint", type=Path, help="a step_*/epoch_* folder, or 'last'")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval_every_epochs", type=int, default=1, help="0: evaluate only at the end")
    evaluation.add_argument("--eval_before_training", action="store_true", help="also score the starting model")
    evaluation.add_argument("--score_threshold", type=float, default=0.05, help="detections kept for COCOeval")
    evaluation.add_argument("--mask_threshold", type=float, default=0.5, help="mask probability that is inside")
    hub = parser.add_argument_group("model card and Hub")
    hub.add_argument("--dataset_name", help="the dataset's name on the model card (default: the data folder's)")
    hub.add_argument("--hub_dataset_id", help="the dataset's Hub id, for the card's `datasets` metadata")
    hub.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the output folder to this Hub repository")
    args = parser.parse_args(argv)
    if args.checkpointing_steps not in (None, "epoch") and not args.checkpointing_steps.isdigit():
        parser.error(f"--checkpointing_steps must be a number of steps or 'epoch', got {args.checkpointing_steps!r}.")
    for name in ("min_size", "max_size", "per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    for name in ("flip_prob", "score_threshold", "mask_threshold"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} must lie in [0, 1], got {getattr(args, name)}.")
    if args.warmup_steps < 0 or not 0 < args.warmup_ratio <= 1:
        parser.error("--warmup_steps must be >= 0 and --warmup_ratio in (0, 1].")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    accelerator = Accelerator(
        cpu=args.cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # Shuffle order = f(seed, epoch), so a resumed run sees the batches the interrupted one would have.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)  # the same initial weights on every process

    train_annotations, train_images = split_files(args, "train")
    eval_annotations, eval_images = split_files(args, "eval")
    train_coco, eval_coco = quiet_coco(train_annotations), quiet_coco(eval_annotations)
    category_ids, id2label = label_maps(train_coco)
    train_set = CocoInstanceFolder(
        train_coco, train_images, category_ids, flip_prob=args.flip_prob, seed=args.seed, skip_empty=True
    )
    eval_set = CocoInstanceFolder(eval_coco, eval_images, category_ids)
    model = build_model(args.model, id2label, args.config_overrides)
    processor = HfPvtImageProcessor.for_instance_segmentation(
        size={"shortest_edge": args.min_size, "longest_edge": args.max_size}
    )
    train_loader = DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=make_collate_fn(processor, with_labels=True),
        num_workers=args.num_workers,
    )
    eval_loader = DataLoader(
        eval_set,
        batch_size=args.per_device_eval_batch_size,
        collate_fn=make_collate_fn(processor, with_labels=False),
        num_workers=args.num_workers,
    )
    # MMDetection's AdamW for PVT decays every parameter (no paramwise_cfg).
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    # Counted after prepare(), which shards the loader across processes.
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    total_steps = args.num_train_epochs * steps_per_epoch
    max_steps = min(args.max_train_steps, total_steps) if args.max_train_steps is not None else total_steps
    milestones = [epoch * steps_per_epoch for epoch in args.lr_step_epochs]
    # Not prepared: it is stepped once per optimizer step here, on every process alike, and saved with the state.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, step_schedule(args.warmup_steps, args.warmup_ratio, milestones, args.lr_gamma)
    )
    accelerator.register_for_checkpointing(scheduler)

    completed_steps, start_epoch, skip_batches = 0, 0, 0
    if args.resume_from_checkpoint is not None:
        checkpoint = args.resume_from_checkpoint
        if str(checkpoint) in ("last", "latest"):
            checkpoint = newest_checkpoint(args.output_dir)
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        kind, number = checkpoint.name.split("_")
        if kind == "epoch":
            start_epoch = int(number) + 1
            completed_steps = start_epoch * steps_per_epoch
        else:
            completed_steps = int(number)
            start_epoch, skip_batches = divmod(completed_steps, steps_per_epoch)
            skip_batches *= args.gradient_accumulation_steps

    def run_eval() -> dict[str, float]:
        return evaluate(
            model,
            eval_loader,
            processor,
            accelerator,
            eval_coco,
            category_ids,
            args.score_threshold,
            args.mask_threshold,
        )

    def summary(metrics: dict[str, float]) -> str:
        return f"box AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f}, mask AP {metrics['mask_AP']:.4f} " + (
            f"AP50 {metrics['mask_AP50']:.4f}"
        )

    total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    accelerator.print(
        f"{len(train_set)} training images, {len(eval_set)} evaluation images, {len(category_ids)} classes; "
        f"{max_steps} optimizer steps of {total_batch} images ({steps_per_epoch} per epoch) on "
        f"{accelerator.num_processes} process(es)"
    )
    initial_metrics = None
    if args.eval_before_training:
        initial_metrics = run_eval()
        accelerator.print(f"before training: {summary(initial_metrics)}")

    history, losses, metrics, steps_this_run = [], [], None, 0
    progress = tqdm(total=max_steps, initial=completed_steps, disable=not accelerator.is_local_main_process)

    def log(line: str) -> None:  # once, above the progress bar (tqdm.write prints on every process)
        if accelerator.is_main_process:
            progress.write(line)

    epoch = start_epoch
    while completed_steps < max_steps:
        model.train()
        train_loader.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loader, first = train_loader, 0
        if epoch == start_epoch and skip_batches:
            loader, first = accelerator.skip_first_batches(train_loader, skip_batches), skip_batches
        for batch_index, batch in enumerate(loader, start=first):
            with accelerator.accumulate(model):
                outputs = model(**batch, generator=sampling_generator(args.seed, accelerator, epoch, batch_index))
                if not math.isfinite(outputs.loss.item()):
                    raise RuntimeError(f"Loss became {outputs.loss.item()} at step {completed_steps}; lower the lr.")
                accelerator.backward(outputs.loss)
                if args.max_grad_norm > 0 and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            completed_steps += 1
            steps_this_run += 1
            progress.update(1)
            names = sorted(outputs.loss_dict)
            progress.set_postfix(epoch=epoch, loss=f"{outputs.loss.item():.4f}")
            if completed_steps % args.logging_steps == 0 or completed_steps in (1, max_steps):
                # Logged and recorded: the mean over all processes' batches (the bar shows this process's).
                parts = torch.stack([outputs.loss.detach()] + [outputs.loss_dict[k].detach() for k in names]).float()
                values = accelerator.reduce(parts, reduction="mean").tolist()
                record = {"step": completed_steps, "loss": values[0], **dict(zip(names, values[1:]))}
                losses.append(record)
                parts_text = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step")
                log(f"step {completed_steps}: {parts_text} lr {scheduler.get_last_lr()[0]:.2e}")
            if (
                args.checkpointing_steps not in (None, "epoch")
                and completed_steps % int(args.checkpointing_steps) == 0
            ):
                accelerator.save_state(str(args.output_dir / f"step_{completed_steps}"))
            if completed_steps >= max_steps:
                break
        epoch_done = completed_steps % steps_per_epoch == 0
        if args.checkpointing_steps == "epoch" and epoch_done:
            accelerator.save_state(str(args.output_dir / f"epoch_{epoch}"))
        if args.eval_every_epochs and epoch_done and (epoch + 1) % args.eval_every_epochs == 0:
            metrics = run_eval()
            history.append({"epoch": epoch, "step": completed_steps, **metrics})
            log(f"epoch {epoch}: {summary(metrics)}")
        epoch += 1
    progress.close()
    if not history or history[-1]["step"] != completed_steps:
        metrics = run_eval()
    accelerator.print(f"final: {summary(metrics)}")

    results = {
        **metrics,
        "initial_metrics": initial_metrics,
        "eval_history": history,
        "train_losses": losses,
        "steps": completed_steps,
        "steps_this_run": steps_this_run,
        "epochs": epoch,
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        unwrapped = accelerator.unwrap_model(model)
        hf_pvt.save_for_hub(unwrapped, args.output_dir, image_processor=processor)
        (args.output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
        write_model_card(
            args.output_dir, args, unwrapped.config, metrics, len(train_set), len(eval_set), completed_steps
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # After the last barrier: a failed upload (offline, no credentials) stops only the main process, with the
    # saved folder intact and the command to upload it later.
    if args.push_to_hub and accelerator.is_main_process:
        print(f"pushed: {push_folder(args.output_dir, args.push_to_hub)}")
    return results


if __name__ == "__main__":
    main()
