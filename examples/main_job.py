#!/usr/bin/env python
"""The README's main job: train a small PVTv2 from scratch on real handwritten digits, offline, in minutes on a CPU.

scikit-learn ships the UCI handwritten digits (1,797 8x8 grayscale images, 10 classes), so nothing is
downloaded. The job upscales them to 32x32 RGB, holds out 20% (stratified), trains a slim PVTv2 with the
Trainer, prints the held-out accuracy, saves a Hub-ready folder (weights, config and code, image processor,
model card) and reloads it with `AutoModelForImageClassification` and `pipeline("image-classification")`.

    python examples/main_job.py                 # the full job (under a minute on 2 idle CPU cores)
    python examples/main_job.py --quick         # a few steps, to check the plumbing
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; fail fast instead of waiting on a network

import numpy as np
import PIL.Image
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from image_classification_utils import RandomResizedCropAndFlip, collate_fn, compute_metrics, make_transforms
from sklearn.datasets import load_digits
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments, pipeline, set_seed

from hf_pvt import HfPvtConfig, HfPvtForImageClassification, HfPvtImageProcessor

# pvt-v2-b0 slimmed for 32x32 inputs, whose stage maps are only 8, 4, 2 and 1 tokens wide: narrower stages,
# and spatial reduction only in stage 1 (b0's 8/4/2 would shrink those tiny maps to a single key).
DIGITS_CONFIG = {
    "hidden_sizes": [32, 64, 128, 160],
    "num_attention_heads": [1, 2, 4, 5],
    "depths": [1, 1, 2, 1],
    "mlp_ratios": [4, 4, 4, 4],
    "sr_ratios": [2, 1, 1, 1],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/digits-pvt")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--num_train_epochs", type=float, default=6)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Train 4 steps only: checks the plumbing, not accuracy.")
    return parser.parse_args()


def digits_dataset(image_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """scikit-learn's digits as RGB PIL images of image_size pixels, split 80/20 stratified by class."""
    digits = load_digits()
    # Pixels are ink counts 0..16; bicubic upscaling keeps the strokes smooth.
    images = [
        PIL.Image.fromarray(np.uint8(pixels * 255 / 16))
        .resize((image_size, image_size), PIL.Image.BICUBIC)
        .convert("RGB")
        for pixels in digits.images
    ]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    dataset = Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    split = dataset.train_test_split(test_size=0.2, stratify_by_column="label", seed=seed)
    return split["train"], split["test"]


def write_model_card(
    output_dir: str, accuracy: float, num_train: int, num_test: int, image_size: int, config: HfPvtConfig
) -> None:
    """README.md with the YAML metadata the Hub reads (library, task, tags, the measured accuracy)."""
    data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["image-classification", "hf_pvt", "pvt_v2", "digits"],
        metrics=["accuracy"],
        model_name=os.path.basename(os.path.normpath(output_dir)),
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type="sklearn-digits",
                dataset_name="scikit-learn handwritten digits (UCI ML hand-written digits, 8x8)",
                dataset_split="held-out 20%",
                metric_type="accuracy",
                metric_value=round(accuracy, 4),
            )
        ],
    )
    card = ModelCard.from_template(
        data,
        template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
        body=(
            f"# {data.model_name}\n\n"
            "A slim PVTv2 (Pyramid Vision Transformer v2) trained from scratch on scikit-learn's handwritten digits "
            f"({num_train} training images, upscaled from 8x8 to {image_size}x{image_size} RGB) by "
            "`examples/main_job.py` of hf_pvt.\n\n"
            f"Held-out accuracy: **{accuracy:.4f}** on {num_test} images (stratified 20% split).\n\n"
            f"Architecture: hidden sizes {config.hidden_sizes}, depths {config.depths}, heads "
            f"{config.num_attention_heads}, sr ratios {config.sr_ratios}.\n\n"
            "```python\nfrom transformers import pipeline\nimport hf_pvt  # or pass trust_remote_code=True\n\n"
            f'classifier = pipeline("image-classification", model="{output_dir}")\n```\n'
        ),
    )
    card.save(os.path.join(output_dir, "README.md"))


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    set_seed(args.seed)
    train_dataset, test_dataset = digits_dataset(args.image_size, args.seed)
    labels = train_dataset.features["label"].names
    print(f"digits: {len(train_dataset)} training and {len(test_dataset)} held-out images of {args.image_size}px")

    config = HfPvtConfig.from_preset(
        "pvt-v2-b0",
        **DIGITS_CONFIG,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = HfPvtForImageClassification(config)
    processor = HfPvtImageProcessor(size={"height": args.image_size, "width": args.image_size}, do_center_crop=False)
    # Small shifts and zooms; no flips (a mirrored 2 is not a 2).
    augment = RandomResizedCropAndFlip(
        (args.image_size, args.image_size), scale=(0.75, 1.0), ratio=(0.85, 1 / 0.85), flip_prob=0.0
    )
    train_transform, eval_transform = make_transforms(processor, augment=augment)
    train_dataset.set_transform(train_transform)
    test_dataset.set_transform(eval_transform)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, from scratch")

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.num_train_epochs,
        max_steps=4 if args.quick else -1,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128,
        learning_rate=args.learning_rate,
        weight_decay=0.05,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a fraction of the training steps
        eval_strategy="no" if args.quick else "epoch",
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        remove_unused_columns=False,  # the transforms need the image column
        dataloader_pin_memory=False,
        seed=args.seed,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=test_dataset,
        processing_class=processor,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    accuracy = trainer.evaluate()["eval_accuracy"]
    train_seconds = time.perf_counter() - start
    print(
        f"held-out accuracy: {accuracy:.4f} ({len(test_dataset)} images; chance is 0.10), {train_seconds:.0f}s so far"
    )

    trainer.save_model()  # weights + config + modeling code + image processor
    write_model_card(args.output_dir, accuracy, len(train_dataset), len(test_dataset), args.image_size, config)
    print(f"saved a Hub-ready folder to {args.output_dir}: {sorted(os.listdir(args.output_dir))}")

    # Reload the folder the way a user would, and classify held-out images.
    reloaded = AutoModelForImageClassification.from_pretrained(args.output_dir)
    print(f"reloaded {type(reloaded).__name__} with labels {list(reloaded.config.id2label.values())}")
    classifier = pipeline("image-classification", model=args.output_dir)
    test_dataset.reset_format()
    images, targets = list(test_dataset["image"]), list(test_dataset["label"])
    predictions = [top[0]["label"] for top in classifier(images, batch_size=128)]
    pipeline_accuracy = float(np.mean([p == labels[t] for p, t in zip(predictions, targets)]))
    for index in range(10):
        print(f"  held-out image {index}: predicted {predictions[index]}, true {labels[targets[index]]}")
    print(f"pipeline accuracy on the reloaded folder: {pipeline_accuracy:.4f}")
    print(f"total wall time: {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
