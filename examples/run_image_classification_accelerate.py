#!/usr/bin/env python
"""Fine-tune an hf_pvt model for image classification with a plain training loop on Accelerate.

The same job as `run_image_classification.py`, without the Trainer: data parallel over any number of
processes or GPUs, mixed precision, gradient accumulation, checkpoints (`accelerator.save_state`) and
resume. Launch it with `accelerate launch` or `torchrun` (add `--cpu` for several CPU processes), e.g. on two
GPUs in bf16:

    accelerate launch --num_processes 2 --mixed_precision bf16 examples/run_image_classification_accelerate.py \\
        --model_name_or_path pvt-v2-b0 --train_dir data/train --output_dir outputs/pvt-v2-b0-mydata \\
        --num_train_epochs 5 --learning_rate 1e-3 --checkpointing_steps epoch
"""

import argparse
import json
import math
import os
import re

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from image_classification_utils import (
    RandomResizedCropAndFlip,
    accuracy,
    build_model_and_processor,
    collate_fn,
    label_names,
    load_image_dataset,
    make_transforms,
    output_size,
)
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="A dataset on the Hub.")
    data.add_argument("--dataset_config_name")
    data.add_argument("--train_dir", help="A local image folder: one sub-folder per class.")
    data.add_argument("--validation_dir")
    data.add_argument(
        "--train_val_split", type=float, default=0.15, help="Held-out fraction without a validation split."
    )
    data.add_argument("--image_column_name", default="image")
    data.add_argument("--label_column_name", default="label")
    data.add_argument("--max_train_samples", type=int)
    data.add_argument("--min_crop_scale", type=float, default=0.08, help="Smallest area fraction of the random crops.")
    data.add_argument("--no_horizontal_flip", action="store_true", help="Do not flip training images (e.g. text).")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_name_or_path", default="pvt-v2-b0", help="A preset (from scratch), a folder or a Hub id."
    )
    model.add_argument(
        "--config_overrides", help="Presets only: JSON config fields, e.g. '{\"depths\": [1, 1, 1, 1]}'."
    )
    model.add_argument("--image_size", type=int, help="Resize to image_size x image_size without cropping.")
    model.add_argument("--ignore_mismatched_sizes", action="store_true", help="Allow a classifier of another size.")
    model.add_argument("--cache_dir")
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", required=True)
    train.add_argument("--per_device_train_batch_size", type=int, default=32)
    train.add_argument("--per_device_eval_batch_size", type=int, default=64)
    train.add_argument("--learning_rate", type=float, default=5e-4)
    train.add_argument("--weight_decay", type=float, default=0.05)
    train.add_argument("--num_train_epochs", type=int, default=3)
    train.add_argument("--max_train_steps", type=int, help="Optimizer steps in all; overrides --num_train_epochs.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--lr_scheduler_type", default="cosine")
    train.add_argument("--num_warmup_steps", type=int, default=0)
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], help="Default: the launcher's setting.")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--cpu", action="store_true", help="Run on CPU, also with several processes (gloo backend).")
    train.add_argument("--checkpointing_steps", help="Save the training state every N optimizer steps, or 'epoch'.")
    train.add_argument("--resume_from_checkpoint", help="A step_*/epoch_* folder, or 'last' for the newest one.")
    train.add_argument("--push_to_hub", action="store_true")
    train.add_argument("--hub_model_id", help="The Hub repository to push to (default: the output folder's name).")
    train.add_argument("--debug_dump_dir", help="Each rank writes its step count and final weights here (tests).")
    args = parser.parse_args(argv)
    if args.checkpointing_steps not in (None, "epoch") and not args.checkpointing_steps.isdigit():
        parser.error(f"--checkpointing_steps must be a number of steps or 'epoch', got {args.checkpointing_steps!r}.")
    return args


