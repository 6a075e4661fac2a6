"""How long the `paper` route takes on a GPU, estimated from counted FLOPs (``make estimate``).

Every run the notebooks plan for ``--profile paper``
(`patchmix.companion.notebook_runs.NOTEBOOK_RUNS`) is priced in model FLOPs with the benchmark's own
counter (`bench.run.step_flops`, torch's FlopCounterMode on the meta device: nothing is computed):
its training steps per epoch on the official ICBHI train split, plus one forward pass over the test
split (and the validation split, if any) after every epoch. Dividing by a *sustained* FLOP/s gives
hours. The sustained rate is an assumption, not a measurement: GPUs reach a fraction of their
data-sheet peak (30–50 % is common for a ViT-base in bf16), so the result is an estimate until the
route is timed.

    python bench/estimate.py [--seeds 5] [--ablation-seeds 1] [--tflops 100 200 400]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import experiment_config, step_flops  # noqa: E402 - the benchmark's own counter

from patchmix.companion.notebook_runs import NOTEBOOK_RUNS, planned_runs  # noqa: E402
from patchmix.config import profile  # noqa: E402
from patchmix.model.ast import AST  # noqa: E402

# The official ICBHI 2017 split (docs/data.md): training and test cycles.
ICBHI_TRAIN_CYCLES, ICBHI_TEST_CYCLES = 4142, 2756


def forward_flops(profile_name: str, batch: int) -> float:
    """Model FLOPs of one evaluation forward pass of `batch` cycles (no backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = experiment_config(profile_name, "ce")
    with torch.device("meta"):
        model = AST(cfg.model)
        x = torch.empty(batch, cfg.model.n_frames, cfg.model.n_mels)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def route_flops(seeds: int, ablation_seeds: int) -> tuple[float, Counter, dict[str, float]]:
    """Total model FLOPs of every distinct run of the paper route, the runs per method, and
    the FLOPs of one run of each method."""
    base = profile("paper")
    runs = {}
    for groups in NOTEBOOK_RUNS.values():
        for planned in planned_runs(groups, base):
            n = seeds if planned.seeds == "seeds" else ablation_seeds
            for seed in range(1, n + 1):  # the run cache trains each config × seed once
                cfg = planned.cfg
                runs[(repr(cfg), seed)] = cfg
    batch = base.train.batch_size
    val = round(ICBHI_TRAIN_CYCLES * base.data.val_fraction)
    steps = (ICBHI_TRAIN_CYCLES - val) // batch  # drop_last
    evaluated = ICBHI_TEST_CYCLES + val
    eval_per_epoch = forward_flops("paper", 1) * evaluated
    per_step = {name: step_flops("paper", name, batch)
                for name in {cfg.method.name for cfg in runs.values()}}
    one = {cfg.method.name: cfg.train.epochs * (steps * per_step[cfg.method.name]
                                                 + eval_per_epoch) for cfg in runs.values()}
    total = sum(one[cfg.method.name] for cfg in runs.values())
    return total, Counter(cfg.method.name for cfg in runs.values()), one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ablation-seeds", type=int, default=1)
    parser.add_argument("--tflops", type=float, nargs="+", default=[100.0, 200.0, 400.0],
                        help="sustained TFLOP/s to price the route at")
    args = parser.parse_args(argv)
    total, methods, one = route_flops(args.seeds, args.ablation_seeds)
    print(f"paper route, {args.seeds} seeds ({args.ablation_seeds} per ablation setting): "
          f"{sum(methods.values())} runs ({', '.join(f'{n} {m}' for m, n in methods.items())}),"
          f" {total / 1e18:.2f} × 10^18 model FLOPs")
    for tflops in args.tflops:
        print(f"  at {tflops:g} TFLOP/s sustained: {total / (tflops * 1e12) / 3600:.1f} GPU-hours")
    print(f"one run at {args.tflops[0]:g} TFLOP/s: " + ", ".join(
        f"{m} {f / (args.tflops[0] * 1e12) / 3600:.2f} h" for m, f in one.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
