"""Fine-tune a PVT Semantic FPN (`HfPvtForSemanticSegmentation`) on an ADE20K-layout folder and report mIoU.

Folder layout (ADEChallengeData2016, or any folder shaped like it):

    DATA_DIR/images/[training|validation]/NAME.jpg
    DATA_DIR/annotations/[training|validation]/NAME.png   (class ids, 0 = "other" in ADE20K)

Without the split sub-folders, images/ and annotations/ themselves are used for both training and evaluation.

    python examples/run_semantic_segmentation.py --data_dir ADEChallengeData2016 --model pvt-v2-b2 \
        --output_dir pvt-v2-b2-ade --reduce_labels --max_steps 40000 --batch_size 16 --crop_size 512

`--model` is a preset name (random weights, from scratch) or a local folder saved by `save_pretrained`, for example
an ImageNet classifier converted with `hf-pvt-convert`: its encoder loads into the segmentation model and the FPN
neck and head start fresh. The recipe defaults are the paper's: AdamW (lr 2e-4, weight decay 1e-4), poly schedule
with power 0.9, 512x512 crops, and the head's BatchNorm (`--semantic_head_norm group_norm` for a few images per
device). The output folder holds the model, its image processor, its code and a model card,
ready for `pipeline("image-segmentation", model=output_dir)`; `--push_to_hub` (with `--hub_model_id your-name/repo`)
uploads it in one commit through `hf_pvt.push_to_hub`.

Evaluation, during training and with `--eval_only`, is the authors' ADE20K test procedure: each image alone, whole
(`HfPvtImageProcessor.for_semantic_segmentation()`: keep-ratio into 2048x512, each side resized to a multiple of 32,
OpenCV's bilinear arithmetic), logits resized to the network input and then to the annotation's size, argmax; mIoU
over the whole set from one confusion matrix, pixels labelled 255 ignored. A released segmenter converted with
`hf-pvt-convert fpn_pvt_s_ade20k_40k.pth pvt-small-ade` is evaluated with

    python examples/run_semantic_segmentation.py --data_dir ADEChallengeData2016 --model pvt-small-ade \
        --eval_only --reduce_labels
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import hf_pvt  # registers hf_pvt with the Auto classes
from hf_pvt import PRESETS, HfPvtConfig, HfPvtForSemanticSegmentation, HfPvtImageProcessor
from hf_pvt.configuration_hf_pvt import normalize_preset_name

IGNORE_INDEX = 255


def find_pairs(data_dir: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) pairs sharing a file stem, from `images/split` or, without splits, `images/`."""
    images_dir, annotations_dir = data_dir / "images" / split, data_dir / "annotations" / split
    if not images_dir.is_dir():
        images_dir, annotations_dir = data_dir / "images", data_dir / "annotations"
    if not images_dir.is_dir() or not annotations_dir.is_dir():
        raise FileNotFoundError(
            f"{data_dir} has no images/ and annotations/ folders (ADE20K layout): expected "
            f"{data_dir}/images[/{split}]/*.jpg and {data_dir}/annotations[/{split}]/*.png."
        )
    pairs = []
    for image_path in sorted(images_dir.glob("*.jpg")):
        annotation_path = annotations_dir / f"{image_path.stem}.png"
        if not annotation_path.is_file():
            raise FileNotFoundError(f"{image_path} has no annotation {annotation_path}: every image needs one.")
        pairs.append((image_path, annotation_path))
    if not pairs:
        raise FileNotFoundError(f"No .jpg images in {images_dir}.")
    return pairs


def read_label_names(path: Path | None, num_labels: int, reduce_labels: bool) -> dict[int, str]:
    """id2label from ADE20K's objectInfo150.csv (Idx 1..150, Name), or generic names without a file."""
    if path is None:
        return {i: f"class_{i}" for i in range(num_labels)}
    with open(path, newline="") as handle:
        full_names = {int(row["Idx"]): row["Name"] for row in csv.DictReader(handle)}
    # Short names ("wall" for "wall") unless two classes share one ("screen"): id2label must be one-to-one.
    short = {idx: name.split(";")[0] for idx, name in full_names.items()}
    counts = Counter(short.values())
    rows = {idx: name if counts[name] == 1 else full_names[idx].replace(";", " ") for idx, name in short.items()}
    # objectInfo150 numbers classes from 1 (0 is "other"); reduced labels shift them down by one.
    offset = 1 if reduce_labels else 0
    return {i: rows.get(i + offset, f"class_{i}") for i in range(num_labels)}


