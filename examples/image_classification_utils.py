"""What the image-classification examples share: data loading, transforms, model set-up and the metric.

`run_image_classification.py` (Trainer), `run_image_classification_accelerate.py` (Accelerate) and
`main_job.py` import this file from their own folder; copy it along with whichever script you copy.
There is no torchvision here: augmentation is PIL + numpy.
"""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any

import numpy as np
import PIL.Image
import torch
from datasets import ClassLabel, DatasetDict, load_dataset
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

import hf_pvt  # noqa: F401  (registers hf_pvt with the Auto classes)
from hf_pvt import PRESETS, HfPvtConfig, HfPvtForImageClassification, HfPvtImageProcessor


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    label_column: str = "label",
    train_val_split: float = 0.15,
    seed: int = 0,
    cache_dir: str | None = None,
) -> DatasetDict:
    """A `train` and a `validation` split, from a Hub dataset or local image folders (one sub-folder per class).

    Without a validation split, `train_val_split` of the training set is held out (stratified by label).
    """
    if dataset_name is not None:
        dataset = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    elif train_dir is not None:
        data_files = {"train": os.path.join(train_dir, "**")}
        if validation_dir is not None:
            data_files["validation"] = os.path.join(validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    else:
        raise ValueError("No data: pass --dataset_name (a Hub dataset) or --train_dir (a local image folder).")
    if "validation" not in dataset:
        if "test" in dataset:
            dataset["validation"] = dataset.pop("test")
        else:
            stratify = label_column if isinstance(dataset["train"].features.get(label_column), ClassLabel) else None
            split = dataset["train"].train_test_split(train_val_split, seed=seed, stratify_by_column=stratify)
            dataset = DatasetDict(train=split["train"], validation=split["test"])
    if label_column not in dataset["train"].features:
        raise ValueError(
            f"The dataset has no {label_column!r} column (columns: {list(dataset['train'].features)}); "
            "name the label column with --label_column_name."
        )
    return dataset


def label_names(dataset: DatasetDict, label_column: str = "label") -> list[str]:
    """Class names from the dataset's `ClassLabel` feature (else the sorted distinct label values)."""
    feature = dataset["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(v) for v in sorted(set(dataset["train"][label_column]))]


def is_preset(name: str) -> bool:
    """A bare preset name (`pvt-v2-b0`) trains from scratch; `org/pvt-v2-b0` is a Hub id and a folder is a folder."""
    return "/" not in name and not os.path.isdir(name) and name.lower().replace("_", "-") in PRESETS


def build_model_and_processor(
    model_name_or_path: str,
    labels: list[str],
    config_overrides: str | None = None,
    image_size: int | None = None,
    ignore_mismatched_sizes: bool = False,
    cache_dir: str | None = None,
) -> tuple[PreTrainedModel, HfPvtImageProcessor]:
    """A classification model with one output per label, and its image processor.

    `model_name_or_path` is a preset (randomly initialised), a local folder or a Hub id. `config_overrides`
    is a JSON object of config fields (e.g. '{"depths": [1, 1, 1, 1]}'), applied to presets only.
    `image_size` resizes straight to image_size x image_size with no crop, for small images.
    """
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    label_kwargs = {"num_labels": len(labels), "id2label": id2label, "label2id": label2id}
    if is_preset(model_name_or_path):
        overrides = json.loads(config_overrides) if config_overrides else {}
        config = HfPvtConfig.from_preset(model_name_or_path, **overrides, **label_kwargs)
        model = HfPvtForImageClassification(config)
        processor = HfPvtImageProcessor()
    else:
        if config_overrides:
            raise ValueError(
                "--config_overrides changes the architecture, so it applies only to presets trained from scratch; "
                f"{model_name_or_path!r} is a checkpoint. Drop the flag or name a preset."
            )
        config = AutoConfig.from_pretrained(model_name_or_path, cache_dir=cache_dir, **label_kwargs)
        model = AutoModelForImageClassification.from_pretrained(
            model_name_or_path, config=config, cache_dir=cache_dir, ignore_mismatched_sizes=ignore_mismatched_sizes
        )
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, cache_dir=cache_dir)
    if image_size is not None:
        processor.size = {"height": image_size, "width": image_size}
        processor.do_center_crop = False
    return model, processor


def output_size(processor: HfPvtImageProcessor) -> tuple[int, int]:
    """(height, width) of the processor's output, which the training crops must match."""
    if processor.do_center_crop:
        return processor.crop_size["height"], processor.crop_size["width"]
    if "shortest_edge" in processor.size:
        side = processor.size["shortest_edge"]
        return side, side
    return processor.size["height"], processor.size["width"]


class RandomResizedCropAndFlip:
    """Inception-style augmentation on PIL images: a random crop of `scale` x the area and aspect ratio in
    `ratio`, resized to `size`, then a horizontal flip with probability `flip_prob`."""

    def __init__(
        self,
        size: tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        resample: int = PIL.Image.BICUBIC,
    ):
        self.size, self.scale, self.ratio, self.flip_prob, self.resample = size, scale, ratio, flip_prob, resample

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*log_ratio))
            w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = random.randint(0, width - w), random.randint(0, height - h)
                return left, top, left + w, top + h
        return 0, 0, width, height  # no valid box in 10 tries (extreme aspect ratio): the whole image

    def __call__(self, image: PIL.Image.Image) -> PIL.Image.Image:
        image = image.convert("RGB")
        height, width = self.size
        image = image.resize((width, height), self.resample, box=self.crop_box(*image.size))
        if random.random() < self.flip_prob:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        return image


def make_transforms(
    processor: HfPvtImageProcessor,
    image_column: str = "image",
    label_column: str = "label",
    augment: RandomResizedCropAndFlip | None = None,
):
    """`datasets.set_transform` functions (train, eval) that turn a batch of rows into pixel_values + labels.

    Training images go through `augment` (by default a random resized crop to the processor's output size and a
    flip), then only rescale + normalize; evaluation images go through the processor unchanged.
    """
    augment = augment or RandomResizedCropAndFlip(output_size(processor))

    def train_transform(batch: dict[str, list]) -> dict[str, Any]:
        images = [augment(image) for image in batch[image_column]]
        pixel_values = processor(images, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
        return {"pixel_values": list(pixel_values), "labels": batch[label_column]}

    def eval_transform(batch: dict[str, list]) -> dict[str, Any]:
        images = [image.convert("RGB") for image in batch[image_column]]
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": list(pixel_values), "labels": batch[label_column]}

    return train_transform, eval_transform


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())


def compute_metrics(eval_prediction) -> dict[str, float]:
    """Trainer's metric hook: top-1 accuracy, computed here rather than with `evaluate` (which downloads)."""
    logits = (
        eval_prediction.predictions[0]
        if isinstance(eval_prediction.predictions, tuple)
        else eval_prediction.predictions
    )
    return {"accuracy": accuracy(logits, eval_prediction.label_ids)}
