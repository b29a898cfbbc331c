"""hf_pvt against Transformers' PVT ports, on identical weights, in one run on one machine.

    python benchmarks/benchmark.py            # full run, three rounds (about 40 minutes on 2 quiet CPU cores)
    python benchmarks/benchmark.py --runs 1   # one round
    python benchmarks/benchmark.py --quick    # smoke test: one round, few iterations, no torch.compile
    python benchmarks/benchmark.py --only b1  # the cases whose name contains "b1" (--skip: all others)
    python benchmarks/benchmark.py --render   # rewrite the markdown table from the saved JSON
    python benchmarks/benchmark.py --update-readme   # also put the table into README.md (with --render: no run)
    python benchmarks/benchmark.py --device cuda   # bf16 autocast, batch 64 (written for CUDA, see README)

Every measurement runs in a fresh subprocess, so that one model's allocations cannot hide in another's peak:
- timing: a Transformers model with random weights and the hf_pvt model the converter makes of it (and, for
  inference, hf_pvt's own ONNX export of it in ONNX Runtime), outputs checked for agreement, then timed in
  alternating iterations, so machine noise (other processes) hits all alike; latency is the median. The fp32
  matrix-multiply rate is measured in the same process just before, and throughput is given as a fraction of
  it, with the papers' MACs (`hf_pvt.variants_hf_pvt.RESULTS`; GFLOP = 2 x GMACs per image, a training step
  counts as three forward passes);
- rounds: the whole list of cases runs `--runs` times (default 3), one round after the other; the table gives
  the median over rounds and the spread (lowest and highest) of the speedups;
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
    import torch

    # Transformers' v1 is built for 224 like the released models; at other sizes its own error is recorded.
    model = _build("hf_pvt" if impl.startswith("hf_pvt") else "transformers", case["preset"], case["kind"], 224)
    model.to(case["device"])
    if impl == "hf_pvt+ckpt":
        model.gradient_checkpointing_enable()
    if impl == "hf_pvt+compile":
        model = torch.compile(model, fullgraph=True)
    return model


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

    model = _prepare(impl, case)
    pixel_values = torch.randn(case["batch"], 3, case["size"], case["size"], device=case["device"])
    step = step_fn(model, case, pixel_values)
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


def worker_timing(case: dict, impls: list[str], warmup: int, iterations: int, onnx_dir: str | None) -> dict:
    import torch

    pixel_values = torch.randn(case["batch"], 3, case["size"], case["size"], device=case["device"])
    results = {"matmul_gflops": worker_matmul(case["device"])["matmul_gflops"]}
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
    times = {impl: [] for impl in steps}
    for _ in range(iterations):  # alternate, so that load from other processes hits every model alike
        for impl, step in steps.items():
            _sync(case["device"])
            start = time.perf_counter()
            step()
            _sync(case["device"])
            times[impl].append(time.perf_counter() - start)
    for impl, samples in times.items():
        latency = statistics.median(samples)
        results[impl].update(
            latency_ms=latency * 1e3,
            best_ms=min(samples) * 1e3,
            images_per_s=case["batch"] / latency,
            iterations=len(samples),
        )
    return results


def worker_matmul(device: str, size: int = 2048, repeats: int = 10) -> dict:
    """fp32 GFLOP/s of a large square matmul: the machine's attainable rate for the same threads."""
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
    return {"matmul_gflops": 2 * size**3 / min(samples) / 1e9, "matmul_size": size}


# ----------------------------------------------------------------------------------------------------------
# Driver side.
# ----------------------------------------------------------------------------------------------------------


def build_cases(device: str, compile_: bool) -> list[dict]:
    cases = []

    def add(name, preset, kind, mode, size, batch, impls, precision="fp32", memory=True):
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
        for batch in (1, 8):
            add(f"{preset} 224 b{batch} bf16", preset, "cls", "infer", 224, batch, both, "bf16", memory=False)
        add(f"{preset} 224 b8 bf16 train", preset, "cls", "train", 224, 8, both, "bf16", memory=False)
        if compile_ and preset == "pvt-v2-b2":  # one model: compiling costs minutes on a small CPU
            add(f"{preset} 224 b8 compile", preset, "cls", "infer", 224, 8, ["hf_pvt+compile"], memory=False)
    add("pvt-v2-b2 backbone 1024 b1", "pvt-v2-b2", "backbone", "infer", 1024, 1, both)
    for size in (512, 1024):
        add(f"pvt-small {size} b1", "pvt-small", "cls", "infer", size, 1, both)
    return cases


