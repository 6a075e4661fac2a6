"""The performance harness: ``make bench`` (``python bench/run.py [--quick]``).

Writes one JSON file per run, atomically, to ``bench/results/<UTC timestamp>.json`` and
``bench/results/latest.json`` (`bench/README.md` explains every key). Every training step and
evaluation measurement runs in a fresh worker process (``--worker SPEC``) so that its peak
resident memory (``VmHWM``, a high-water mark) is its own. ``--quick`` (CI, under 2 minutes)
measures the ``demo`` model only, with tiny counts; the full run adds AST-base (the ``paper``
geometry, random initialisation: no weights needed) and stays under 15 minutes on 2 CPU cores.
The methods measured are the paper's and its reference, as the method registry names them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RESULT_TAG = "BENCH_RESULT "
SCHEMA = 1


# --- what is measured ----------------------------------------------------------------------


def plan(quick: bool) -> list[dict[str, Any]]:
    """The worker measurements, required ones first; ``optional`` ones run within the budget."""
    jobs: list[dict[str, Any]] = []

    def train(profile: str, method: str, batch: int, variant: str = "fast", precision: str = "fp32",
              steps: int = 3, warmup: int = 1, optional: bool = False) -> None:
        jobs.append({"kind": "train", "profile": profile, "method": method, "batch": batch,
                     "variant": variant, "precision": precision, "steps": steps,
                     "warmup": warmup, "optional": optional})

    def evaluate(profile: str, batch: int, batches: int, reps: int,
                 optional: bool = False) -> None:
        jobs.append({"kind": "eval", "profile": profile, "batch": batch, "batches": batches,
                     "reps": reps, "optional": optional})

    ce, cl = measured_methods()
    demo_steps = 3 if quick else 10
    for method in (ce, cl):
        for batch in (8, 2):
            train("demo", method, batch, steps=demo_steps)
            train("demo", method, batch, "naive", steps=demo_steps)
    train("demo", cl, 8, precision="bf16", steps=demo_steps)
    if not quick:
        train("demo", cl, 4, steps=demo_steps)
        train("demo", cl, 4, "naive", steps=demo_steps)
        for variant in ("unfused", "two_forwards"):
            train("demo", cl, 8, variant, steps=demo_steps)
    evaluate("demo", 64, 2, reps=2 if quick else 5)
    if quick:
        return jobs
    # AST-base costs seconds per cycle: 1 warm-up step, then 1 timed step (2 at batch 2)
    train("paper", cl, 4, steps=1)  # the naive-vs-fast comparison
    train("paper", cl, 4, "naive", steps=1)
    train("paper", cl, 8, steps=1)
    train("paper", ce, 8, steps=1)
    train("paper", cl, 2, steps=2)
    train("paper", ce, 2, steps=2)
    train("paper", cl, 8, precision="bf16", steps=1)
    evaluate("paper", 8, 1, reps=1)
    # what each block keeps for backward (the fast step is "lean"); with the warm-up step, as
    # every job: only from the second step on does the peak include Adam's state
    train("paper", cl, 8, "store", steps=1)
    train("paper", cl, 8, "checkpoint", steps=1, optional=True)
    train("paper", cl, 4, "two_forwards", steps=1, optional=True)
    train("paper", cl, 4, "unfused", steps=1, optional=True)
    return jobs


def measured_methods() -> tuple[str, str]:
    """The reference fine-tuning and the paper's method, by their registered names."""
    from patchmix.methods import method_with_role

    return method_with_role("reference").name, method_with_role("proposed").name


def key(job: dict[str, Any]) -> str:
    """``"<profile>/<method>/<batch>"`` of a training job, ``"<profile>/<batch>"`` of eval."""
    if job["kind"] == "eval":
        return f"{job['profile']}/{job['batch']}"
    return f"{job['profile']}/{job['method']}/{job['batch']}"


def experiment_config(profile: str, method: str, precision: str = "fp32", batch: int = 8):
    """The profile's configuration with random weights (the ``paper`` one needs no file)."""
    from patchmix.config import profile as named
    from patchmix.config import with_overrides

    return with_overrides(named(profile), ["model.weights=none", f"method.name={method}",
                                           f"train.precision={precision}", "train.device=cpu",
                                           f"train.batch_size={max(batch, 2)}"])


