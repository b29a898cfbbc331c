#!/usr/bin/env python
"""Fine-tune a PVT RetinaNet (`HfPvtForObjectDetection`) on a COCO-format folder and report COCO box AP.

Folder layout (COCO 2017, or any folder shaped like it; `--train_annotations` / `--train_images` and the
`--eval_*` pair name the files directly instead):

    DATA_DIR/annotations/instances_{train2017,val2017}.json
    DATA_DIR/{train2017,val2017}/FILE_NAME        (file_name as the JSON's "images" entries give it)

The recipe defaults are the papers' (MMDetection v2 `retinanet_pvt_*_fpn_1x_coco`): AdamW (lr 1e-4, weight decay
1e-4), the 1x schedule (12 epochs, learning rate x0.1 after epochs 8 and 11, 500 steps of linear warm-up from
0.001x), images resized to fit 1333x800 keeping their aspect ratio, horizontal flips with probability 0.5, 2 images
per device (the papers trained on 8 GPUs, 16 images per step). Evaluation is COCO box AP computed by pycocotools
(`pip install hf_pvt[examples]`).

Accelerate runs it on any number of processes or GPUs, with mixed precision, gradient accumulation, checkpoints
(`--checkpointing_steps`) and resume (`--resume_from_checkpoint`):

    accelerate launch --num_processes 8 examples/run_object_detection.py --data_dir coco --model pvt-v2-b0-cls \\
        --output_dir retinanet-pvt-v2-b0-coco --checkpointing_steps epoch

Several CPU processes start with torchrun and the script's `--cpu` (`accelerate launch --cpu` runs one process):

    torchrun --nproc_per_node 2 examples/run_object_detection.py --cpu --data_dir coco ...

`--model` is a preset name (random weights, from scratch; `--config_overrides` changes its fields) or a folder or
Hub id saved by `save_pretrained`: an ImageNet classifier (converted with `hf-pvt-convert`) loads into the encoder
and the FPN and head start fresh; a detector loads whole (its class layer starts fresh if the label count differs).
Category ids, sparse in COCO (1..90), become contiguous label ids 0..C-1 in ascending id order, as MMDetection
numbers them, and go back to category ids for evaluation. The output folder holds the model, its image processor
and a model card with the measured AP, ready for `pipeline("object-detection", model=output_dir)`;
`--push_to_hub REPO_ID` uploads it in one commit.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import hf_pvt  # noqa: F401  (registers hf_pvt with the Auto classes)
from hf_pvt import PRESETS, HfPvtConfig, HfPvtForObjectDetection, HfPvtImageProcessor
from hf_pvt.configuration_hf_pvt import normalize_preset_name

try:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError as error:  # a clear message instead of a bare ModuleNotFoundError deep in the script
    raise ImportError(
        "run_object_detection.py computes COCO box AP with pycocotools: `pip install pycocotools` "
        "(or `pip install hf_pvt[examples]`)."
    ) from error

# COCOeval.stats, in the order `summarize()` prints them (-1: no ground truth in that area range).
COCO_METRICS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100")
COCO_METRICS += ("AR_small", "AR_medium", "AR_large")


# ----------------------------------------------------------------------------------------------------------------
# Data


def quiet_coco(annotation_file: str | Path) -> COCO:
    """pycocotools' COCO index of an instances JSON, without its progress prints."""
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"No COCO annotation file {annotation_file}.")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
    for key in ("images", "annotations", "categories"):
        if key not in coco.dataset:
            raise ValueError(f"{annotation_file} has no {key!r} list: it is not a COCO instances (detection) file.")
    return coco


