"""The fine-tuning examples end to end, offline, on a tiny image folder cut from scikit-learn's digits.

Each script runs in a subprocess as a user would run it; the checks read what it wrote (metrics, checkpoints,
per-rank dumps, the saved folder) and reload the result with the Auto classes and the pipeline.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

import hf_pvt  # noqa: F401
from hf_pvt import HfPvtForImageClassification

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TINY = json.dumps(
    {
        "hidden_sizes": [16, 32, 48, 64],
        "num_attention_heads": [1, 2, 3, 4],
        "depths": [1, 1, 1, 1],
        "sr_ratios": [2, 1, 1, 1],
    }
)
MODEL_ARGS = ["--model_name_or_path", "pvt-v2-b0", "--config_overrides", TINY, "--image_size", "32"]


def offline_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),  # no cache shared with other runs
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run(args: list[str], tmp_path: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """train/ and validation/ folders, 3 classes (digits 0, 1, 7) x 8 + 4 real 8x8 digit images as 16px PNGs."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits_folder")
    digits = load_digits()
    for digit in (0, 1, 7):
        images = digits.images[digits.target == digit][:12]
        for index, pixels in enumerate(images):
            split = "train" if index < 8 else "validation"
            folder = root / split / f"digit_{digit}"
            folder.mkdir(parents=True, exist_ok=True)
            image = PIL.Image.fromarray(np.uint8(pixels * 255 / 16)).resize((16, 16), PIL.Image.BICUBIC)
            image.save(folder / f"{index}.png")
    return root


def data_args(folder: Path) -> list[str]:
    return ["--train_dir", str(folder / "train"), "--validation_dir", str(folder / "validation")]


def trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def test_trainer_script_trains_checkpoints_and_resumes(image_folder, tmp_path):
    script = str(EXAMPLES / "run_image_classification.py")
    common = [sys.executable, script, *MODEL_ARGS, *data_args(image_folder), "--per_device_train_batch_size", "4"]
    common += ["--learning_rate", "1e-3", "--report_to", "none", "--data_seed", "0", "--horizontal_flip", "false"]
    common += ["--save_strategy", "steps", "--save_steps", "3", "--do_train", "--max_steps", "6"]
    # Whole-image "crops": the Trainer fetches the first batch after a resume before it restores the random state,
    # so that one batch's augmentation would differ from the uninterrupted run's.
    common += ["--min_crop_scale", "1.0"]
    straight, output_dir = tmp_path / "straight", tmp_path / "trainer_out"
    run([*common, "--output_dir", str(straight), "--seed", "0"], tmp_path)
    # The same run interrupted after its first checkpoint (its schedule planned for 6 steps): only checkpoint-3 left.
    checkpoint = output_dir / "checkpoint-3"
    shutil.copytree(straight / "checkpoint-3", checkpoint)
    assert trainer_state(checkpoint)["global_step"] == 3
    first_weights = load_file(str(checkpoint / "model.safetensors"))

    # Resumed with another --seed: had it started over, its initial weights would differ. Weights, optimizer,
    # schedule and random state come from the checkpoint, so it ends exactly where the straight run ended.
    run(
        [
            *common,
            "--output_dir",
            str(output_dir),
            "--seed",
            "1",
            "--do_eval",
            "--resume_from_checkpoint",
            str(checkpoint),
        ],
        tmp_path,
    )
    assert trainer_state(output_dir / "checkpoint-6")["global_step"] == 6
    expected = load_file(str(straight / "model.safetensors"))
    resumed = load_file(str(output_dir / "model.safetensors"))
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    eval_results = json.loads((output_dir / "eval_results.json").read_text())

    # The output folder is a Hub-ready model: labels from the folder names, weights moved on from step 3.
    model = HfPvtForImageClassification.from_pretrained(output_dir)
    assert model.config.id2label == {0: "digit_0", 1: "digit_1", 2: "digit_7"}
    final_weights = model.state_dict()
    assert any(not torch.equal(first_weights[k], final_weights[k]) for k in first_weights)
    readme = (output_dir / "README.md").read_text()
    assert readme.startswith("---\n") and "image-classification" in readme

    # Evaluation accuracy recomputed independently from the saved folder must match the script's.
    processor = hf_pvt.HfPvtImageProcessor.from_pretrained(output_dir)
    assert processor.size == {"height": 32, "width": 32} and not processor.do_center_crop
    images, labels = [], []
    for index, digit in enumerate(("digit_0", "digit_1", "digit_7")):
        for path in sorted((image_folder / "validation" / digit).glob("*.png")):
            images.append(PIL.Image.open(path).convert("RGB"))
            labels.append(index)
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    accuracy = (logits.argmax(-1) == torch.tensor(labels)).float().mean().item()
    assert accuracy == pytest.approx(eval_results["eval_accuracy"], abs=1e-6)


