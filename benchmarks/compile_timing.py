"""What `torch.compile` (CPU, inductor) gives at steady state against eager PyTorch, for hf_pvt and Transformers.

    python benchmarks/compile_timing.py                        # pvt-small, pvt-v2-b2; infer, train; kept allocator
    python benchmarks/compile_timing.py --presets pvt-v2-b2 --modes infer
    python benchmarks/compile_timing.py --allocator default    # glibc's default settings (see benchmark.py)
    python benchmarks/compile_timing.py --iterations 20        # steady-state iterations (default: 10 infer, 4 train)
    python benchmarks/compile_timing.py --quick --presets pvt-v2-b0 --modes infer --output /tmp/ct   # smoke test

The question: at 224x224 (inference batch 1, training step batch 8), does compiling get hf_pvt to 1.2x Transformers'
eager speed, and what does compiling do for Transformers itself? Per case (preset, mode), in one fresh subprocess:
- models: Transformers' PVT port with seeded random weights and the hf_pvt model hf_pvt's converter makes of it
  (`benchmarks/benchmark.py`'s `_build`: the same tensors), each twice: `eager`, and `compiled` =
  `torch.compile(model)` with the default inductor backend on a separate instance built the same way (equal
  weights). Inference compiles with `torch._inductor.config.freezing = True` (weights folded in as constants, which
  inductor does only with grad off: the model is in eval and every inference call, eager or compiled, runs under
  `torch.inference_mode()`, as `benchmark.step_fn` does). Training compiles plainly (no freezing): forward,
  cross-entropy on 1000 classes, backward, `zero_grad(set_to_none=True)`.
- hf_pvt's CPU fast paths switch themselves off inside compile traces (`hf_pvt.cpu_paths_hf_pvt.enabled` checks
  `torch.compiler.is_compiling()`), so compiled hf_pvt is inductor's compilation of hf_pvt's plain-PyTorch graph,
  while eager hf_pvt runs its fast paths.
- compile time: wall time of the compiled model's first call and of its second call, both recorded (the first
  training step includes the backward's compilation; a recompilation on the second call shows there), with the
  number of graphs dynamo produced and its graph breaks. Each worker gets a fresh, empty inductor cache
  (`TORCHINDUCTOR_CACHE_DIR`), so this is cold compile time.
- agreement: max |difference| of the logits, compiled vs eager of the same implementation and hf_pvt vs Transformers
  (eager); for training, the loss and the gradient of the first parameter, compiled vs eager.
- steady state: `--iterations` alternating iterations, each running all four variants once in rotating order, so
  that load from other processes hits all alike; latency is the median, and each speedup is taken per iteration
  (Transformers eager's time / the variant's, in the same iteration) and given as median [min-max].
- allocator: `--allocator kept` (default) raises glibc's `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` /
  `MALLOC_TOP_PAD_` so freed memory is kept, as jemalloc and tcmalloc do; `default` leaves glibc as it is.
The markdown table is printed and the results go to `<output>/compile_timing_<allocator>[_quick].json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `benchmarks.benchmark` and `hf_pvt` from this checkout

RESULTS = REPO / "benchmarks" / "results"
from benchmarks.benchmark import ALLOCATORS, _cpu_name  # noqa: E402 - the benchmark's allocator settings

PRESETS = ("pvt-small", "pvt-v2-b2")
MODES = ("infer", "train")
BATCH = {"infer": 1, "train": 8}
IMPLS = ("hf_pvt", "transformers")
VARIANTS = tuple(f"{impl} {kind}" for impl in IMPLS for kind in ("eager", "compiled"))
REFERENCE = "transformers eager"

# ----------------------------------------------------------------------------------------------------------
# Worker side: one (preset, mode) case in a fresh process.
# ----------------------------------------------------------------------------------------------------------


def _error(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _graph_counters() -> dict:
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())}


def _train_check(model, pixel_values, labels) -> tuple[float, object, str]:
    """Loss and the first parameter's gradient of one training step (fixed labels), gradients cleared after."""
    import torch

    model.train()
    loss = torch.nn.functional.cross_entropy(model(pixel_values).logits.float(), labels)
    loss.backward()
    name, parameter = next(iter(model.named_parameters()))
    grad = parameter.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return loss.item(), grad, name


