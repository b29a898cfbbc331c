"""hf_pvt against Transformers' PVT ports, on identical weights, under two memory allocators, in one run.

    python benchmarks/benchmark.py            # full run: 2 rounds x 2 allocators (about 40 minutes on 2 quiet cores)
    python benchmarks/benchmark.py --runs 1   # one round
    python benchmarks/benchmark.py --quick    # smoke test: one round, few iterations, default allocator only
    python benchmarks/benchmark.py --only b1  # the cases whose name contains "b1" (--skip: all others)
    python benchmarks/benchmark.py --allocators kept   # one allocator (default: both)
    python benchmarks/benchmark.py --render   # rewrite the markdown table from the saved JSON
    python benchmarks/benchmark.py --update-readme   # also put the table into README.md (with --render: no run)
    python benchmarks/benchmark.py --device cuda   # bf16 autocast, batch 64 (written for CUDA, see README)

Every measurement runs in a fresh subprocess, so that one model's allocations cannot hide in another's peak, and
each timing runs twice, in processes that differ only in the allocator's settings (`ALLOCATORS`): glibc's default,
which returns large freed blocks to the OS so that the next allocation faults its pages in again, and "kept"
(`MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` / `MALLOC_TOP_PAD_` raised), which keeps freed memory as
jemalloc and tcmalloc do. A speedup that holds under one only is the allocator's, not the model's.
- timing: a Transformers model with random weights and the hf_pvt model the converter makes of it (and, for
  inference, hf_pvt's own ONNX export of it in ONNX Runtime), outputs checked for agreement, then timed in
  alternating iterations, so machine noise (other processes) hits all alike; latency is the median. Before each
  iteration the fp32 matrix-multiply rate is sampled, and throughput is given as a fraction of it, with the FLOPs
  counted by torch's `FlopCounterMode` on hf_pvt's plain path (matmuls, convolutions, attention; a training step
  counts as three forward passes);
- dense rows (`benchmarks/dense_cases.py`): backbones at 800x1216 against Transformers' `PvtV2Backbone`, and each
  head end to end (preprocessed photo -> forward -> post-processing) with the share of each stage;
- rounds: the whole list of cases runs `--runs` times (default 2), one round after the other, each case under
  both allocators back to back; the table gives the median over rounds and the spread (lowest and highest);
- memory: one subprocess per model; the peak resident set (CPU: `ru_maxrss` after resetting the peak through
  `/proc/self/clear_refs`, with glibc told to return freed memory at once) or `torch.cuda.max_memory_allocated`
  during the first measured step, minus the level after the model was built (first round only).
Results go to benchmarks/results/ (JSON, CSV, PNG, markdown), and the markdown table is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# The environment each allocator's workers get. glibc accepts mmap thresholds up to 32 MiB; blocks below it come
# from the heap, which is neither trimmed nor shrunk (top pad 1 GiB), so freed memory is reused without faults.
ALLOCATORS = {
    "default": {},
    "kept": {
        "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
        "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30),
        "MALLOC_TOP_PAD_": str(2**30),
    },
}
DENSE_KINDS = ("retinanet", "semantic_fpn", "mask_rcnn")

# ----------------------------------------------------------------------------------------------------------
# Worker side: one case in a fresh process.
# ----------------------------------------------------------------------------------------------------------


def _build(impl: str, preset: str, kind: str, image_size: int):
    """A Transformers model with seeded random weights, or the hf_pvt model that hf_pvt's converter makes of it.

    Going through the converter keeps one key-renaming table in the project (Transformers -> hf_pvt), and its
    strict accounting guarantees that both models hold exactly the same tensors.
    """
    import tempfile

    import torch
    from safetensors.torch import save_file
    from transformers import (
        PvtConfig,
        PvtForImageClassification,
        PvtV2Backbone,
        PvtV2Config,
        PvtV2ForImageClassification,
    )

    from hf_pvt.configuration_hf_pvt import HfPvtConfig
    from hf_pvt.conversion.convert import convert
    from hf_pvt.modeling_hf_pvt import HfPvtBackbone

    torch.manual_seed(0)
    config = HfPvtConfig.from_preset(preset)
    common = {
        "hidden_sizes": config.hidden_sizes,
        "depths": config.depths,
        "num_attention_heads": config.num_attention_heads,
        "mlp_ratios": config.mlp_ratios,
        "patch_sizes": config.patch_sizes,
        "strides": config.strides,
        "num_labels": 1000,
    }
    if config.pvt_version == 1:
        # Transformers v1 stores its position embeddings for config.image_size and runs only at that size.
        reference = PvtForImageClassification(
            PvtConfig(**common, sequence_reduction_ratios=config.sr_ratios, image_size=config.image_size)
        )
    elif kind == "backbone":
        reference = PvtV2Backbone(
            PvtV2Config(**common, sr_ratios=config.sr_ratios, out_features=["stage1", "stage2", "stage3", "stage4"])
        )
    else:
        reference = PvtV2ForImageClassification(PvtV2Config(**common, sr_ratios=config.sr_ratios))
    if impl == "transformers":
        return reference
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/transformers.safetensors"
        save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, path)
        model = convert(path, variant=preset).model
    if kind == "backbone" and config.pvt_version == 1:  # Transformers has no v1 backbone; hf_pvt's, same encoder
        backbone = HfPvtBackbone(HfPvtConfig.from_preset(preset, out_indices=[0, 1, 2, 3]))
        # The dense v1 encoder has no class token and no final norm; every tensor it has comes from the classifier.
        missing, _ = backbone.load_state_dict(model.pvt.state_dict(), strict=False)
        assert not missing, missing
        return backbone
    if kind == "backbone":
        model.out_indices = [0, 1, 2, 3]
    return model


def _outputs(model, pixel_values):
    output = model(pixel_values)
    return output.feature_maps if hasattr(output, "feature_maps") and output.feature_maps else (output.logits,)


def _compare(hf_model, reference, pixel_values) -> dict:
    """Max |difference| of the outputs, as built (LN eps differs by place in hf_pvt) and with eps 1e-6 everywhere."""
    import torch

    with torch.no_grad():
        expected = _outputs(reference, pixel_values)
        as_built = max((a - b).abs().max().item() for a, b in zip(_outputs(hf_model, pixel_values), expected))
        norms = [m for m in hf_model.modules() if isinstance(m, torch.nn.LayerNorm)]
        saved = [m.eps for m in norms]
        for m in norms:
            m.eps = 1e-6  # Transformers' eps everywhere: the remaining difference is float rounding only
        same_eps = max((a - b).abs().max().item() for a, b in zip(_outputs(hf_model, pixel_values), expected))
        for m, eps in zip(norms, saved):
            m.eps = eps
    return {"max_abs_diff": as_built, "max_abs_diff_same_eps": same_eps}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def step_fn(model, case: dict, pixel_values):
    """The callable measured: an inference forward, or a training step (forward + backward)."""
    import torch

    device, mode = case["device"], case["mode"]
    dtype = {"fp32": None, "bf16": torch.bfloat16}[case["precision"]]
    if mode == "train":
        model.train()
        labels = torch.randint(0, 1000, (pixel_values.shape[0],), device=device)

        def step():
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                logits = model(pixel_values).logits
            torch.nn.functional.cross_entropy(logits.float(), labels).backward()
            model.zero_grad(set_to_none=True)

        return step
    model.eval()

    def step():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            return _outputs(model, pixel_values)

    return step


def _prepare(impl: str, case: dict):
    # Transformers' v1 is built for 224 like the released models; at other sizes its own error is recorded.
    model = _build("hf_pvt" if impl.startswith("hf_pvt") else "transformers", case["preset"], case["kind"], 224)
    model.to(case["device"])
    if impl == "hf_pvt+ckpt":
        model.gradient_checkpointing_enable()
    return model


def _pixel_values(case: dict):
    import torch

    return torch.randn(case["batch"], 3, *case["size"], device=case["device"])


def _onnx_session(case: dict, onnx_dir: str):
    """An ONNX Runtime session on hf_pvt's export of the case's model (exported once per run, see worker_export),
    with as many intra-op threads as PyTorch uses, so that both run on the same cores."""
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # ORT's workers spin for a while after each run by default; in alternating timing they would burn the cores
    # while PyTorch runs (measured: hf_pvt eager 1.5x slower beside a spinning session).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path = Path(onnx_dir) / f"{case['preset']}-{case['kind']}.onnx"
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def worker_memory(case: dict, impl: str) -> dict:
    import gc

    import torch

    if case["kind"] in DENSE_KINDS:
        from benchmarks.dense_cases import build_dense_step

        step, _ = build_dense_step(case["kind"], case["preset"])
        step()  # the first call's one-off allocations (weight copies kept by the fast paths) are the model's
    else:
        model = _prepare(impl, case)
        step = step_fn(model, case, _pixel_values(case))
    gc.collect()
    if case["device"] == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        exact = _reset_peak()
        baseline = _rss_bytes()
    try:
        step()
        _sync(case["device"])
    except Exception as error:  # noqa: BLE001 - the error is the result (Transformers v1 off 224)
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    if case["device"] == "cuda":
        peak = torch.cuda.max_memory_allocated() - baseline
        method = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
        method = "ru_maxrss after clear_refs" if exact else "ru_maxrss (peak not reset: upper bound)"
    return {"peak_mib": peak / 2**20, "memory_method": method}


def worker_export(preset: str, kind: str, onnx_dir: str) -> dict:
    """hf_pvt's one-step deployment path, as a user takes it: `hf_pvt.export_onnx` (dynamic batch and size)."""
    from hf_pvt import export_onnx

    start = time.perf_counter()
    model = _build("hf_pvt", preset, kind, 224)
    path = export_onnx(model, Path(onnx_dir) / f"{preset}-{kind}.onnx")
    return {"export_s": time.perf_counter() - start, "onnx_mib": path.stat().st_size / 2**20}