def newest_checkpoint(output_dir: str) -> str:
    """The step_*/epoch_* folder that `save_state` wrote last."""
    folders = (
        [f for f in os.listdir(output_dir) if re.fullmatch(r"(step|epoch)_\d+", f)]
        if os.path.isdir(output_dir)
        else []
    )
    if not folders:
        raise ValueError(f"--resume_from_checkpoint last: no step_*/epoch_* folder in {output_dir}.")
    return os.path.join(output_dir, max(folders, key=lambda f: os.path.getmtime(os.path.join(output_dir, f))))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator(
        cpu=args.cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # Shuffle order = f(seed, epoch), so a resumed run sees the batches the interrupted one would have.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)

    with accelerator.main_process_first():  # one process prepares the dataset cache, the others reuse it
        dataset = load_image_dataset(
            args.dataset_name,
            args.dataset_config_name,
            args.train_dir,
            args.validation_dir,
            label_column=args.label_column_name,
            train_val_split=args.train_val_split,
            seed=args.seed,
            cache_dir=args.cache_dir,
        )
    labels = label_names(dataset, args.label_column_name)
    model, processor = build_model_and_processor(
        args.model_name_or_path,
        labels,
        args.config_overrides,
        args.image_size,
        args.ignore_mismatched_sizes,
        args.cache_dir,
    )
    augment = RandomResizedCropAndFlip(
        output_size(processor), scale=(args.min_crop_scale, 1.0), flip_prob=0.0 if args.no_horizontal_flip else 0.5
    )
    train_transform, eval_transform = make_transforms(
        processor, args.image_column_name, args.label_column_name, augment
    )
    train_dataset, eval_dataset = dataset["train"], dataset["validation"]
    if args.max_train_samples is not None:
        train_dataset = train_dataset.shuffle(seed=args.seed).select(range(args.max_train_samples))
    train_dataset.set_transform(train_transform)
    eval_dataset.set_transform(eval_transform)
    train_loader = DataLoader(train_dataset, args.per_device_train_batch_size, shuffle=True, collate_fn=collate_fn)
    eval_loader = DataLoader(eval_dataset, args.per_device_eval_batch_size, collate_fn=collate_fn)

    # No weight decay on biases and norm weights (all 1-D parameters), as usual for vision transformers.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
    )
    # Steps are counted after sharding: prepare() splits the loader across processes.
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    # The scheduler is stepped on every process, so its step counts are multiplied by the process count.
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )

    completed_steps, start_epoch, skip_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoint = args.resume_from_checkpoint
        if checkpoint in ("last", "latest"):
            checkpoint = newest_checkpoint(args.output_dir)
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(checkpoint)
        kind, number = os.path.basename(os.path.normpath(checkpoint)).split("_")
        if kind == "epoch":
            start_epoch = int(number) + 1
            completed_steps = start_epoch * steps_per_epoch
        else:
            completed_steps = int(number)
            start_epoch, skip_batches = divmod(completed_steps * args.gradient_accumulation_steps, len(train_loader))

    initial_state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    accelerator.print(
        f"{len(train_dataset)} training images, {len(labels)} classes, {num_epochs} epochs, {max_train_steps} "
        f"optimizer steps of {total_batch} images on {accelerator.num_processes} process(es)"
    )
    progress = tqdm(
        total=max_train_steps, initial=completed_steps, disable=not accelerator.is_local_main_process, desc="train"
    )
    steps_this_run, samples_seen, eval_accuracy, eval_count = 0, 0, float("nan"), 0
    for epoch in range(start_epoch, num_epochs):
        model.train()
        train_loader.set_epoch(epoch)
        loader = train_loader
        if epoch == start_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_loader, skip_batches)
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            samples_seen += len(batch["labels"])
            if accelerator.sync_gradients:
                completed_steps += 1
                steps_this_run += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
                if (
                    args.checkpointing_steps not in (None, "epoch")
                    and completed_steps % int(args.checkpointing_steps) == 0
                ):
                    accelerator.save_state(os.path.join(args.output_dir, f"step_{completed_steps}"))
            if completed_steps >= max_train_steps:
                break

        model.eval()
        logits, targets = [], []
        for batch in eval_loader:
            with torch.no_grad():
                batch_logits = model(pixel_values=batch["pixel_values"]).logits
            # gather_for_metrics drops the samples that were repeated to even out the last batch across processes.
            batch_logits, batch_labels = accelerator.gather_for_metrics((batch_logits, batch["labels"]))
            logits.append(batch_logits.float().cpu())
            targets.append(batch_labels.cpu())
        logits, targets = torch.cat(logits), torch.cat(targets)
        eval_accuracy, eval_count = accuracy(logits.numpy(), targets.numpy()), len(targets)
        accelerator.print(f"epoch {epoch}: eval accuracy {eval_accuracy:.4f} on {eval_count} images")
        if args.checkpointing_steps == "epoch":
            accelerator.save_state(os.path.join(args.output_dir, f"epoch_{epoch}"))
        if completed_steps >= max_train_steps:
            break
    progress.close()

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        # A Hub-ready folder: weights, config (+ code for trust_remote_code), image processor, results.
        unwrapped.save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
            json.dump({"eval_accuracy": eval_accuracy, "eval_samples": eval_count, "steps": completed_steps}, f)
        if args.push_to_hub:
            import hf_pvt

            # One commit, a model card if there is none; offline or refused, a clear error and the folder kept.
            repo_id = args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))
            hf_pvt.push_to_hub(
                args.output_dir,
                repo_id,
                ignore_patterns=["step_*", "epoch_*"],
                commit_message="Fine-tuned with run_image_classification_accelerate.py",
            )
    if args.debug_dump_dir:
        os.makedirs(args.debug_dump_dir, exist_ok=True)
        rank = accelerator.process_index
        final_state = {k: v.detach().float().cpu().contiguous() for k, v in unwrapped.state_dict().items()}
        save_file(final_state, os.path.join(args.debug_dump_dir, f"rank{rank}_final.safetensors"))
        save_file(
            {k: v.float().cpu().contiguous() for k, v in initial_state.items()},
            os.path.join(args.debug_dump_dir, f"rank{rank}_initial.safetensors"),
        )
        record = {
            "rank": rank,
            "world_size": accelerator.num_processes,
            "optimizer_steps": steps_this_run,
            "completed_steps": completed_steps,
            "samples_seen": samples_seen,
            "eval_accuracy": eval_accuracy,
            "eval_samples": eval_count,
        }
        with open(os.path.join(args.debug_dump_dir, f"rank{rank}.json"), "w") as f:
            json.dump(record, f)
    accelerator.end_training()


if __name__ == "__main__":
    main()