def worker(payload: dict) -> dict:
    import torch

    from benchmarks.benchmark import _build, step_fn

    preset, mode, iterations = payload["preset"], payload["mode"], payload["iterations"]
    case = {"device": "cpu", "mode": mode, "precision": "fp32"}
    threads = torch.get_num_threads()
    print(f"  worker: {preset} {mode}, {threads} threads", file=sys.stderr, flush=True)
    if mode == "infer":
        torch._inductor.config.freezing = True  # only takes effect where grad is off, i.e. in the inference calls
    torch.manual_seed(0)
    pixel_values = torch.randn(BATCH[mode], 3, 224, 224)
    result = {
        "threads": threads,
        "allocator_env": {key: os.environ.get(key) for key in ALLOCATORS["kept"]},
        "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "freezing": bool(torch._inductor.config.freezing),
        "compile_threads": torch._inductor.config.compile_threads,
        "variants": {},
    }
    models, steps = {}, {}
    for variant in VARIANTS:
        impl, kind = variant.split()
        model = _build(impl, preset, "cls", 224)  # seeded: every instance of one implementation has equal weights
        models[variant] = torch.compile(model) if kind == "compiled" else model
        steps[variant] = step_fn(models[variant], case, pixel_values)

    # Warm-up: two calls each. For compiled models these are the compilation (and any recompilation).
    for variant in VARIANTS:
        entry = result["variants"][variant] = {}
        before = _graph_counters()
        try:
            for call in ("first_call_s", "second_call_s"):
                start = time.perf_counter()
                steps[variant]()
                entry[call] = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - a failed compile is a result, recorded in its row
            entry["error"] = _error(error)
            steps.pop(variant)
            print(f"  {variant}: {entry['error']}", file=sys.stderr, flush=True)
            continue
        if variant.endswith("compiled"):
            after = _graph_counters()
            entry["compile_s"] = entry["first_call_s"] + entry["second_call_s"]
            entry.update({key: after[key] - before[key] for key in after})
        print(f"  {variant}: warm-up {entry['first_call_s']:.1f} s + {entry['second_call_s']:.1f} s",
              file=sys.stderr, flush=True)  # fmt: skip

    # Agreement, after warm-up so that no check call triggers a compilation of its own.
    if mode == "infer":
        outputs = {variant: step()[0] for variant, step in steps.items()}
        for variant in steps:
            impl, kind = variant.split()
            other = f"{impl} eager" if kind == "compiled" else REFERENCE if impl == "hf_pvt" else None
            if other in outputs:
                diff = (outputs[variant] - outputs[other]).abs().max().item()
                result["variants"][variant]["check"] = {"against": other, "logits_max_abs_diff": diff}
    else:
        labels = torch.randint(0, 1000, (BATCH[mode],), generator=torch.Generator().manual_seed(0))
        checks = {}
        for variant in steps:
            try:
                checks[variant] = _train_check(models[variant], pixel_values, labels)
            except Exception as error:  # noqa: BLE001
                result["variants"][variant]["check"] = {"error": _error(error)}
        for variant, (loss, grad, name) in checks.items():
            impl, kind = variant.split()
            if kind == "compiled" and f"{impl} eager" in checks:
                eager_loss, eager_grad, _ = checks[f"{impl} eager"]
                result["variants"][variant]["check"] = {
                    "against": f"{impl} eager",
                    "loss": loss,
                    "loss_abs_diff": abs(loss - eager_loss),
                    "grad_parameter": name,
                    "grad_max_abs_diff": (grad - eager_grad).abs().max().item(),
                }
            elif variant == "hf_pvt eager" and REFERENCE in checks:
                # Parameter names differ between the implementations: the loss is what is comparable.
                result["variants"][variant]["check"] = {
                    "against": REFERENCE, "loss": loss, "loss_abs_diff": abs(loss - checks[REFERENCE][0]),
                }  # fmt: skip
            else:
                result["variants"][variant]["check"] = {"loss": loss}

    # Steady state: every iteration runs each variant once, starting one further along each time.
    before = _graph_counters()
    order = list(steps)
    times = {variant: [] for variant in order}
    for iteration in range(iterations):
        shift = iteration % len(order)
        for variant in order[shift:] + order[:shift]:
            start = time.perf_counter()
            steps[variant]()
            times[variant].append(time.perf_counter() - start)
    # Graphs compiled while timing (0 expected): a recompilation there would be counted as steady state.
    result["graphs_compiled_during_timing"] = _graph_counters()["graphs"] - before["graphs"]

    def ratios(numerator: str, denominator: str) -> dict | None:
        if numerator not in times or denominator not in times:
            return None
        values = [a / b for a, b in zip(times[numerator], times[denominator])]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    for variant, samples in times.items():
        impl, kind = variant.split()
        result["variants"][variant].update(
            {
                "latency_ms": statistics.median(samples) * 1e3,
                "best_ms": min(samples) * 1e3,
                "samples_ms": [seconds * 1e3 for seconds in samples],
                # "x faster than": the other's time over this variant's, iteration by iteration
                "vs_transformers_eager": ratios(REFERENCE, variant),
                "vs_own_eager": ratios(f"{impl} eager", variant) if kind == "compiled" else None,
            }
        )
    result["iterations"] = iterations
    return result