def _step_flops(model, case: dict, pixel_values) -> int:
    """FLOPs of one measured step of `model` (hf_pvt's, plain path): its forward, three times for training."""
    import torch

    from benchmarks.dense_cases import count_flops

    training = model.training
    with torch.no_grad():
        flops = count_flops(lambda: _outputs(model.eval(), pixel_values))
    model.train(training)
    return flops * (3 if case["mode"] == "train" else 1)


def worker_timing(case: dict, impls: list[str], warmup: int, iterations: int, onnx_dir: str | None) -> dict:
    import torch

    pixel_values = _pixel_values(case)
    results = {"allocator_env": {key: os.environ.get(key) for key in ALLOCATORS["kept"]}}
    models, steps = {}, {}
    for impl in impls:
        try:
            if impl == "hf_pvt+onnxruntime":
                session, inputs = _onnx_session(case, onnx_dir), {"pixel_values": pixel_values.numpy()}
                models[impl] = session
                steps[impl] = lambda session=session, inputs=inputs: session.run(None, inputs)
            else:
                models[impl] = _prepare(impl, case)
                steps[impl] = step_fn(models[impl], case, pixel_values)
            start = time.perf_counter()
            for _ in range(warmup):
                steps[impl]()
            _sync(case["device"])
            results[impl] = {"warmup_s": time.perf_counter() - start}
        except Exception as error:  # noqa: BLE001 - the error is the result (Transformers v1 off 224)
            results[impl] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
            steps.pop(impl, None)
    if "hf_pvt" in models and case["device"] == "cpu" and case["precision"] == "fp32":
        results["flops"] = _step_flops(models["hf_pvt"], case, pixel_values)
    if "hf_pvt" in models and "transformers" in steps and case["mode"] == "infer":
        small = pixel_values[:1].float() if case["precision"] == "fp32" else pixel_values[:1]
        results["check"] = _compare(models["hf_pvt"].eval(), models["transformers"].eval(), small)
    if "hf_pvt" in models and "hf_pvt+onnxruntime" in steps:
        with torch.no_grad():
            expected = _outputs(models["hf_pvt"].eval(), pixel_values)
        actual = steps["hf_pvt+onnxruntime"]()
        results["onnx_check"] = max(
            (torch.from_numpy(ours) - theirs).abs().max().item() for ours, theirs in zip(actual, expected)
        )
    times, rates = {impl: [] for impl in steps}, []
    for _ in range(iterations):  # alternate, so that load from other processes hits every model alike
        rates.append(matmul_rate(case["device"]))
        for impl, step in steps.items():
            _sync(case["device"])
            start = time.perf_counter()
            step()
            _sync(case["device"])
            times[impl].append(time.perf_counter() - start)
    results["matmul_gflops"] = statistics.median(rates)
    for impl, samples in times.items():
        results[impl].update(_latency_summary(samples, rates, case["batch"], results.get("flops")))
    return results