def split_files(args: argparse.Namespace, which: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of the `train` or `eval` split: explicit paths, else the COCO layout."""
    annotations, images = getattr(args, f"{which}_annotations"), getattr(args, f"{which}_images")
    if annotations is None or images is None:
        if args.data_dir is None:
            raise ValueError(
                f"No {which} data: pass --data_dir (COCO layout) or both --{which}_annotations and --{which}_images."
            )
        split = getattr(args, f"{which}_split")
        annotations = annotations or args.data_dir / "annotations" / f"instances_{split}.json"
        images = images or args.data_dir / split
    if not Path(images).is_dir():
        raise FileNotFoundError(f"No image folder {images} for the {which} split.")
    return Path(annotations), Path(images)


def label_maps(coco: COCO) -> tuple[list[int], dict[int, str]]:
    """Category ids in ascending order (label id = position, as MMDetection numbers them) and id2label names."""
    category_ids = sorted(coco.getCatIds())
    if not category_ids:
        raise ValueError("The training annotations define no categories: the 'categories' list is empty.")
    names = [str(coco.cats[c].get("name", c)) for c in category_ids]
    # id2label must be one-to-one for label2id; repeated names get their category id.
    names = [f"{n} ({c})" if names.count(n) > 1 else n for n, c in zip(names, category_ids)]
    return category_ids, dict(enumerate(names))


class CocoDetectionFolder(Dataset):
    """Images of a COCO instances file with their annotations in the image processor's `annotations=` format.

    Category ids become contiguous label ids; boxes under one pixel (and, for training, images without any
    annotation) are left out as MMDetection's CocoDataset does. With `flip_prob`, an image and its boxes are
    flipped horizontally with a probability drawn from (seed, epoch, index): the same flips on any number of
    workers and after a resume.
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
        annotations = []
        for annotation in self.coco.imgToAnns[image_id]:
            x, y, w, h = annotation["bbox"]
            if w < 1 or h < 1:
                continue
            annotations.append(
                {
                    "bbox": [x, y, w, h],
                    "category_id": self.category_to_label[annotation["category_id"]],
                    "iscrowd": annotation.get("iscrowd", 0),
                    "area": annotation.get("area", w * h),
                }
            )
        flip = self.flip_prob > 0 and np.random.default_rng([self.seed, self.epoch, index]).random() < self.flip_prob
        if flip:
            # Flipping before the keep-ratio resize equals flipping after it (mmdet's order); x' = W - x - w.
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            for annotation in annotations:
                x, y, w, h = annotation["bbox"]
                annotation["bbox"] = [image.width - x - w, y, w, h]
        return {
            "image": image,
            "target": {"image_id": image_id, "annotations": annotations},
            "orig_size": (image.height, image.width),
        }


def make_collate_fn(processor: HfPvtImageProcessor, with_labels: bool):
    """Batches: the processor resizes, normalises and pads (`pixel_values`, `pixel_mask`), and turns the COCO boxes
    into the model's `labels`; evaluation batches carry image ids and original sizes instead."""

    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        images = [sample["image"] for sample in samples]
        if with_labels:
            inputs = processor(images, annotations=[s["target"] for s in samples], return_tensors="pt")
            labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"]} for t in inputs["labels"]]
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


def coco_box_metrics(coco_gt: COCO, detections: list[dict[str, Any]], print_summary: bool = False) -> dict[str, float]:
    """COCOeval (bbox) over every image of `coco_gt`: AP@[.5:.95], AP50, AP75, AP/AR by area, AR@1/10/100."""
    if not detections:  # loadRes cannot take an empty list; nothing detected scores 0 everywhere
        return dict.fromkeys(COCO_METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(coco_gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    if print_summary:
        print(summary.getvalue(), end="")
    return {name: float(value) for name, value in zip(COCO_METRICS, evaluator.stats)}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    processor: HfPvtImageProcessor,
    accelerator: Accelerator,
    coco_gt: COCO,
    category_ids: list[int],
    score_threshold: float,
) -> dict[str, float]:
    """Detections of every evaluation image, gathered from all processes, scored by COCOeval on the main one."""
    was_training = model.training
    model.eval()
    detections: dict[int, list[dict[str, Any]]] = {}
    for batch in tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_local_main_process):
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        results = processor.post_process_object_detection(
            outputs, threshold=score_threshold, target_sizes=batch["orig_sizes"]
        )
        per_image = []
        for image_id, result in zip(batch["image_ids"].tolist(), results):
            boxes = result["boxes"].float().cpu()
            boxes[:, 2:] -= boxes[:, :2]  # xyxy -> COCO's xywh
            per_image.append(
                (
                    image_id,
                    [
                        {"image_id": image_id, "category_id": category_ids[label], "bbox": box, "score": score}
                        for label, box, score in zip(
                            result["labels"].tolist(), boxes.tolist(), result["scores"].float().tolist()
                        )
                    ],
                )
            )
        # gather_for_metrics drops the samples repeated to even out the last batch; the dict drops any other repeat.
        for image_id, image_detections in accelerator.gather_for_metrics(per_image, use_gather_object=True):
            detections[image_id] = image_detections
    model.train(was_training)
    metrics = [None]
    if accelerator.is_main_process:
        flat = [d for image_detections in detections.values() for d in image_detections]
        metrics = [coco_box_metrics(coco_gt, flat, print_summary=True)]
    broadcast_object_list(metrics)
    return metrics[0]


# ----------------------------------------------------------------------------------------------------------------
# Model, schedule, card


def build_model(
    name_or_path: str, id2label: dict[int, str], config_overrides: str | None = None
) -> HfPvtForObjectDetection:
    """A RetinaNet for `id2label`: from a preset (random weights) or a folder / Hub id saved by `save_pretrained`."""
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
        return HfPvtForObjectDetection(HfPvtConfig.from_preset(name_or_path, **overrides, **labels))
    if overrides:
        raise ValueError(
            "--config_overrides changes the architecture, so it applies only to presets trained from scratch; "
            f"{name_or_path!r} is a checkpoint. Drop the flag or name a preset."
        )
    saved = HfPvtConfig.from_pretrained(name_or_path)
    # A classifier's head (`classifier.*`) is not loaded at all; a detector's class layer is kept only if it has
    # one output per label of this dataset.
    return HfPvtForObjectDetection.from_pretrained(
        name_or_path, ignore_mismatched_sizes=saved.num_labels != len(id2label), **labels
    )


def step_schedule(warmup_steps: int, warmup_ratio: float, milestones: list[int], gamma: float):
    """MMDetection's `lr_config = dict(policy="step", warmup="linear", ...)` as a LambdaLR factor of the step.

    The learning rate is multiplied by `gamma` at each milestone (optimizer steps) and, during the first
    `warmup_steps`, by a factor rising linearly from `warmup_ratio` to 1.
    """

    def factor(step: int) -> float:
        decay = gamma ** sum(step >= milestone for milestone in milestones)
        if step < warmup_steps:
            return decay * (1 - (1 - warmup_ratio) * (1 - step / warmup_steps))
        return decay

    return factor


def write_model_card(
    output_dir: Path,
    args: argparse.Namespace,
    config: HfPvtConfig,
    metrics: dict[str, float],
    num_train: int,
    num_eval: int,
    steps: int,
) -> None:
    """README.md with the YAML metadata the Hub reads (library, task, tags, dataset, the measured box AP)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset_name = args.dataset_name or (args.data_dir.name if args.data_dir else "custom COCO-format dataset")
    split = args.eval_split if args.eval_annotations is None else Path(args.eval_annotations).stem
    model_name = output_dir.resolve().name
    results = [
        EvalResult(
            task_type="object-detection",
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
            ("AP75", "mAP@0.75", "box AP@.75"),
        )
    ]
    data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="object-detection",
        tags=["object-detection", "retinanet", "hf_pvt", f"pvt_v{config.pvt_version}", "vision"],
        datasets=[args.hub_dataset_id] if args.hub_dataset_id else None,
        metrics=["mAP"],
        model_name=model_name,
        eval_results=results,
    )
    table = "\n".join(
        f"| {name} | {value:.4f} |" if value >= 0 else f"| {name} | n/a (no objects of that size) |"
        for name, value in metrics.items()
    )
    body = (
        f"# {model_name}\n\n"
        f"A RetinaNet with a {'PVTv2' if config.pvt_version == 2 else 'PVT'} encoder (hidden sizes "
        f"{config.hidden_sizes}, depths {config.depths}), fine-tuned from `{args.model}` on {dataset_name} "
        f"({num_train} training images, {steps} optimizer steps, {args.num_train_epochs}-epoch step schedule, "
        f"AdamW at learning rate {args.learning_rate}, {args.per_device_train_batch_size} images per device"
        f"{f', gradients clipped at norm {args.max_grad_norm}' if args.max_grad_norm > 0 else ''}) with hf_pvt's "
        "`examples/run_object_detection.py`. Images are resized "
        f"to fit {args.max_size}x{args.min_size} keeping their aspect ratio.\n\n"
        f"## Evaluation\n\nCOCO box metrics (pycocotools) on {num_eval} images of the `{split}` split:\n\n"
        f"| metric | value |\n|---|---|\n{table}\n\n"
        "## Use\n\n```python\nfrom transformers import pipeline\n"
        "import hf_pvt  # or pass trust_remote_code=True\n\n"
        f'detector = pipeline("object-detection", model="{args.push_to_hub or model_name}")\n'
        'detector("image.jpg", threshold=0.3)\n```\n'
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
        commit_message="RetinaNet fine-tuned with hf_pvt's run_object_detection.py",
    )


def newest_checkpoint(output_dir: Path) -> Path:
    """The step_*/epoch_* folder that `save_state` wrote last."""
    folders = (
        [f for f in output_dir.iterdir() if re.fullmatch(r"(step|epoch)_\d+", f.name)] if output_dir.is_dir() else []
    )
    if not folders:
        raise ValueError(f"--resume_from_checkpoint last: no step_*/epoch_* folder in {output_dir}.")
    return max(folders, key=lambda f: f.stat().st_mtime)


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
    train.add_argument("--learning_rate", type=float, default=1e-4)
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
    if not 0 <= args.flip_prob <= 1:
        parser.error(f"--flip_prob must lie in [0, 1], got {args.flip_prob}.")
    if args.warmup_steps < 0 or not 0 < args.warmup_ratio <= 1:
        parser.error("--warmup_steps must be >= 0 and --warmup_ratio in (0, 1].")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # The focal loss drives the scores of easy negatives to sigmoid(-90)-like values: subnormal floats, on which x86
    # CPUs run 10-100x slower (training and NMS alike). Flushing them to zero changes nothing measurable.
    torch.set_flush_denormal(True)
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
    train_set = CocoDetectionFolder(
        train_coco, train_images, category_ids, flip_prob=args.flip_prob, seed=args.seed, skip_empty=True
    )
    eval_set = CocoDetectionFolder(eval_coco, eval_images, category_ids)
    model = build_model(args.model, id2label, args.config_overrides)
    processor = HfPvtImageProcessor.for_object_detection(
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
        return evaluate(model, eval_loader, processor, accelerator, eval_coco, category_ids, args.score_threshold)

    total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    accelerator.print(
        f"{len(train_set)} training images, {len(eval_set)} evaluation images, {len(category_ids)} classes; "
        f"{max_steps} optimizer steps of {total_batch} images ({steps_per_epoch} per epoch) on "
        f"{accelerator.num_processes} process(es)"
    )
    initial_metrics = None
    if args.eval_before_training:
        initial_metrics = run_eval()
        accelerator.print(f"before training: box AP {initial_metrics['AP']:.4f} AP50 {initial_metrics['AP50']:.4f}")

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
        loader = train_loader
        if epoch == start_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_loader, skip_batches)
        for batch in loader:
            with accelerator.accumulate(model):
                outputs = model(**batch)
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
            loss_cls, loss_bbox = (outputs.loss_dict[k].item() for k in ("loss_cls", "loss_bbox"))
            progress.set_postfix(epoch=epoch, loss_cls=f"{loss_cls:.4f}", loss_bbox=f"{loss_bbox:.4f}")
            if completed_steps % args.logging_steps == 0 or completed_steps in (1, max_steps):
                # Logged and recorded: the mean over all processes' batches (the bar shows this process's).
                both = torch.stack([outputs.loss_dict["loss_cls"], outputs.loss_dict["loss_bbox"]]).detach().float()
                loss_cls, loss_bbox = accelerator.reduce(both, reduction="mean").tolist()
                losses.append({"step": completed_steps, "loss_cls": loss_cls, "loss_bbox": loss_bbox})
                lr = scheduler.get_last_lr()[0]
                log(f"step {completed_steps}: loss_cls {loss_cls:.4f} loss_bbox {loss_bbox:.4f} lr {lr:.2e}")
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
            log(f"epoch {epoch}: box AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f}")
        epoch += 1
    progress.close()
    if not history or history[-1]["step"] != completed_steps:
        metrics = run_eval()
    accelerator.print("final: " + " ".join(f"{name} {metrics[name]:.4f}" for name in ("AP", "AP50", "AP75", "AR100")))

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
        accelerator.unwrap_model(model).save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
        (args.output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
        config = accelerator.unwrap_model(model).config
        write_model_card(args.output_dir, args, config, metrics, len(train_set), len(eval_set), completed_steps)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # After the last barrier: a failed upload (offline, no credentials) stops only the main process, with the
    # saved folder intact and the command to upload it later.
    if args.push_to_hub and accelerator.is_main_process:
        print(f"pushed: {push_folder(args.output_dir, args.push_to_hub)}")
    return results


if __name__ == "__main__":
    main()
