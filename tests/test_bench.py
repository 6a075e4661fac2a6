"""The benchmark harness runs (``--quick``) and writes the JSON it promises; no time is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _numbers(section: dict) -> list[float]:
    return [v for v in section.values() if isinstance(v, float)]


@pytest.mark.slow
def test_quick_bench_writes_the_result_json(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and "latest.json" in files and files[0].endswith("Z-quick.json")
    result = json.loads((tmp_path / "latest.json").read_text())
    assert result == json.loads((tmp_path / files[0]).read_text())

    assert result["mode"] == "quick"
    env = result["env"]
    for k in ("torch", "python", "threads", "device", "cpu_model", "load_avg_before",
              "load_avg_after"):
        assert k in env
    assert isinstance(env["threads"], int) and env["device"] == "cpu"
    feats = result["features"]
    assert feats["cold_cycles_per_s"] > 0 and feats["warm_cycles_per_s"] > 0
    assert feats["cycles"] > 0
    expected = {f"demo/{m}/{b}" for m in ("ce", "patchmix_cl") for b in (8, 2)}
    assert expected <= set(result["train_step_s"])
    assert expected <= set(result["naive_train_step_s"])
    assert "demo/patchmix_cl/8/bf16" in result["train_step_s"]
    for section in ("train_step_s", "naive_train_step_s", "efficiency", "flops_per_step",
                    "achieved_flops_per_s", "eval_samples_per_s", "speedup_vs_naive"):
        values = list(result[section].values())
        assert values and all(isinstance(v, float) and math.isfinite(v) and v > 0
                              for v in values), section
    assert set(result["efficiency"]) == set(result["train_step_s"])
    assert "demo/64" in result["eval_samples_per_s"]
    assert isinstance(result["matmul_flops_per_s"], float) and result["matmul_flops_per_s"] > 0
    peak = result["peak_mem_mb"]
    assert set(peak["train"]) == set(result["train_step_s"]) and "demo/64" in peak["eval"]
    assert all(v > 0 for part in peak.values() for v in _numbers(part))
    for precision in ("fp32", "bf16"):  # verified from the kernels that ran, not assumed
        assert result["fused_attention"][f"demo/{precision}"]["fused_in_every_block"] is True
    curve = result["loss_curve"]
    assert len(curve["fp32"]) == len(curve["bf16"]) == curve["steps"]
    assert all(math.isfinite(v) for v in curve["fp32"] + curve["bf16"])
    # the naive step computes the same loss as the fast one (same draws, same data)
    for m in result["measurements"]:
        if m["kind"] == "train" and m["variant"] == "naive":
            fast = next(f for f in result["measurements"] if f["kind"] == "train"
                        and f["variant"] == "fast" and f["precision"] == "fp32"
                        and (f["method"], f["batch"]) == (m["method"], m["batch"]))
            assert m["losses"] == pytest.approx(fast["losses"], rel=1e-3)


def _worker(spec: dict) -> dict:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--worker",
                           json.dumps(spec)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")][-1]
    return json.loads(line.removeprefix("BENCH_RESULT "))


@pytest.mark.slow
def test_activation_variants_train_exactly_like_the_fast_step():
    # "lean" (the paper geometry's default), "store" and "checkpoint" keep different tensors
    # for backward and must not change a single number of training
    spec = {"kind": "train", "profile": "demo", "method": "patchmix_cl", "batch": 4,
            "precision": "fp32", "steps": 3, "warmup": 0, "threads": 1}
    losses = {variant: _worker({**spec, "variant": variant})["losses"]
              for variant in ("store", "checkpoint")}
    losses["lean"] = _worker({**spec, "variant": "fast",
                              "overrides": ["model.activations=lean"]})["losses"]
    assert len(losses["store"]) == 3 and len(set(losses["store"])) == 3  # training moved
    assert losses["lean"] == losses["store"] == losses["checkpoint"]


@pytest.mark.slow
def test_the_paper_route_estimate_prices_every_planned_run():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "estimate.py"), "--seeds", "1",
                           "--tflops", "100"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, hours = done.stdout.splitlines()[:2]
    # one seed: 6 baselines (CE twice: with and without SpecAugment), Patch-Mix CL's base and
    # its six ablation settings
    assert "13 runs (" in first and "7 patchmix_cl" in first and "2 ce" in first
    flops = float(first.split("runs (")[1].split("), ")[1].split(" ×")[0]) * 1e18
    # 50 epochs × 517 steps × ≈ 4.7 TFLOP (fine-tuning) per step, at least, for 6 runs
    assert flops > 6 * 50 * 517 * 4.6e12
    assert float(hours.split(": ")[1].split()[0]) == pytest.approx(flops / 1e14 / 3600, rel=0.01)