def _latency_summary(samples: list[float], rates: list[float], batch: int, flops: int | None) -> dict:
    """Median latency, and the median over iterations of the step's FLOP rate against the matmul rate sampled
    just before that iteration (the host's speed drifts within a run)."""
    latency = statistics.median(samples)
    summary = {
        "latency_ms": latency * 1e3,
        "best_ms": min(samples) * 1e3,
        "images_per_s": batch / latency,
        "iterations": len(samples),
    }
    if flops:
        summary["fraction_of_matmul"] = statistics.median(
            flops / seconds / 1e9 / rate for seconds, rate in zip(samples, rates)
        )
    return summary


def worker_dense(case: dict, warmup: int, iterations: int) -> dict:
    """A dense head end to end (`benchmarks/dense_cases.py`): latency, FLOP rate and the stages' shares."""
    from benchmarks.dense_cases import STAGES, build_dense_step

    step, info = build_dense_step(case["kind"], case["preset"])
    for _ in range(warmup):
        step()
    samples, rates, parts = [], [], []
    for _ in range(iterations):
        rates.append(matmul_rate(case["device"]))
        start = time.perf_counter()
        parts.append(step())
        samples.append(time.perf_counter() - start)
    result = _latency_summary(samples, rates, 1, info["flops"])
    # The forward's FLOP rate: post-processing runs no matmuls, so it is left out of the fraction.
    forward = [seconds - part["postprocess"] for seconds, part in zip(samples, parts)]
    result["fraction_of_matmul"] = statistics.median(
        info["flops"] / seconds / 1e9 / rate for seconds, rate in zip(forward, rates)
    )
    result["stages_s"] = {stage: statistics.median(part[stage] for part in parts) for stage in STAGES}
    return {
        "hf_pvt": result,
        "flops": info["flops"],
        "dense": info,
        "matmul_gflops": statistics.median(rates),
        "allocator_env": {key: os.environ.get(key) for key in ALLOCATORS["kept"]},
    }