def random_data(n: int, seed: int = 0):
    """`patchmix.data.loading.Data` of n random training cycles (n, 798, 128), labels 0..3."""
    import pandas as pd

    from patchmix.data.dataset import DataFolder, DataSet
    from patchmix.data.loading import Data

    def unreadable(*args: Any) -> Any:
        raise NotImplementedError("random benchmark data has no folder")

    features = np.random.default_rng(seed).standard_normal((n, 798, 128), dtype=np.float32)
    cycles = pd.DataFrame({"split": ["train"] * n, "label": np.arange(n) % 4})
    random = DataSet("random", "random features (benchmark)", unreadable,
                     detect=lambda path: False, synthetic=True)
    return Data(cycles, features, DataFolder(Path("random"), random))


def max_rss_mb() -> float:
    """This process's peak resident memory so far, MB: ``VmHWM`` of /proc/self/status.

    Not ``ru_maxrss``: on Linux it also keeps the high-water mark of the process image before
    ``exec``, i.e. a worker would report at least the RSS of the harness that forked it.
    ``VmHWM`` belongs to the address space, which ``exec`` replaces. Elsewhere: ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


# --- workers (one measurement per process) -------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    return train_worker(spec) if spec["kind"] == "train" else eval_worker(spec)


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time `Run.step` (loss, backward, Adam, ma_update) of one variant on random cycles."""
    import variants

    from patchmix.config import with_overrides
    from patchmix.engine.train import Run, _float_state

    b = spec["batch"]
    cfg = experiment_config(spec["profile"], spec["method"], spec["precision"], b)
    overrides = [*variants.VARIANTS[spec["variant"]].overrides, *spec.get("overrides", [])]
    if overrides:  # e.g. ["model.activations=store"]
        cfg = with_overrides(cfg, overrides)
    data = random_data(b)
    run = Run(cfg, data, torch.device("cpu"))
    step = variants.prepare(run, spec["variant"])
    state = _float_state(run.modules) if cfg.train.ma_beta > 0 else []
    x = torch.from_numpy(data.features)  # (B, 798, 128)
    y = torch.tensor(data.cycles["label"].to_numpy())
    g = torch.Generator().manual_seed(0)
    before = max_rss_mb()
    times, losses = [], []
    for _ in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        loss, _ = step(x, y, g, state)
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    timed = times[spec["warmup"]:]
    return {"step_s": min(timed), "median_step_s": statistics.median(timed),
            "all_step_s": times, "losses": losses,
            "rss_before_mb": before, "peak_mem_mb": max_rss_mb(),
            "threads": torch.get_num_threads()}