class SegmentationFolder(Dataset):
    """Training samples: random rescale (0.5-2x of `crop_size` on the short side), random crop, random flip."""

    def __init__(self, pairs: list[tuple[Path, Path]], processor: HfPvtImageProcessor, crop_size: int):
        self.pairs, self.processor, self.crop_size = pairs, processor, crop_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_path, annotation_path = self.pairs[index]
        image = Image.open(image_path).convert("RGB")
        annotation = Image.open(annotation_path)
        scale = random.uniform(0.5, 2.0) * self.crop_size / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = np.asarray(image.resize(size, Image.BILINEAR))
        annotation = np.asarray(annotation.resize(size, Image.NEAREST))
        # Pad to the crop size (image black, labels ignored), then crop at random.
        pad_height, pad_width = max(self.crop_size - size[1], 0), max(self.crop_size - size[0], 0)
        image = np.pad(image, ((0, pad_height), (0, pad_width), (0, 0)))
        annotation = np.pad(annotation, ((0, pad_height), (0, pad_width)), constant_values=IGNORE_INDEX)
        top = random.randint(0, image.shape[0] - self.crop_size)
        left = random.randint(0, image.shape[1] - self.crop_size)
        window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        image, annotation = image[window], annotation[window]
        if random.random() < 0.5:
            image, annotation = image[:, ::-1], annotation[:, ::-1]
        # Geometry is done; the processor only rescales, normalises and (optionally) reduces labels.
        inputs = self.processor(
            np.ascontiguousarray(image),
            segmentation_maps=np.ascontiguousarray(annotation),
            do_resize=False,
            do_center_crop=False,
            return_tensors="pt",
        )
        return {"pixel_values": inputs["pixel_values"][0], "labels": inputs["labels"][0]}


def confusion_matrix(prediction: np.ndarray, label: np.ndarray, num_labels: int) -> np.ndarray:
    """num_labels x num_labels counts (rows: true class, columns: predicted), pixels labelled 255 left out."""
    valid = label != IGNORE_INDEX
    if valid.any() and label[valid].max() >= num_labels:
        raise ValueError(
            f"Annotation holds class id {label[valid].max()} but the model has {num_labels} labels; "
            "use --reduce_labels for ADE20K (ids 1..150) or set --num_labels."
        )
    pairs = num_labels * label[valid].astype(np.int64) + prediction[valid].astype(np.int64)
    return np.bincount(pairs, minlength=num_labels**2).reshape(num_labels, num_labels)