def matmul_rate(device: str, size: int = 2048, repeats: int = 3) -> float:
    """fp32 GFLOP/s of a large square matmul (median of `repeats`): the attainable rate for the same threads."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    samples = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        samples.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(samples) / 1e9


# ----------------------------------------------------------------------------------------------------------
# Driver side.
# ----------------------------------------------------------------------------------------------------------


def build_cases(device: str, bf16: bool) -> list[dict]:
    cases = []

    def add(name, preset, kind, mode, size, batch, impls, precision="fp32", memory=True):
        size = [size, size] if isinstance(size, int) else list(size)
        cases.append(
            dict(
                name=name, preset=preset, kind=kind, mode=mode, size=size, batch=batch,
                impls=impls, precision=precision, memory=memory, device=device,
            )
        )  # fmt: skip

    both = ["hf_pvt", "transformers"]
    if device == "cuda":
        for preset in ("pvt-small", "pvt-v2-b2"):
            add(f"{preset} 224 b64 bf16", preset, "cls", "infer", 224, 64, both, precision="bf16")
            add(f"{preset} 224 b64 bf16 train", preset, "cls", "train", 224, 64, [*both, "hf_pvt+ckpt"], "bf16")
        add("pvt-v2-b2 backbone 1024 b1", "pvt-v2-b2", "backbone", "infer", 1024, 1, both)
        return cases
    with_onnx = [*both, "hf_pvt+onnxruntime"]
    for preset in ("pvt-small", "pvt-v2-b2"):
        for batch in (1, 8):
            add(f"{preset} 224 b{batch}", preset, "cls", "infer", 224, batch, with_onnx, memory=batch == 8)
        add(f"{preset} 224 b8 train", preset, "cls", "train", 224, 8, [*both, "hf_pvt+ckpt"])
        if bf16:
            for batch in (1, 8):
                add(f"{preset} 224 b{batch} bf16", preset, "cls", "infer", 224, batch, both, "bf16", memory=False)
            add(f"{preset} 224 b8 bf16 train", preset, "cls", "train", 224, 8, both, "bf16", memory=False)
    for preset in ("pvt-small", "pvt-v2-b0", "pvt-v2-b2"):
        add(f"{preset} backbone 800x1216", preset, "backbone", "infer", (800, 1216), 1, both)
    for kind, preset in (("retinanet", "pvt-v2-b2"), ("semantic_fpn", "pvt-v2-b2"), ("mask_rcnn", "pvt-v2-b2")):
        add(f"{preset} {kind.replace('_', ' ')}", preset, kind, "infer", 0, 1, ["hf_pvt"])
    return cases


def run_worker(payload: dict, allocator: str = "default", timeout: float = 1800) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for key in ALLOCATORS["kept"]:
        env.pop(key, None)  # each allocator exactly as described, whatever the caller's environment holds
    env.update(ALLOCATORS[allocator])
    if payload["task"] == "memory":
        # glibc keeps freed heap memory (allocations under its mmap threshold) mapped, so the resident peak would
        # count tensors long dead; mapping allocations from 64 KiB up makes frees visible and the peak that of live
        # tensors. Same setting for every model.
        env.update({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"})
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(payload)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s"}
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": f"worker exited {completed.returncode}: {completed.stderr.strip().splitlines()[-1:]}"}


def _fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def _median(values: list) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def _worst(checks: list[dict], key: str, applies: bool = True) -> float | None:
    return max(check[key] for check in checks) if checks and applies else None


def _span(values: list) -> tuple[float, float] | None:
    values = [value for value in values if value is not None]
    return (min(values), max(values)) if len(values) > 1 else None


def _over_rounds(rounds: list[dict], impl: str) -> dict:
    """One implementation's figures under one allocator: medians over the rounds and their spread."""
    latencies, against_reference, against_eager, fractions, errors, stages = [], [], [], [], [], []
    for timing in rounds:
        entry = timing.get(impl, {})
        errors.append(entry.get("error") or timing.get("error"))
        if "latency_ms" not in entry:
            continue
        latencies.append(entry["latency_ms"])
        fractions.append(entry.get("fraction_of_matmul"))
        stages.append(entry.get("stages_s"))
        reference, eager = timing.get("transformers", {}), timing.get("hf_pvt", {})
        if "latency_ms" in reference and impl != "transformers":
            against_reference.append(reference["latency_ms"] / entry["latency_ms"])
        if impl == "hf_pvt+onnxruntime" and "latency_ms" in eager:
            against_eager.append(eager["latency_ms"] / entry["latency_ms"])
    stages = [stage for stage in stages if stage]
    return {
        "runs": len(latencies),
        "latency_ms": _median(latencies),
        "latency_ms_span": _span(latencies),
        "speedup_vs_transformers": _median(against_reference),
        "speedup_vs_transformers_span": _span(against_reference),
        "speedup_vs_hf_pvt_eager": _median(against_eager),
        "speedup_vs_hf_pvt_eager_span": _span(against_eager),
        "fraction_of_matmul": _median(fractions),
        "fraction_of_matmul_span": _span(fractions),
        "stages_s": {name: _median([stage[name] for stage in stages]) for name in stages[0]} if stages else None,
        "error": next((error for error in errors if error), None) if not latencies else None,
    }