def run_worker(payload: dict, timeout: float = 1800) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if payload["task"] == "memory":
        # glibc keeps freed heap memory (allocations under its mmap threshold) mapped, so the resident peak would
        # count tensors long dead; mapping allocations from 64 KiB up makes frees visible and the peak that of live
        # tensors. Same setting for both libraries; timing workers keep the default allocator.
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


def summarise(results: list[dict]) -> list[dict]:
    """One row per case and implementation: medians over the rounds, the spread of the speedups, the ratios
    against Transformers (and, for ONNX Runtime, against hf_pvt eager) and the fraction of the matmul rate."""
    from hf_pvt.variants_hf_pvt import RESULTS

    rows = []
    for case in results:
        rounds, memory = case["timing"], case.get("memory", {})
        reference_memory = memory.get("transformers", {})
        gmacs = RESULTS.get(case["preset"], {}).get("gmacs", 0)  # per 224x224 image, as published
        flops_per_image = 2e9 * gmacs * (3 if case["mode"] == "train" else 1)
        for impl in case["impls"]:
            latencies, against_reference, against_eager, fractions, errors = [], [], [], [], []
            for timing in rounds:
                entry = timing.get(impl, {})
                errors.append(entry.get("error") or timing.get("error"))
                if "latency_ms" not in entry:
                    continue
                latencies.append(entry["latency_ms"])
                reference, eager = timing.get("transformers", {}), timing.get("hf_pvt", {})
                if "latency_ms" in reference and impl != "transformers":
                    against_reference.append(reference["latency_ms"] / entry["latency_ms"])
                if impl == "hf_pvt+onnxruntime" and "latency_ms" in eager:
                    against_eager.append(eager["latency_ms"] / entry["latency_ms"])
                if case["size"] == 224 and case["precision"] == "fp32" and timing.get("matmul_gflops"):
                    fractions.append(flops_per_image * entry["images_per_s"] / 1e9 / timing["matmul_gflops"])
            mem = memory.get(impl, {})
            latency = _median(latencies)
            checks = [timing.get("check", {}) for timing in rounds if "check" in timing]
            onnx_checks = [timing["onnx_check"] for timing in rounds if "onnx_check" in timing]
            rows.append(
                {
                    "case": case["name"],
                    "impl": impl,
                    "mode": case["mode"],
                    "batch": case["batch"],
                    "size": case["size"],
                    "precision": case["precision"],
                    "runs": len(latencies),
                    "latency_ms": latency,
                    "latency_ms_span": _span(latencies),
                    "images_per_s": case["batch"] / latency * 1e3 if latency else None,
                    "speedup_vs_transformers": _median(against_reference),
                    "speedup_vs_transformers_span": _span(against_reference),
                    "speedup_vs_hf_pvt_eager": _median(against_eager),
                    "speedup_vs_hf_pvt_eager_span": _span(against_eager),
                    "fraction_of_matmul": _median(fractions),
                    "fraction_of_matmul_span": _span(fractions),
                    "peak_mib": mem.get("peak_mib"),
                    "memory_ratio_vs_transformers": (
                        mem["peak_mib"] / reference_memory["peak_mib"]
                        if "peak_mib" in mem and "peak_mib" in reference_memory and impl != "transformers"
                        else None
                    ),
                    "max_abs_diff": _worst(checks, "max_abs_diff", impl == "transformers"),
                    "max_abs_diff_same_eps": _worst(checks, "max_abs_diff_same_eps", impl == "transformers"),
                    "onnx_max_abs_diff": max(onnx_checks) if onnx_checks and impl == "hf_pvt+onnxruntime" else None,
                    "error": next((error for error in errors if error), None) if not latencies else None,
                }
            )
            if mem.get("error") and not rows[-1]["error"]:
                rows[-1]["error"] = mem["error"]
    return rows


def _ratio(row: dict, key: str) -> str:
    value, span = row[key], row[f"{key}_span"]
    if value is None:
        return "—"
    return f"{value:.2f}x" + (f" ({span[0]:.2f}-{span[1]:.2f})" if span else "")


