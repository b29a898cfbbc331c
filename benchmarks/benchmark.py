"""hf_pvt against Transformers' PVT ports, on identical weights, in one run on one machine.

    python benchmarks/benchmark.py            # full run (about 10 minutes on 2 CPU cores)
    python benchmarks/benchmark.py --quick    # smoke test: few iterations, no torch.compile
    python benchmarks/benchmark.py --device cuda   # bf16 autocast, batch 64 (written for CUDA, see README)

Every case runs in a fresh subprocess, so that one model's allocations cannot hide in another's peak:
- timing: a Transformers model with random weights and the hf_pvt model the converter makes of it, outputs
  checked for equality, then timed in alternating iterations, so machine noise (other processes) hits both
  alike; latency is the median;
- memory: one subprocess per model; the peak resident set (CPU: `ru_maxrss` after resetting the peak through
  `/proc/self/clear_refs`, with glibc told to return freed memory at once) or `torch.cuda.max_memory_allocated`
  during the first measured step, minus the level after the model was built.
Throughput is also given as a fraction of the machine's fp32 matrix-multiply rate, measured in the same run,
with SPEC §2's MACs (GFLOP = 2 x GMACs per image). Results go to benchmarks/results/ (JSON, CSV, PNG) and a
markdown table is printed.
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
# SPEC §2: GMACs per 224x224 image.
GMACS_224 = {"pvt-small": 3.8, "pvt-v2-b2": 4.0}

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

    from conversion.convert import convert
    from hf_pvt.configuration_hf_pvt import HfPvtConfig

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


def _step_fn(model, case: dict, pixel_values):
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
    step = _step_fn(model, case, pixel_values)
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


def worker_timing(case: dict, impls: list[str], warmup: int, iterations: int) -> dict:
    import torch

    pixel_values = torch.randn(case["batch"], 3, case["size"], case["size"], device=case["device"])
    models, steps, results = {}, {}, {}
    for impl in impls:
        models[impl] = _prepare(impl, case)
        steps[impl] = _step_fn(models[impl], case, pixel_values)
        try:
            start = time.perf_counter()
            for _ in range(warmup):
                steps[impl]()
            _sync(case["device"])
            results[impl] = {"warmup_s": time.perf_counter() - start}
        except Exception as error:  # noqa: BLE001 - the error is the result (Transformers v1 off 224)
            results[impl] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
            del steps[impl]
    if "hf_pvt" in models and "transformers" in steps and case["mode"] == "infer":
        small = pixel_values[:1].float() if case["precision"] == "fp32" else pixel_values[:1]
        results["check"] = _compare(models["hf_pvt"].eval(), models["transformers"].eval(), small)
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


def build_cases(device: str, quick: bool, compile_: bool) -> list[dict]:
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
    for preset in ("pvt-small", "pvt-v2-b2"):
        for batch in (1, 8):
            add(f"{preset} 224 b{batch}", preset, "cls", "infer", 224, batch, both, memory=batch == 8)
        add(f"{preset} 224 b8 train", preset, "cls", "train", 224, 8, [*both, "hf_pvt+ckpt"])
        add(f"{preset} 224 b8 bf16", preset, "cls", "infer", 224, 8, ["hf_pvt"], precision="bf16", memory=False)
        if compile_ and preset == "pvt-v2-b2":  # one model: compiling costs minutes on a small CPU
            add(f"{preset} 224 b8 compile", preset, "cls", "infer", 224, 8, ["hf_pvt+compile"], memory=False)
    add("pvt-v2-b2 backbone 1024 b1", "pvt-v2-b2", "backbone", "infer", 1024, 1, both)
    for size in (512, 1024):
        add(f"pvt-small {size} b1", "pvt-small", "cls", "infer", size, 1, both)
    return cases


def run_worker(payload: dict, timeout: float = 900) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if payload["task"] == "memory":
        # glibc keeps freed heap memory (allocations under its mmap threshold) mapped, so the resident peak would
        # count tensors long dead; mapping allocations from 64 KiB up makes frees visible and the peak that of live
        # tensors. Same setting for both libraries; timing workers keep the default allocator.
        env.update({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"})
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(payload)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": f"worker exited {completed.returncode}: {completed.stderr.strip().splitlines()[-1:]}"}


def _fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def summarise(results: list[dict], matmul_gflops: float) -> list[dict]:
    """One row per case and implementation, with the ratios against Transformers."""
    rows = []
    for case in results:
        timing, memory = case["timing"], case.get("memory", {})
        reference = timing.get("transformers", {})
        reference_memory = memory.get("transformers", {})
        for impl in case["impls"]:
            entry, mem = timing.get(impl, {}), memory.get(impl, {})
            gflops = None
            if case["size"] == 224 and case["mode"] == "infer" and "images_per_s" in entry:
                gflops = 2 * GMACS_224[case["preset"]] * entry["images_per_s"]
            row = {
                "case": case["name"],
                "impl": impl,
                "mode": case["mode"],
                "batch": case["batch"],
                "size": case["size"],
                "precision": case["precision"],
                "latency_ms": entry.get("latency_ms"),
                "images_per_s": entry.get("images_per_s"),
                "speedup_vs_transformers": (
                    reference["latency_ms"] / entry["latency_ms"]
                    if "latency_ms" in reference and "latency_ms" in entry and impl != "transformers"
                    else None
                ),
                "fraction_of_matmul": gflops / matmul_gflops if gflops and case["precision"] == "fp32" else None,
                "peak_mib": mem.get("peak_mib"),
                "memory_ratio_vs_transformers": (
                    mem["peak_mib"] / reference_memory["peak_mib"]
                    if "peak_mib" in mem and "peak_mib" in reference_memory and impl != "transformers"
                    else None
                ),
                "max_abs_diff": timing.get("check", {}).get("max_abs_diff") if impl == "transformers" else None,
                "max_abs_diff_same_eps": (
                    timing.get("check", {}).get("max_abs_diff_same_eps") if impl == "transformers" else None
                ),
                "error": entry.get("error") or mem.get("error"),
            }
            rows.append(row)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Machine: {meta['machine']}; torch {meta['torch']}, transformers {meta['transformers']}; "
        f"fp32 matmul {meta['matmul_gflops']:.0f} GFLOP/s; {meta['iterations']} timed iterations per model.",
        "",
        "| case | model | latency ms | images/s | vs Transformers | % of matmul rate | peak MiB | "
        "memory vs Transformers | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        note = row["error"] or ""
        if row["max_abs_diff"] is not None:
            note = f"max abs diff {row['max_abs_diff']:.1e} ({row['max_abs_diff_same_eps']:.1e} with eps 1e-6)"
        fraction = row["fraction_of_matmul"]
        lines.append(
            f"| {row['case']} | {row['impl']} | {_fmt(row['latency_ms'])} | {_fmt(row['images_per_s'], 2)} | "
            f"{_fmt(row['speedup_vs_transformers'], 2) + 'x' if row['speedup_vs_transformers'] else '—'} | "
            f"{_fmt(100 * fraction, 0) + '%' if fraction else '—'} | {_fmt(row['peak_mib'], 0)} | "
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
    colours = {"transformers": "tab:gray"}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few iterations and no torch.compile (smoke test)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        payload = json.loads(args.worker)
        if payload["task"] == "matmul":
            result = worker_matmul(payload["device"])
        elif payload["task"] == "memory":
            result = worker_memory(payload["case"], payload["impl"])
        else:
            result = worker_timing(payload["case"], payload["impls"], payload["warmup"], payload["iterations"])
        print("RESULT " + json.dumps(result))
        return

    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but torch.cuda.is_available() is False on this machine.")
    warmup, iterations = (1, 3) if args.quick else (2, 8)
    cases = build_cases(args.device, args.quick, compile_=not (args.quick or args.no_compile))
    if args.only:
        cases = [case for case in cases if args.only in case["name"]]
    started = time.perf_counter()
    matmul = [run_worker({"task": "matmul", "device": args.device})["matmul_gflops"]]
    results = []
    for case in cases:
        # 1024x1024 steps take seconds each on a small CPU: fewer iterations there.
        case_iterations = max(2, iterations // 3) if case["size"] >= 512 or case["mode"] == "train" else iterations
        print(f"[{time.perf_counter() - started:6.0f}s] {case['name']} ...", flush=True)
        timing = run_worker(
            {"task": "timing", "case": case, "impls": case["impls"], "warmup": warmup, "iterations": case_iterations}
        )
        memory = {}
        if case["memory"]:
            memory = {impl: run_worker({"task": "memory", "case": case, "impl": impl}) for impl in case["impls"]}
        results.append({**case, "timing": timing, "memory": memory})
    matmul.append(run_worker({"task": "matmul", "device": args.device})["matmul_gflops"])
    # The best of the two measurements: the rate the machine reaches when other processes leave it alone.
    matmul_gflops = max(matmul)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name()
    meta = {
        "machine": f"{device_name}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "matmul_gflops": matmul_gflops,
        "matmul_gflops_samples": matmul,
        "iterations": iterations,
        "quick": args.quick,
        "device": args.device,
        "load_average": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
    }
    rows = summarise(results, matmul_gflops)
    args.output.mkdir(parents=True, exist_ok=True)
    stem = f"benchmark_{args.device}" + ("_quick" if args.quick else "")
    (args.output / f"{stem}.json").write_text(json.dumps({"meta": meta, "cases": results, "rows": rows}, indent=1))
    with open(args.output / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.output / f"{stem}.png")
    table = markdown(rows, meta)
    (args.output / f"{stem}.md").write_text(table + "\n")
    print(table)
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