def summarise(results: list[dict]) -> list[dict]:
    """One row per case and implementation, with each allocator's medians over the rounds, the spread of the
    speedups, the ratios against Transformers (and, for ONNX Runtime, against hf_pvt eager) and the fraction of the
    matmul rate."""
    rows = []
    for case in results:
        memory, reference_memory = case.get("memory", {}), case.get("memory", {}).get("transformers", {})
        all_rounds = [timing for rounds in case["timing"].values() for timing in rounds]
        flops = next((timing["flops"] for timing in all_rounds if timing.get("flops")), None)
        for impl in case["impls"]:
            per_allocator = {name: _over_rounds(rounds, impl) for name, rounds in case["timing"].items()}
            mem = memory.get(impl, {})
            checks = [timing["check"] for timing in all_rounds if "check" in timing]
            onnx_checks = [timing["onnx_check"] for timing in all_rounds if "onnx_check" in timing]
            first = next(iter(per_allocator.values()), {})
            row = {
                "case": case["name"],
                "impl": impl,
                "mode": case["mode"],
                "batch": case["batch"],
                "size": case["size"],
                "precision": case["precision"],
                "gflop": flops / 1e9 / case["batch"] if flops else None,
                "allocators": per_allocator,
                "peak_mib": mem.get("peak_mib"),
                "memory_ratio_vs_transformers": (
                    mem["peak_mib"] / reference_memory["peak_mib"]
                    if "peak_mib" in mem and "peak_mib" in reference_memory and impl != "transformers"
                    else None
                ),
                "max_abs_diff": _worst(checks, "max_abs_diff", impl == "transformers"),
                "max_abs_diff_same_eps": _worst(checks, "max_abs_diff_same_eps", impl == "transformers"),
                "onnx_max_abs_diff": max(onnx_checks) if onnx_checks and impl == "hf_pvt+onnxruntime" else None,
                "error": first.get("error") or mem.get("error"),
            }
            rows.append(row)
    return rows