def segmentation_metrics(confusion: np.ndarray, id2label: dict[int, str]) -> dict[str, object]:
    """mIoU over the classes that occur (in labels or predictions) in the whole set, as mmseg reports it."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    iou = np.where(present, intersection / np.maximum(union, 1), np.nan)
    return {
        "mean_iou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "pixel_accuracy": float(intersection.sum() / max(confusion.sum(), 1)),
        "per_class_iou": {id2label[i]: round(float(iou[i]), 4) for i in np.flatnonzero(present)},
    }


@torch.no_grad()
def evaluate(
    model: HfPvtForSemanticSegmentation,
    processor: HfPvtImageProcessor,
    pairs: list[tuple[Path, Path]],
    reduce_labels: bool,
) -> dict[str, object]:
    """Whole-image inference, one image at a time, scored at each annotation's own resolution (the original size,
    to which post-processing resizes the logits)."""
    model.eval()
    num_labels = model.config.num_labels
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    device = next(model.parameters()).device
    for image_path, annotation_path in pairs:
        image = Image.open(image_path).convert("RGB")
        label = np.asarray(Image.open(annotation_path))
        if reduce_labels:
            label = processor.reduce_label(label)
        pixel_values = processor(image, return_tensors="pt")["pixel_values"].to(device)
        outputs = model(pixel_values)
        prediction = processor.post_process_semantic_segmentation(outputs, target_sizes=[label.shape])[0]
        confusion += confusion_matrix(prediction.cpu().numpy(), label, num_labels)
    model.train()
    return segmentation_metrics(confusion, model.config.id2label)


def build_model(
    name_or_path: str, id2label: dict[int, str], semantic_head_norm: str | None = None
) -> HfPvtForSemanticSegmentation:
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    if semantic_head_norm is not None:
        labels["semantic_head_norm"] = semantic_head_norm
    if Path(name_or_path).is_dir():
        # Classification checkpoints load their encoder; the head (other label count) starts fresh.
        return HfPvtForSemanticSegmentation.from_pretrained(name_or_path, ignore_mismatched_sizes=True, **labels)
    if normalize_preset_name(name_or_path) not in PRESETS:
        raise ValueError(
            f"--model {name_or_path!r} is neither a local folder nor a preset; presets: {', '.join(PRESETS)}."
        )
    return HfPvtForSemanticSegmentation(HfPvtConfig.from_preset(name_or_path, **labels))


def run_evaluation(args: argparse.Namespace) -> dict[str, object]:
    """`--eval_only`: a saved segmentation folder (converted or fine-tuned), as it is, on `--eval_split`."""
    if not args.model or not Path(args.model).is_dir():
        raise ValueError(f"--eval_only evaluates a saved model folder; --model {args.model!r} is not a folder.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = HfPvtForSemanticSegmentation.from_pretrained(args.model).to(device)
    processor = HfPvtImageProcessor.for_semantic_segmentation(do_reduce_labels=args.reduce_labels)
    metrics = evaluate(model, processor, find_pairs(args.data_dir, args.eval_split), args.reduce_labels)
    print(f"mIoU {metrics['mean_iou']:.4f} pixel accuracy {metrics['pixel_accuracy']:.4f}")
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, required=True, help="ADE20K-layout folder (images/, annotations/)")
    parser.add_argument("--model", default="pvt-v2-b2", help="preset name (from scratch) or local model folder")
    parser.add_argument("--output_dir", type=Path, help="required for training; with --eval_only, optional")
    parser.add_argument(
        "--eval_only", action="store_true", help="evaluate --model (a saved folder) on --eval_split, no training"
    )
    parser.add_argument(
        "--semantic_head_norm",
        choices=["batch_norm", "group_norm"],
        help="the head's normalisation for a new head (default: batch_norm, the paper's)",
    )
    parser.add_argument("--max_steps", type=int, default=40000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--poly_power", type=float, default=0.9)
    parser.add_argument("--crop_size", type=int, default=512)
    parser.add_argument("--reduce_labels", action="store_true", help="ADE20K: 0 -> ignored, k -> k - 1")
    parser.add_argument("--num_labels", type=int, default=150)
    parser.add_argument("--labels_csv", type=Path, default=None, help="objectInfo150.csv, for class names")
    parser.add_argument("--train_split", default="training")
    parser.add_argument("--eval_split", default="validation")
    parser.add_argument("--eval_steps", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    parser.add_argument("--logging_steps", type=int, default=50)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push_to_hub", action="store_true", help="upload the output folder (one commit)")
    parser.add_argument("--hub_model_id", help="the Hub repository to push to (default: the output folder's name)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    if args.eval_only:
        return run_evaluation(args)
    if args.output_dir is None:
        raise ValueError("--output_dir is required for training (it receives the fine-tuned model).")
    if args.crop_size % 32:
        raise ValueError(f"--crop_size {args.crop_size} must be a multiple of 32 (the encoder's total stride).")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    train_pairs = find_pairs(args.data_dir, args.train_split)
    eval_pairs = find_pairs(args.data_dir, args.eval_split)
    id2label = read_label_names(args.labels_csv, args.num_labels, args.reduce_labels)
    model = build_model(args.model, id2label, args.semantic_head_norm).to(device).train()
    # The authors' test transform, for evaluation and for the saved folder (what the pipeline will do); training
    # batches use only its rescaling and normalisation (their geometry is the dataset's random rescale and crop).
    processor = HfPvtImageProcessor.for_semantic_segmentation(do_reduce_labels=args.reduce_labels)
    loader = DataLoader(
        SegmentationFolder(train_pairs, processor, args.crop_size),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(train_pairs) >= args.batch_size,
        num_workers=args.num_workers,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 - min(step, args.max_steps) / args.max_steps) ** args.poly_power
    )

    losses, history, step = [], [], 0
    while step < args.max_steps:
        for batch in loader:
            outputs = model(batch["pixel_values"].to(device), labels=batch["labels"].to(device))
            if not math.isfinite(outputs.loss.item()):
                raise RuntimeError(f"Loss became {outputs.loss.item()} at step {step}; lower --lr.")
            outputs.loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(outputs.loss.item())
            if step % args.logging_steps == 0 or step == 1 or step == args.max_steps:
                print(f"step {step}/{args.max_steps} loss {losses[-1]:.4f} lr {scheduler.get_last_lr()[0]:.2e}")
            if args.eval_steps and step % args.eval_steps == 0 and step < args.max_steps:
                metrics = evaluate(model, processor, eval_pairs, args.reduce_labels)
                history.append({"step": step, "mean_iou": metrics["mean_iou"]})
                print(f"step {step} mIoU {metrics['mean_iou']:.4f}")
            if step >= args.max_steps:
                break

    metrics = evaluate(model, processor, eval_pairs, args.reduce_labels)
    print(f"final mIoU {metrics['mean_iou']:.4f} pixel accuracy {metrics['pixel_accuracy']:.4f}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    hf_pvt.save_for_hub(model, args.output_dir, image_processor=processor, repo_id=args.hub_model_id)
    results = {**metrics, "train_losses": losses, "eval_history": history, "steps": step}
    (args.output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
    if args.push_to_hub:
        repo_id = args.hub_model_id or args.output_dir.resolve().name
        message = "Fine-tuned with run_semantic_segmentation.py"
        print(f"Pushed: {hf_pvt.push_to_hub(args.output_dir, repo_id, commit_message=message)}")
    return results


if __name__ == "__main__":
    main()