# ----------------------------------------------------------------------------------------------------------
# Driver side.
# ----------------------------------------------------------------------------------------------------------


def run_worker(payload: dict, allocator: str, timeout: float) -> dict:
    """One case in a fresh process with its own empty inductor cache and the allocator's glibc settings."""
    cache = tempfile.mkdtemp(prefix="compile-timing-inductor-")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for key in ALLOCATORS["kept"]:
        env.pop(key, None)  # the allocator exactly as named, whatever the caller's environment holds
    env.update(ALLOCATORS[allocator])
    env["TORCHINDUCTOR_CACHE_DIR"] = cache
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(payload)]
    try:
        # stderr is not captured: the worker's progress (and compile warnings) show as it runs.
        completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s"}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": f"worker exited {completed.returncode} (its error is printed above)"}


def _ratio(value: dict | None) -> str:
    if not value:
        return "—"
    return f"{value['median']:.2f}x [{value['min']:.2f}-{value['max']:.2f}]"


def _diff(check: dict | None) -> str:
    if not check:
        return "—"
    if "error" in check:
        return check["error"]
    against = f" (vs {check['against']})" if "against" in check else ""
    if "logits_max_abs_diff" in check:
        return f"logits {check['logits_max_abs_diff']:.1e}{against}"
    if "grad_max_abs_diff" in check:
        return f"loss {check['loss_abs_diff']:.1e}, grad {check['grad_max_abs_diff']:.1e}{against}"
    if "loss_abs_diff" in check:
        return f"loss {check['loss_abs_diff']:.1e}{against}"
    return f"loss {check['loss']:.4f}"