def _ratio(figures: dict, key: str) -> str:
    value, span = figures.get(key), figures.get(f"{key}_span")
    if value is None:
        return "—"
    return f"{value:.2f}x" + (f" ({span[0]:.2f}-{span[1]:.2f})" if span else "")


def _percent(figures: dict) -> str:
    value, span = figures.get("fraction_of_matmul"), figures.get("fraction_of_matmul_span")
    if value is None:
        return "—"
    return f"{100 * value:.0f}%" + (f" ({100 * span[0]:.0f}-{100 * span[1]:.0f})" if span else "")


def _shares(stages: dict | None) -> str:
    if not stages:
        return ""
    total = sum(stages.values())
    names = {"backbone": "backbone", "neck": "neck", "head": "head", "postprocess": "post-processing"}
    return ", ".join(f"{names[name]} {100 * seconds / total:.0f}%" for name, seconds in stages.items())


BF16_EMULATED_NOTE = (
    " bf16 rows are left out: this CPU has no native bf16 (oneDNN emulates it, 5-30x slower than fp32 for both"
    " libraries); `--bf16` measures them."
)


def markdown(rows: list[dict], meta: dict) -> str:
    allocators = meta["allocators"]
    environments = "; ".join(
        f"{name}: " + (" ".join(f"{k}={v}" for k, v in ALLOCATORS[name].items()) or "glibc as configured")
        for name in allocators
    )
    lines = [
        f"Machine: {meta['machine']}; torch {meta['torch']}, transformers {meta['transformers']}, onnxruntime "
        f"{meta.get('onnxruntime', '—')}; fp32 matmul {meta['matmul_gflops_min']:.0f}-{meta['matmul_gflops_max']:.0f}"
        f" GFLOP/s over the runs; {meta['runs']} rounds of {meta['iterations']} alternating timed iterations per "
        f"model (training, 800x1216 and dense heads: {meta['train_iterations']}) under each allocator "
        f"({environments}); load average {meta['load_average_start']} at the start, "
        f"{meta['load_average'][0]:.2f} at the end.",
        "",
        "Medians over the rounds; in brackets the lowest and highest of the rounds. GFLOP per image (training: per "
        "image and step, three forward passes), counted on hf_pvt's plain path; % of matmul rate: that work per "
        "second against a 2048x2048 fp32 matmul sampled before each iteration (dense heads: the forward pass)."
        + (BF16_EMULATED_NOTE if meta.get("bf16_left_out") else ""),
        "",
        "| case | model | GFLOP | "
        + " | ".join(f"latency ms, {name}" for name in allocators)
        + " | "
        + " | ".join(f"vs Transformers, {name}" for name in allocators)
        + " | "
        + " | ".join(f"% of matmul rate, {name}" for name in allocators)
        + " | peak MiB | memory vs Transformers | note |",
        "|---" * (6 + 3 * len(allocators)) + "|",
    ]
    for row in rows:
        figures = [row["allocators"].get(name, {}) for name in allocators]
        note = row["error"] or ""
        if row["max_abs_diff"] is not None:
            note = f"max abs diff {row['max_abs_diff']:.1e} ({row['max_abs_diff_same_eps']:.1e} with eps 1e-6)"
        if row["onnx_max_abs_diff"] is not None:
            note = "vs hf_pvt eager " + ", ".join(_ratio(f, "speedup_vs_hf_pvt_eager") for f in figures)
            note += f"; max abs diff to it {row['onnx_max_abs_diff']:.1e}"
        shares = _shares(figures[0].get("stages_s"))
        if shares:
            note = shares + f" ({allocators[0]})"
        memory_ratio = row["memory_ratio_vs_transformers"]
        lines.append(
            f"| {row['case']} | {row['impl']} | {_fmt(row['gflop'], 1)} | "
            + " | ".join(_fmt(f.get("latency_ms")) for f in figures)
            + " | "
            + " | ".join(_ratio(f, "speedup_vs_transformers") for f in figures)
            + " | "
            + " | ".join(_percent(f) for f in figures)
            + f" | {_fmt(row['peak_mib'], 0)} | {_fmt(memory_ratio, 2) + 'x' if memory_ratio else '—'} | {note} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], allocators: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if any(r["allocators"].get(a, {}).get("latency_ms") for a in allocators)]
    memory = [r for r in rows if r["peak_mib"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, max(4, 0.3 * len(timed))))
    labels = [f"{r['case']} | {r['impl']}" for r in timed]
    height = 0.8 / len(allocators)
    for index, allocator in enumerate(allocators):
        speeds = [
            r["batch"] / latency * 1e3 if (latency := r["allocators"].get(allocator, {}).get("latency_ms")) else 0
            for r in timed
        ]
        left.barh([i + index * height for i in range(len(timed))], speeds, height=height, label=allocator)
    left.set_yticks([i + 0.4 - height / 2 for i in range(len(timed))], labels)
    left.set_xlabel("images / s (higher is better)")
    left.legend(title="allocator")
    left.invert_yaxis()
    colours = {"transformers": "tab:gray"}
    right.barh(
        [f"{r['case']} | {r['impl']}" for r in memory],
        [r["peak_mib"] for r in memory],
        color=[colours.get(r["impl"], "tab:orange") for r in memory],
    )
    right.set_xlabel("peak memory over the built model, MiB (lower is better)")
    right.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def update_readme(table: str, device: str, readme: Path = REPO / "README.md") -> None:
    """Put the table between README's `<!-- benchmark:DEVICE -->` and `<!-- /benchmark:DEVICE -->` markers."""
    start, end = f"<!-- benchmark:{device} -->", f"<!-- /benchmark:{device} -->"
    text = readme.read_text()
    if start not in text or end not in text:
        sys.exit(f"README.md has no {start} ... {end} markers to put the table between; add them first.")
    before, rest = text.split(start, 1)
    readme.write_text(f"{before}{start}\n{table}\n{end}{rest.split(end, 1)[1]}")


def _write(output: Path, stem: str, meta: dict, results: list[dict]) -> str:
    rows = summarise(results)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{stem}.json").write_text(json.dumps({"meta": meta, "cases": results, "rows": rows}, indent=1))
    flat = [
        {key: value for key, value in row.items() if key != "allocators"}
        | {f"{name}_{key}": value for name, figures in row["allocators"].items() for key, value in figures.items()}
        for row in rows
    ]
    with open(output / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in flat for key in row)))
        writer.writeheader()
        writer.writerows(flat)
    plot(rows, meta["allocators"], output / f"{stem}.png")
    table = markdown(rows, meta)
    (output / f"{stem}.md").write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, few iterations, default allocator only")
    parser.add_argument("--runs", type=int, default=None, help="rounds over all cases (default 2; --quick: 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--allocators", nargs="+", choices=list(ALLOCATORS), default=None,
        help="allocator settings to run every case under (default: both; --quick: default)",
    )  # fmt: skip
    parser.add_argument("--bf16", action="store_true", help="bf16 rows also on CPUs without native bf16")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    parser.add_argument("--skip", default=None, help="leave out cases whose name contains this text")
    parser.add_argument("--render", action="store_true", help="rewrite the tables from the saved JSON, run nothing")
    parser.add_argument("--update-readme", action="store_true", help="put the table into README.md's markers")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        payload = json.loads(args.worker)
        if payload["task"] == "memory":
            result = worker_memory(payload["case"], payload["impl"])
        elif payload["task"] == "export":
            result = worker_export(payload["preset"], payload["kind"], payload["onnx_dir"])
        elif payload["case"]["kind"] in DENSE_KINDS:
            result = worker_dense(payload["case"], payload["warmup"], payload["iterations"])
        else:
            result = worker_timing(
                payload["case"], payload["impls"], payload["warmup"], payload["iterations"], payload["onnx_dir"]
            )
        print("RESULT " + json.dumps(result))
        return

    stem = f"benchmark_{args.device}" + ("_quick" if args.quick else "")
    if args.render:
        saved = json.loads((args.output / f"{stem}.json").read_text())
        table = _write(args.output, stem, saved["meta"], saved["cases"])
        print(table)
        if args.update_readme:
            update_readme(table, args.device)
        return

    import tempfile

    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but torch.cuda.is_available() is False on this machine.")
    runs = args.runs or (1 if args.quick else 2)
    allocators = args.allocators or (["default"] if args.quick or args.device == "cuda" else list(ALLOCATORS))
    warmup, iterations = (1, 3) if args.quick else (1, 6)
    train_iterations = iterations // 2
    # Without native bf16 (AVX512-BF16/AMX) oneDNN emulates bf16 matmuls and PyTorch runs grouped convolutions
    # channel by channel: a bf16 step takes tens of seconds, so those cases run only when asked for, one round of
    # two iterations (one for training).
    native_bf16 = args.device == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    cases = build_cases(args.device, bf16=native_bf16 or args.bf16)
    if args.only:
        cases = [case for case in cases if args.only in case["name"]]
    if args.skip:
        cases = [case for case in cases if args.skip not in case["name"]]
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    try:
        import onnxruntime

        onnxruntime_version = onnxruntime.__version__
    except ImportError:
        onnxruntime_version = None
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name()
    print(f"allocators: {', '.join(f'{name} {ALLOCATORS[name] or {}}' for name in allocators)}", flush=True)

    def make_meta(rounds_done: int) -> dict:
        rates = [
            timing["matmul_gflops"]
            for result in results
            for rounds in result["timing"].values()
            for timing in rounds
            if timing.get("matmul_gflops")
        ]
        return {
            "machine": f"{device_name}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime_version,
            "matmul_gflops_min": min(rates) if rates else float("nan"),
            "matmul_gflops_max": max(rates) if rates else float("nan"),
            "runs": rounds_done,
            "iterations": iterations,
            "train_iterations": train_iterations,
            "allocators": allocators,
            "allocator_settings": {name: ALLOCATORS[name] for name in allocators},
            "quick": args.quick,
            "device": args.device,
            "native_bf16": native_bf16,
            "bf16_left_out": not (native_bf16 or args.bf16),
            "exports": exports,
            "load_average_start": " ".join(f"{value:.2f}" for value in load_at_start),
            "load_average": os.getloadavg(),
            "wall_s": time.perf_counter() - started,
        }

    results = [{**case, "timing": {name: [] for name in allocators}, "memory": {}} for case in cases]
    exports = {}
    with tempfile.TemporaryDirectory() as onnx_dir:
        for preset, kind in sorted({(c["preset"], c["kind"]) for c in cases if "hf_pvt+onnxruntime" in c["impls"]}):
            print(f"[{time.perf_counter() - started:6.0f}s] exporting {preset} to ONNX ...", flush=True)
            exports[preset] = run_worker({"task": "export", "preset": preset, "kind": kind, "onnx_dir": onnx_dir})
        for round_index in range(runs):
            for case, result in zip(cases, results):
                emulated = case["precision"] == "bf16" and not native_bf16
                if emulated and round_index > 0:
                    continue
                # Training steps, detection-size images and dense heads take seconds each: fewer iterations there.
                slow = max(case["size"]) >= 512 or case["mode"] == "train" or case["kind"] in DENSE_KINDS
                case_iterations = (1 if slow else 2) if emulated else train_iterations if slow else iterations
                # Allocators alternate in order from round to round, so that neither always runs first.
                for allocator in allocators[round_index % 2 :] + allocators[: round_index % 2]:
                    print(
                        f"[{time.perf_counter() - started:6.0f}s] round {round_index + 1}/{runs}: {case['name']}"
                        f" ({allocator} allocator) ...",
                        flush=True,
                    )
                    timing = run_worker(
                        {
                            "task": "timing", "case": case, "impls": case["impls"],
                            "warmup": 1 if emulated else warmup, "iterations": case_iterations, "onnx_dir": onnx_dir,
                        },
                        allocator,
                    )  # fmt: skip
                    result["timing"][allocator].append(timing)
                if case["memory"] and round_index == 0:
                    for impl in case["impls"]:
                        if impl != "hf_pvt+onnxruntime":
                            result["memory"][impl] = run_worker({"task": "memory", "case": case, "impl": impl})
            _write(args.output, stem, make_meta(round_index + 1), results)  # each round saved: a kill keeps them

    meta = make_meta(runs)
    table = _write(args.output, stem, meta, results)
    print(table)
    if args.update_readme:
        update_readme(table, args.device)
    print(f"\nWrote {args.output}/{stem}.{{json,csv,png,md}} in {meta['wall_s']:.0f} s.")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({len(names)} cores)"
    except (OSError, IndexError):
        return "CPU"


if __name__ == "__main__":
    main()