def test_trainer_script_bf16_and_pretrained_folder_with_new_head(image_folder, tmp_path):
    """A saved 10-class folder fine-tuned on 3 classes in bf16: the head is re-created, the body is kept."""
    from hf_pvt import HfPvtConfig

    pretrained = tmp_path / "pretrained"
    config = HfPvtConfig.from_preset("pvt-v2-b0", **json.loads(TINY), num_labels=10)
    HfPvtForImageClassification(config).save_pretrained(pretrained)
    hf_pvt.HfPvtImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False).save_pretrained(pretrained)

    script = str(EXAMPLES / "run_image_classification.py")
    output_dir = tmp_path / "finetuned"
    args = [sys.executable, script, "--model_name_or_path", str(pretrained), *data_args(image_folder)]
    args += ["--output_dir", str(output_dir), "--do_train", "--max_steps", "2", "--per_device_train_batch_size", "4"]
    args += ["--report_to", "none", "--save_strategy", "no", "--learning_rate", "0"]
    args += ["--bf16", "--use_cpu", "--ignore_mismatched_sizes"]
    run(args, tmp_path)
    before = load_file(str(pretrained / "model.safetensors"))
    after = load_file(str(output_dir / "model.safetensors"))
    assert after["classifier.weight"].shape == (3, 64) and before["classifier.weight"].shape == (10, 64)
    # learning rate 0: every body weight is the pretrained one.
    body = [k for k in before if not k.startswith("classifier.")]
    assert body and all(torch.equal(before[k], after[k].to(before[k].dtype)) for k in body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_script_two_processes_stay_in_sync(image_folder, tmp_path):
    dump_dir, output_dir = tmp_path / "dump", tmp_path / "accelerate_out"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    args += [str(EXAMPLES / "run_image_classification_accelerate.py"), "--cpu", *MODEL_ARGS, *data_args(image_folder)]
    args += ["--output_dir", str(output_dir), "--per_device_train_batch_size", "2", "--max_train_steps", "4"]
    args += ["--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--checkpointing_steps", "2"]
    args += ["--debug_dump_dir", str(dump_dir), "--no_horizontal_flip"]
    run(args, tmp_path)

    records = [json.loads((dump_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, record in enumerate(records):
        assert record["rank"] == rank and record["world_size"] == 2
        assert record["optimizer_steps"] == 4
        # 4 optimizer steps x 2 accumulated batches x 2 images, each rank on its own half of the data.
        assert record["samples_seen"] == 16
        # gather_for_metrics: all 12 validation images counted once, not padded up to a multiple of 2 x 64.
        assert record["eval_samples"] == 12
    assert records[0]["eval_accuracy"] == records[1]["eval_accuracy"]

    initial = [load_file(str(dump_dir / f"rank{rank}_initial.safetensors")) for rank in (0, 1)]
    final = [load_file(str(dump_dir / f"rank{rank}_final.safetensors")) for rank in (0, 1)]
    assert initial[0].keys() == final[0].keys() == final[1].keys()
    for key in final[0]:
        assert torch.equal(initial[0][key], initial[1][key]), key
        assert torch.equal(final[0][key], final[1][key]), f"{key} differs between the ranks"
    assert any(not torch.equal(initial[0][k], final[0][k]) for k in final[0]), "training changed nothing"
    # The saved folder is rank 0's model.
    saved = load_file(str(output_dir / "model.safetensors"))
    assert all(torch.equal(saved[k].float(), final[0][k]) for k in final[0])
    assert (output_dir / "step_2").is_dir() and (output_dir / "step_4").is_dir()


def test_accelerate_script_resumes_from_a_step_checkpoint(image_folder, tmp_path):
    """Training 2 steps, then resuming to 4, ends where one uninterrupted 4-step run ends."""
    script = str(EXAMPLES / "run_image_classification_accelerate.py")
    common = [sys.executable, script, "--cpu", *MODEL_ARGS, *data_args(image_folder), "--no_horizontal_flip"]
    common += ["--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--checkpointing_steps", "2"]
    common += ["--lr_scheduler_type", "constant"]  # the interrupted run must not plan a shorter schedule
    # Whole-image "crops": the data loader fetches one batch ahead, so the saved random state is already past the
    # next batch's augmentation.
    common += ["--min_crop_scale", "1.0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run([*common, "--output_dir", str(straight), "--max_train_steps", "4"], tmp_path)
    run([*common, "--output_dir", str(resumed), "--max_train_steps", "2"], tmp_path)
    run(
        [
            *common,
            "--output_dir",
            str(resumed),
            "--max_train_steps",
            "4",
            "--resume_from_checkpoint",
            "last",
            "--debug_dump_dir",
            str(tmp_path / "dump"),
        ],
        tmp_path,
    )
    record = json.loads((tmp_path / "dump" / "rank0.json").read_text())
    assert record["optimizer_steps"] == 2 and record["completed_steps"] == 4
    expected = load_file(str(straight / "model.safetensors"))
    actual = load_file(str(resumed / "model.safetensors"))
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_main_job_quick_saves_a_folder_that_reloads(tmp_path):
    from transformers import AutoModelForImageClassification, pipeline

    output_dir = tmp_path / "digits-pvt"
    result = run([sys.executable, str(EXAMPLES / "main_job.py"), "--quick", "--output_dir", str(output_dir)], tmp_path)
    assert "held-out accuracy" in result.stdout and "pipeline accuracy" in result.stdout
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_hf_pvt.py"):
        assert (output_dir / name).is_file(), name

    model = AutoModelForImageClassification.from_pretrained(output_dir)
    assert isinstance(model, HfPvtForImageClassification)
    assert model.config.id2label == {i: str(i) for i in range(10)}
    classifier = pipeline("image-classification", model=str(output_dir))
    assert classifier.image_processor.size == {"height": 32, "width": 32}

    # The pipeline's answer on a real digit equals the model's own argmax on the processor's pixels.
    from sklearn.datasets import load_digits

    pixels = load_digits().images[0]
    image = PIL.Image.fromarray(np.uint8(pixels * 255 / 16)).resize((32, 32), PIL.Image.BICUBIC).convert("RGB")
    with torch.no_grad():
        logits = model(**classifier.image_processor(image, return_tensors="pt")).logits[0]
    top = classifier(image, top_k=3)
    assert top[0]["label"] == model.config.id2label[int(logits.argmax())]
    assert top[0]["score"] == pytest.approx(logits.softmax(-1).max().item(), abs=1e-5)

    # The model card carries YAML metadata with the accuracy the script printed.
    card = (output_dir / "README.md").read_text()
    metadata = card.split("---\n")[1]
    assert "library_name: transformers" in metadata and "pipeline_tag: image-classification" in metadata
    printed = float(result.stdout.split("held-out accuracy: ")[1].split()[0])
    assert f"value: {round(printed, 4)}" in metadata
