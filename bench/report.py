"""Markdown tables of a benchmark result: ``python bench/report.py [bench/results/latest.json]``.

What `bench/README.md`'s tables are pasted from, so that every number there comes from one JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _gib(mb: float | None) -> str:
    return "–" if mb is None else f"{mb / 1024:.2f}"


def _s(x: float | None) -> str:
    return "–" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def report(r: dict[str, Any]) -> str:
    env, out = r["env"], []
    out.append(f"Run {r['timestamp']} ({r['mode']}), {env['cpu_model']}, {env['cpu_count']} CPUs, "
               f"{env['threads']} torch threads, torch {env['torch']}, wall {r['wall_s']:.0f} s; "
               f"load average before {env['load_avg_before'][0]:.2f}, after "
               f"{env['load_avg_after'][0]:.2f} (1 min).")
    mm = r["matmul_flops_per_s"]
    out.append(f"Dense matmul {r['matmul_n']}²: fp32 {mm / 1e9:.0f} GFLOP/s, bf16 "
               f"{r['matmul_bf16_flops_per_s'] / 1e9:.0f} GFLOP/s.")
    steps, peak = r["train_step_s"], r["peak_mem_mb"]
    rows = []
    for k, v in steps.items():
        rows.append([k, _s(v), _gib(peak["train"].get(k)),
                     f"{r['flops_per_step'][k] / 1e9:.0f}",
                     f"{r['achieved_flops_per_s'][k] / 1e9:.1f}", f"{r['efficiency'][k]:.2f}",
                     _s(r["naive_train_step_s"].get(k)),
                     f"{r['speedup_vs_naive'][k]:.2f}×" if k in r["speedup_vs_naive"] else "–"])
    out.append(_table(["step (profile/method/batch[/precision])", "s/step", "peak GiB",
                       "GFLOP/step", "GFLOP/s", "efficiency", "naive s/step", "speed-up"], rows))
    rows = [[k, _s(v), _gib(peak["variant_train"].get(k))]
            for k, v in r["variant_train_step_s"].items()]
    if rows:
        out.append(_table(["variant", "s/step", "peak GiB"], rows))
    rows = [[k, f"{v:.1f}", f"{r['eval_no_grad_samples_per_s'][k]:.1f}",
             _gib(peak["eval"].get(k))] for k, v in r["eval_samples_per_s"].items()]
    out.append(_table(["eval profile/batch", "inference_mode samples/s", "no_grad samples/s",
                       "peak GiB"], rows))
    for k, v in r["fused_attention"].items():
        out.append(f"Kernels of one forward + backward, {k}: {v['flash_forward']} fused SDPA "
                   f"forwards and {v['flash_backward']} backwards for {v['blocks']} blocks, "
                   f"{v['softmax']} softmax, {v['bmm']} bmm → fused in every block: "
                   f"{v['fused_in_every_block']}.")
    a = r["attention"]
    out.append(f"Attention forward + backward {a['shape']}: fused SDPA {a['fused_sdpa_s']:.3f} s, "
               f"manual {a['manual_s']:.3f} s ({a['speedup']:.2f}×).")
    f = r["features"]
    out.append(f"Features ({f['cycles']} cycles of {f['recordings']} recordings, {f['data']}): "
               f"cold {f['cold_cycles_per_s']:.1f} cycles/s ({f['cold_s']:.2f} s), warm "
               f"{f['warm_cycles_per_s']:.0f} cycles/s; one batch of 8 from the memmap "
               f"{f['batch8_read_s'] * 1e3:.2f} ms.")
    c = r["loss_curve"]
    rows = [[i + 1, f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"]
            for i, (a, b) in enumerate(zip(c["fp32"], c["bf16"], strict=True))]
    out.append(_table(["step", "fp32 loss", "bf16 loss", "bf16 − fp32"], rows))
    if r.get("skipped"):
        out.append("Skipped (budget): " + ", ".join(
            f"{j['variant']} {j['profile']}/{j['method']}/{j['batch']}" for j in r["skipped"]))
    return "\n\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else RESULTS / "latest.json"
    print(report(json.loads(path.read_text())), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
