#!/usr/bin/env python
"""Fine-tune an hf_pvt model for image classification with the Trainer.

The model is a preset trained from scratch (`--model_name_or_path pvt-v2-b0`), a local folder or a Hub id;
the data a Hub dataset (`--dataset_name`) or local image folders with one sub-folder per class
(`--train_dir`, `--validation_dir`). Every TrainingArguments flag works (`--bf16`, `--push_to_hub`,
`--resume_from_checkpoint`, ...). Example:

    python examples/run_image_classification.py --model_name_or_path pvt-v2-b0 --train_dir data/train \\
        --output_dir outputs/pvt-v2-b0-mydata --do_train --do_eval --num_train_epochs 5 --learning_rate 1e-3 \\
        --per_device_train_batch_size 64 --eval_strategy epoch --save_strategy epoch
"""

import logging
import os
import sys
from dataclasses import dataclass, field

from image_classification_utils import (
    RandomResizedCropAndFlip,
    build_model_and_processor,
    collate_fn,
    compute_metrics,
    is_preset,
    label_names,
    load_image_dataset,
    make_transforms,
    output_size,
)
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A dataset on the Hub (or a local dataset script)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "A local image folder: one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "The validation image folder."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Held-out fraction when there is no validation split."}
    )
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the labels."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set (debugging)."})
    min_crop_scale: float = field(default=0.08, metadata={"help": "Smallest area fraction of the random crops."})
    horizontal_flip: bool = field(default=True, metadata={"help": "Flip training images at random (not for text)."})


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="pvt-v2-b0", metadata={"help": "A preset (trained from scratch), a local folder or a Hub id."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Presets only: JSON config fields, e.g. '{\"depths\": [1, 1, 1, 1]}'."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Resize to image_size x image_size without cropping (small images)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose classifier has a different number of labels."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    # The image column must reach the transforms, which run when a batch is read.
    training_args.remove_unused_columns = False
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    dataset = load_image_dataset(
        data_args.dataset_name,
        data_args.dataset_config_name,
        data_args.train_dir,
        data_args.validation_dir,
        label_column=data_args.label_column_name,
        train_val_split=data_args.train_val_split,
        seed=training_args.seed,
        cache_dir=model_args.cache_dir,
    )
    labels = label_names(dataset, data_args.label_column_name)
    model, processor = build_model_and_processor(
        model_args.model_name_or_path,
        labels,
        config_overrides=model_args.config_overrides,
        image_size=model_args.image_size,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        cache_dir=model_args.cache_dir,
    )
    augment = RandomResizedCropAndFlip(
        output_size(processor), scale=(data_args.min_crop_scale, 1.0), flip_prob=0.5 * data_args.horizontal_flip
    )
    train_transform, eval_transform = make_transforms(
        processor, data_args.image_column_name, data_args.label_column_name, augment
    )
    train_dataset, eval_dataset = dataset["train"], dataset["validation"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.shuffle(seed=training_args.seed).select(range(data_args.max_train_samples))
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.shuffle(seed=training_args.seed).select(range(data_args.max_eval_samples))
    train_dataset.set_transform(train_transform)
    eval_dataset.set_transform(eval_transform)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        processing_class=processor,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
    )

    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        if checkpoint in ("last", "latest"):
            checkpoint = get_last_checkpoint(training_args.output_dir)
            if checkpoint is None:
                raise ValueError(
                    f"--resume_from_checkpoint last: no checkpoint-* folder in {training_args.output_dir}."
                )
        elif checkpoint is not None and not os.path.isdir(checkpoint):
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: no such folder.")
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # model + image processor: a folder that from_pretrained and pipeline() load
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    card_kwargs = {"tasks": "image-classification", "tags": ["image-classification", "hf_pvt", "pvt"]}
    if not is_preset(model_args.model_name_or_path):
        card_kwargs["finetuned_from"] = model_args.model_name_or_path
    if data_args.dataset_name is not None:
        card_kwargs["dataset"] = data_args.dataset_name
    if training_args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    elif training_args.do_train:
        trainer.create_model_card(**card_kwargs)


if __name__ == "__main__":
    sys.exit(main())