BF16_EMULATED_NOTE = (
    " This CPU has no native bf16 (oneDNN emulates it): bf16 rows are one round of 2 iterations (training: 1)."
)


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Machine: {meta['machine']}; torch {meta['torch']}, transformers {meta['transformers']}, onnxruntime "
        f"{meta.get('onnxruntime', '—')}; fp32 matmul {meta['matmul_gflops_min']:.0f}-{meta['matmul_gflops_max']:.0f}"
        f" GFLOP/s over the rounds; {meta['runs']} rounds of {meta['iterations']} alternating timed iterations per "
        f"model (training: {meta['train_iterations']}); load average {meta['load_average_start']} at the start, "
        f"{meta['load_average'][0]:.2f} at the end.",
        "",
        "Medians over the rounds; in brackets the lowest and highest of the rounds."
        + ("" if meta.get("native_bf16", True) else BF16_EMULATED_NOTE),
        "",
        "| case | model | latency ms | images/s | vs Transformers | % of matmul rate | peak MiB | "
        "memory vs Transformers | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        note = row["error"] or ""
        if row["max_abs_diff"] is not None:
            note = f"max abs diff {row['max_abs_diff']:.1e} ({row['max_abs_diff_same_eps']:.1e} with eps 1e-6)"
        if row["speedup_vs_hf_pvt_eager"] is not None:
            note = f"{_ratio(row, 'speedup_vs_hf_pvt_eager')} vs hf_pvt eager; "
            note += f"max abs diff to it {row['onnx_max_abs_diff']:.1e}"
        fraction, span = row["fraction_of_matmul"], row["fraction_of_matmul_span"]
        fraction_text = "—" if fraction is None else f"{100 * fraction:.0f}%"
        if fraction is not None and span:
            fraction_text += f" ({100 * span[0]:.0f}-{100 * span[1]:.0f})"
        lines.append(
            f"| {row['case']} | {row['impl']} | {_fmt(row['latency_ms'])} | {_fmt(row['images_per_s'], 2)} | "
            f"{_ratio(row, 'speedup_vs_transformers')} | {fraction_text} | {_fmt(row['peak_mib'], 0)} | "
            f"{_fmt(row['memory_ratio_vs_transformers'], 2) + 'x' if row['memory_ratio_vs_transformers'] else '—'} | "
            f"{note} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r["images_per_s"]]
    memory = [r for r in rows if r["peak_mib"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, max(4, 0.3 * len(timed))))
    colours = {"transformers": "tab:gray", "hf_pvt+onnxruntime": "tab:green"}
    left.barh(
        [f"{r['case']} | {r['impl']}" for r in timed],
        [r["images_per_s"] for r in timed],
        color=[colours.get(r["impl"], "tab:blue") for r in timed],
    )
    left.set_xlabel("images / s (higher is better)")
    left.invert_yaxis()
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
    with open(output / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, output / f"{stem}.png")
    table = markdown(rows, meta)
    (output / f"{stem}.md").write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, few iterations, no torch.compile")
    parser.add_argument("--runs", type=int, default=None, help="rounds over all cases (default 3; --quick: 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    parser.add_argument("--skip", default=None, help="leave out cases whose name contains this text")
    parser.add_argument("--render", action="store_true", help="rewrite the tables from the saved JSON, run nothing")
    parser.add_argument("--update-readme", action="store_true", help="put the table into README.md's markers")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        payload = json.loads(args.worker)
        if payload["task"] == "matmul":
            result = worker_matmul(payload["device"])
        elif payload["task"] == "memory":
            result = worker_memory(payload["case"], payload["impl"])
        elif payload["task"] == "export":
            result = worker_export(payload["preset"], payload["kind"], payload["onnx_dir"])
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
    runs = args.runs or (1 if args.quick else 3)
    warmup, iterations = (1, 3) if args.quick else (2, 8)
    train_iterations = max(2, iterations // 2)
    cases = build_cases(args.device, compile_=not (args.quick or args.no_compile))
    # Without native bf16 (AVX512-BF16/AMX) oneDNN emulates bf16 matmuls and PyTorch runs grouped convolutions
    # channel by channel: a bf16 step takes tens of seconds, so those cases get one round of two iterations (one
    # for training).
    native_bf16 = args.device == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
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

    def make_meta(rounds_done: int) -> dict:
        rates = [t["matmul_gflops"] for result in results for t in result["timing"] if t.get("matmul_gflops")]
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
            "quick": args.quick,
            "device": args.device,
            "native_bf16": native_bf16,
            "exports": exports,
            "load_average_start": " ".join(f"{value:.2f}" for value in load_at_start),
            "load_average": os.getloadavg(),
            "wall_s": time.perf_counter() - started,
        }

    results = [{**case, "timing": [], "memory": {}} for case in cases]
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
                # Training steps and 512-1024 px images take seconds each on a small CPU: fewer iterations there.
                slow = case["size"] >= 512 or case["mode"] == "train"
                case_iterations = (1 if slow else 2) if emulated else train_iterations if slow else iterations
                print(
                    f"[{time.perf_counter() - started:6.0f}s] round {round_index + 1}/{runs}: {case['name']} ...",
                    flush=True,
                )
                timing = run_worker(
                    {
                        "task": "timing", "case": case, "impls": case["impls"], "warmup": 1 if emulated else warmup,
                        "iterations": case_iterations, "onnx_dir": onnx_dir,
                    }
                )  # fmt: skip
                result["timing"].append(timing)
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