def eval_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Samples/s of `predict_proba` under inference_mode (as the library runs it) and no_grad."""
    from patchmix.engine.train import predict_proba
    from patchmix.model.backbone import build_model

    cfg = experiment_config(spec["profile"], measured_methods()[0])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    b, n = spec["batch"], spec["batch"] * spec["batches"]
    features = random_data(n).features
    rows = np.arange(n)
    plain = predict_proba.__wrapped__  # the same function without its inference_mode

    def no_grad(*args):
        with torch.no_grad():
            return plain(*args)

    predict_proba(model, features, rows[:b], b)  # warm-up
    before = max_rss_mb()
    seconds: dict[str, list[float]] = {"inference_mode": [], "no_grad": []}
    for _ in range(spec["reps"]):  # alternating, best of reps
        for name, fn in (("inference_mode", predict_proba), ("no_grad", no_grad)):
            start = time.perf_counter()
            fn(model, features, rows, b)
            seconds[name].append(time.perf_counter() - start)
    return {"samples_per_s": {k: n / min(v) for k, v in seconds.items()}, "seconds": seconds,
            "rss_before_mb": before, "peak_mem_mb": max_rss_mb(),
            "threads": torch.get_num_threads()}


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {spec} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


# --- in-process measurements ---------------------------------------------------------------


def matmul_flops(n: int, dtype: torch.dtype, reps: int = 3) -> float:
    """FLOP/s of an (n × n) @ (n × n) matmul: 2n³ per product, best of `reps` after a warm-up."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def step_flops(profile: str, method: str, batch: int) -> float:
    """Model FLOPs of one training step (forward + backward) of `method`, counted by torch's
    FlopCounterMode while the method's own objective runs on the meta device (nothing is
    computed): the patch conv, every linear and the attention products of the sequences the
    method encodes (B for fine-tuning, 2B for Patch-Mix CL: clean + mixed), the projector and
    the loss's matmuls. Recomputation is not counted: neither inside the fused attention
    backward nor that of ``model.activations="lean"`` (the blocks are counted as ``"store"``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from patchmix.engine.train import Objective
    from patchmix.methods import METHODS, Net
    from patchmix.model.ast import AST

    cfg = experiment_config(profile, method)  # model FLOPs: no recomputation of any kind
    cfg = replace(cfg, model=replace(cfg.model, activations="store"))
    labels = np.arange(batch) % cfg.model.n_classes
    # built on the CPU, then moved: a method may compute a constant from the labels (weights)
    own = METHODS.get(method)(cfg, labels).to("meta")
    with torch.device("meta"):
        model = AST(cfg.model)
        objective = Objective(model, own, Net(model))
        x = torch.empty(batch, cfg.model.n_frames, cfg.model.n_mels)
        y = torch.tensor(labels)
    g = torch.Generator().manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        sum(objective(x, y, g).values()).backward()
    return float(counter.get_total_flops())


def attention_micro(batch: int, heads: int, tokens: int, dim: int, reps: int) -> dict[str, Any]:
    """Seconds of forward + backward of one attention product: fused SDPA vs manual softmax."""
    import torch.nn.functional as F

    def manual(q, k, v):
        return ((q * dim**-0.5) @ k.transpose(-2, -1)).softmax(-1) @ v

    out = {"shape": [batch, heads, tokens, dim]}
    for name, fn in (("fused_sdpa", F.scaled_dot_product_attention), ("manual", manual)):
        q, k, v = (torch.randn(batch, heads, tokens, dim, requires_grad=True) for _ in range(3))
        times = []
        for _ in range(reps + 1):
            start = time.perf_counter()
            fn(q, k, v).sum().backward()
            times.append(time.perf_counter() - start)
        out[f"{name}_s"] = min(times[1:])
    out["speedup"] = out["manual_s"] / out["fused_sdpa_s"]
    return out


def verify_fused_attention(profile: str, precision: str) -> dict[str, Any]:
    """Which attention kernels one training forward + backward of the library's model runs:
    counts of aten ops seen below autograd (batch 1). Fused in every block means one
    ``_scaled_dot_product_flash_attention_for_cpu`` forward and backward per block and no
    softmax (the manual path runs ``_softmax`` and two ``bmm`` per block instead)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from patchmix.model.backbone import build_model

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    cfg = experiment_config(profile, measured_methods()[0], precision)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    x = torch.randn(1, cfg.model.n_frames, cfg.model.n_mels)
    with Count() as count:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(x).sum()
        loss.backward()
    ops = count.ops
    flash = "aten._scaled_dot_product_flash_attention_for_cpu"
    out = {"blocks": len(model.blocks), "flash_forward": ops[flash],
           "flash_backward": ops[flash + "_backward"], "softmax": ops["aten._softmax"],
           "bmm": ops["aten.bmm"]}
    out["fused_in_every_block"] = (out["flash_forward"] == out["flash_backward"]
                                   == out["blocks"] and out["softmax"] == 0)
    return out


def feature_throughput(root: Path, cache: str) -> dict[str, Any]:
    """Cycles/s of `cycle_features` with an empty cache (cold: audio → fbank → memmap) and a
    filled one (warm: find the file and read every feature), plus the cost of one batch read."""
    from patchmix.data.dataset import recognise
    from patchmix.data.features import cycle_features

    cycles = recognise(root).read().reset_index(drop=True)
    n = len(cycles)
    start = time.perf_counter()
    cycle_features(cycles, cache_dir=cache, progress=False)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    array = cycle_features(cycles, cache_dir=cache, progress=False)
    total = float(np.asarray(array, dtype=np.float64).sum())  # touch every value
    warm = time.perf_counter() - start
    batch = np.sort(np.random.default_rng(0).choice(n, size=min(8, n), replace=False))
    reads = []
    for _ in range(20):
        start = time.perf_counter()
        torch.from_numpy(np.ascontiguousarray(array[batch]))
        reads.append(time.perf_counter() - start)
    return {"cold_cycles_per_s": n / cold, "warm_cycles_per_s": n / warm, "cycles": n,
            "recordings": int(cycles["recording"].nunique()), "cold_s": cold, "warm_s": warm,
            "data": str(root), "workers": os.cpu_count(), "checksum": total,
            "batch8_read_s": statistics.median(reads)}