def render(cases: list[dict]) -> str:
    lines = [
        "| preset | mode | implementation | variant | latency ms | vs Transformers eager | vs own eager"
        " | compile s (1st + 2nd call) | graphs / breaks | max abs diff |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        label = f"{case['preset']} | {case['mode']} b{BATCH[case['mode']]}"
        if "error" in case["result"]:
            lines.append(f"| {label} | — | — | — | — | — | — | — | {case['result']['error']} |")
            continue
        for variant in VARIANTS:
            impl, kind = variant.split()
            entry = case["result"]["variants"].get(variant, {})
            if "error" in entry:
                lines.append(f"| {label} | {impl} | {kind} | — | — | — | — | — | {entry['error']} |")
                continue
            compile_s = (
                f"{entry['compile_s']:.1f} ({entry['first_call_s']:.1f} + {entry['second_call_s']:.1f})"
                if "compile_s" in entry
                else "—"
            )
            graphs = f"{entry['graphs']} / {entry['graph_breaks']}" if "graphs" in entry else "—"
            lines.append(
                f"| {label} | {impl} | {kind} | {entry['latency_ms']:.1f} | {_ratio(entry['vs_transformers_eager'])}"
                f" | {_ratio(entry['vs_own_eager'])} | {compile_s} | {graphs} | {_diff(entry.get('check'))} |"
            )
    return "\n".join(lines)


def verdicts(cases: list[dict], target: float = 1.2) -> list[str]:
    """One line per case: the best hf_pvt variant against Transformers eager, against the target."""
    lines = []
    for case in cases:
        variants = case["result"].get("variants", {})
        parts = []
        for variant in ("hf_pvt eager", "hf_pvt compiled", "transformers compiled"):
            ratio = (variants.get(variant) or {}).get("vs_transformers_eager")
            if ratio:
                parts.append(f"{variant} {ratio['median']:.2f}x")
        met = any(
            ((variants.get(v) or {}).get("vs_transformers_eager") or {}).get("median", 0) >= target
            for v in ("hf_pvt eager", "hf_pvt compiled")
        )
        summary = ", ".join(parts) or "no timing"
        lines.append(f"- {case['preset']} {case['mode']}: {summary} vs Transformers eager"
                     f" (hf_pvt >= {target}x: {'met' if met else 'not met'})")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="presets (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--allocator", choices=list(ALLOCATORS), default="kept")
    parser.add_argument("--iterations", type=int, default=None, help="steady-state iterations (10 infer, 4 train)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 iterations, results file *_quick.json")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON (default: %(default)s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    import torch
    import transformers

    from hf_pvt.variants_hf_pvt import PRESETS as KNOWN

    unknown = [preset for preset in args.presets if preset not in KNOWN]
    if unknown:
        sys.exit(f"unknown presets {unknown}; known: {', '.join(KNOWN)}")
    started = time.perf_counter()
    load_start = os.getloadavg()
    machine = f"{_cpu_name()}, torch threads {torch.get_num_threads()}"
    print(f"machine: {machine}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"load average at start: {' '.join(f'{value:.2f}' for value in load_start)}")
    print(f"allocator {args.allocator}: {ALLOCATORS[args.allocator] or 'glibc defaults (no MALLOC_* set)'}")
    print("each worker: fresh process, TORCHINDUCTOR_CACHE_DIR = a new empty temporary folder", flush=True)

    cases = []
    for preset in args.presets:
        for mode in args.modes:
            iterations = args.iterations or (2 if args.quick else 10 if mode == "infer" else 4)
            print(f"[{time.perf_counter() - started:6.0f}s] {preset} {mode} ({iterations} iterations) ...", flush=True)
            case_start = time.perf_counter()
            payload = {"preset": preset, "mode": mode, "iterations": iterations}
            result = run_worker(payload, args.allocator, args.timeout)
            cases.append({**payload, "wall_s": time.perf_counter() - case_start, "result": result})
            print(f"[{time.perf_counter() - started:6.0f}s] {preset} {mode} done in {cases[-1]['wall_s']:.0f} s",
                  flush=True)  # fmt: skip

    load_end = os.getloadavg()
    meta = {
        "machine": machine,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "allocator": args.allocator,
        "allocator_env": ALLOCATORS[args.allocator],
        "quick": args.quick,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "wall_s": time.perf_counter() - started,
    }
    table = render(cases)
    print()
    print(table)
    print()
    print("\n".join(verdicts(cases)))
    print(f"\nload average at end: {' '.join(f'{value:.2f}' for value in load_end)}; wall {meta['wall_s']:.0f} s")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"compile_timing_{args.allocator}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"meta": meta, "cases": cases, "table": table}, indent=2))
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