def loss_curve(root: Path, cache: str, steps: int) -> dict[str, Any]:
    """The demo model's training loss over `steps` steps in fp32 and in bf16 autocast, from the
    same seed, on the same batches and augmentation draws (ICBHI-mini features when present)."""
    from patchmix.data.dataset import recognise
    from patchmix.data.features import cycle_features
    from patchmix.data.loading import Data
    from patchmix.engine.train import Run, _float_state

    folder = recognise(root)
    cycles = folder.read().reset_index(drop=True)
    features = np.array(cycle_features(cycles, cache_dir=cache, progress=False))  # warm
    data = Data(cycles, features, folder)
    method = measured_methods()[1]
    curves = {}
    for precision in ("fp32", "bf16"):
        cfg = experiment_config("demo", method, precision)
        run = Run(cfg, data, torch.device("cpu"))
        state = _float_state(run.modules) if cfg.train.ma_beta > 0 else []
        rows = data.rows("train")
        labels = torch.tensor(data.cycles["label"].to_numpy())
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(steps):
            batch = np.sort(rows[torch.randperm(len(rows), generator=g)[:cfg.train.batch_size]])
            x = torch.from_numpy(np.ascontiguousarray(data.features[batch]))
            losses.append(float(run.step(x, labels[batch], g, state)[0]))
        curves[precision] = losses
    diff = np.abs(np.array(curves["fp32"]) - np.array(curves["bf16"]))
    return {"profile": "demo", "method": method, "steps": steps,
            "data": data.root, **curves, "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean())}


def environment() -> dict[str, Any]:
    from patchmix.companion.plan import (
        machine,  # the CPU and library versions, as shipped runs record
    )

    known = machine()
    return {**{k: known[k] for k in ("torch", "python", "numpy", "platform")}, "device": "cpu",
            "cpu_model": known["cpu_model"], "cpu_count": known["cpu_count"],
            "threads": torch.get_num_threads(), "avx512_bf16": known["avx512_bf16"],
            "amx_bf16": known["amx_bf16"], "cuda_available": torch.cuda.is_available(),
            "load_avg_before": list(os.getloadavg())}


# --- the run -------------------------------------------------------------------------------


def data_root(arg: str | None) -> Path | None:
    """``--data``, else ``$ICBHI_ROOT``; None when neither is a folder of recordings (a small
    synthetic set is then made for the run)."""
    text = arg or os.environ.get("ICBHI_ROOT")
    if not text:
        return None
    root = Path(text)
    return root if (root / "ICBHI_final_database").is_dir() or any(root.glob("*.wav")) else None


def bench(quick: bool, out_dir: Path, data_arg: str | None, budget_s: float,
          threads: int) -> dict[str, Any]:
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    result: dict[str, Any] = {"schema": SCHEMA, "mode": "quick" if quick else "full",
                              "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                              "env": environment()}
    say = lambda text: print(f"[{time.perf_counter() - started:6.1f} s] {text}", flush=True)  # noqa: E731
    n = 1024 if quick else 4096
    fp32, bf16 = matmul_flops(n, torch.float32), matmul_flops(n, torch.bfloat16)
    result.update(matmul_flops_per_s=fp32, matmul_bf16_flops_per_s=bf16, matmul_n=n)
    say(f"matmul {n}²: fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s")

    root = data_root(data_arg)
    if root is None:
        from patchmix.data.synth import make_synthetic_icbhi

        synth = Path(tempfile.mkdtemp(prefix="bench-synth-"))
        make_synthetic_icbhi(synth, 10, seed=0, progress=False)
        root = synth
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        result["features"] = feature_throughput(root, cache)
        f = result["features"]
        say(f"features on {root}: cold {f['cold_cycles_per_s']:.1f} cycles/s, "
            f"warm {f['warm_cycles_per_s']:.0f} cycles/s")
        result["loss_curve"] = loss_curve(root, cache, 5 if quick else 20)
    say(f"loss curve fp32 vs bf16: max |Δ| {result['loss_curve']['max_abs_diff']:.4f}")
    if quick:
        result["attention"] = attention_micro(2, 2, 256, 32, 2)
    else:
        result["attention"] = attention_micro(8, 12, 950, 64, 2)  # AST-base, CL batch 4
    att = result["attention"]
    say(f"attention fwd+bwd {att['shape']}: fused {att['fused_sdpa_s']:.3f} s, "
        f"manual {att['manual_s']:.3f} s")

    geometry = "demo" if quick else "paper"
    result["fused_attention"] = {f"{geometry}/{p}": verify_fused_attention(geometry, p)
                                 for p in ("fp32", "bf16")}
    say("fused attention in every block: " + ", ".join(
        f"{k} {v['fused_in_every_block']}" for k, v in result["fused_attention"].items()))

    sections = {name: {} for name in ("train_step_s", "naive_train_step_s",
                                      "variant_train_step_s", "eval_samples_per_s",
                                      "eval_no_grad_samples_per_s", "flops_per_step",
                                      "achieved_flops_per_s", "efficiency")}
    peak: dict[str, dict[str, float]] = {"train": {}, "naive_train": {}, "variant_train": {},
                                         "eval": {}}
    result.update(sections, peak_mem_mb=peak, skipped=[], measurements=[])
    seconds_per_flop: list[float] = []  # of the AST-base fp32 fast steps, for budget estimates
    for job in plan(quick):
        k = key(job)
        if job["optional"] and seconds_per_flop:
            flops = step_flops(job["profile"], job["method"], job["batch"])
            estimate = statistics.median(seconds_per_flop) * flops * (job["warmup"] + job["steps"])
            if time.perf_counter() - started + estimate + 15 > budget_s:
                result["skipped"].append({**job, "estimated_s": estimate})
                say(f"skipped {job['variant']} {k}: ~{estimate:.0f} s would pass the budget")
                continue
        spec = {**job, "threads": threads}
        t0 = time.perf_counter()
        got = run_worker(spec, timeout=max(budget_s, 600))
        result["measurements"].append({**job, **got, "wall_s": time.perf_counter() - t0})
        if job["kind"] == "eval":
            sections["eval_samples_per_s"][k] = got["samples_per_s"]["inference_mode"]
            sections["eval_no_grad_samples_per_s"][k] = got["samples_per_s"]["no_grad"]
            peak["eval"][k] = got["peak_mem_mb"]
            say(f"eval {k}: {got['samples_per_s']['inference_mode']:.1f} samples/s "
                f"(no_grad {got['samples_per_s']['no_grad']:.1f}), "
                f"peak {got['peak_mem_mb']:.0f} MB")
            continue
        label = k if job["precision"] == "fp32" else f"{k}/{job['precision']}"
        if job["variant"] == "fast":
            section, mem = "train_step_s", "train"
        elif job["variant"] == "naive":
            section, mem = "naive_train_step_s", "naive_train"
        else:
            section, mem, label = "variant_train_step_s", "variant_train", f"{k}/{job['variant']}"
        sections[section][label] = got["step_s"]
        peak[mem][label] = got["peak_mem_mb"]
        if job["variant"] == "fast":
            flops = step_flops(job["profile"], job["method"], job["batch"])
            sections["flops_per_step"][label] = flops
            sections["achieved_flops_per_s"][label] = flops / got["step_s"]
            sections["efficiency"][label] = flops / got["step_s"] / (
                bf16 if job["precision"] == "bf16" else fp32)
            if job["profile"] == "paper" and job["precision"] == "fp32":
                seconds_per_flop.append(got["step_s"] / flops)
        say(f"{job['variant']:>12} {label}: {got['step_s']:.3f} s/step, "
            f"peak {got['peak_mem_mb']:.0f} MB")

    result["speedup_vs_naive"] = {
        k: result["naive_train_step_s"][k] / v for k, v in result["train_step_s"].items()
        if k in result["naive_train_step_s"]}
    steps = result["train_step_s"]
    result["bf16_speedup"] = {k.removesuffix("/bf16"): steps[k.removesuffix("/bf16")] / v
                              for k, v in steps.items()
                              if k.endswith("/bf16") and k.removesuffix("/bf16") in steps}
    result["env"]["load_avg_after"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - started
    path = write(result, out_dir)
    say(f"wrote {path} and latest.json")
    return result


def write(result: dict[str, Any], out_dir: Path) -> Path:
    """``<out_dir>/<timestamp>.json`` (``-quick`` for quick runs) and ``latest.json``."""
    from patchmix.atomic import write_json_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    name = result["timestamp"].replace(":", "") + ("-quick" if result["mode"] == "quick" else "")
    write_json_atomic(out_dir / f"{name}.json", result)
    write_json_atomic(out_dir / "latest.json", result)
    return out_dir / f"{name}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo model only, tiny counts (CI)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    parser.add_argument("--data", help="ICBHI-layout folder for the feature throughput "
                                       "(default $ICBHI_ROOT, else a small synthetic set)")
    parser.add_argument("--budget", type=float, default=840.0,
                        help="seconds; optional measurements that would pass it are skipped")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_TAG + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    bench(args.quick, Path(args.out), args.data, args.budget, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
