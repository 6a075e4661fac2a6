"""Data-parallel training: 2 CPU processes (torchrun, gloo) give the metrics of 1 process.

The split of a step (`patchmix.model.distributed`) makes the 2-process loss, gradient and evaluation
those of one process up to floating-point summation order (gradients are summed over two
half-batches instead of one batch; torchrun's workers also run 1 intra-op thread each). So the
per-epoch losses are compared to a relative 1e-4 — a wrong split (the contrastive softmax or
the projector's BatchNorm over half the batch, unscaled gradients, shuffled rows) moves them by
percents — and the test-set predictions to 1e-4, which leaves the Sp/Se/Score of every epoch
and protocol equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from patchmix.config import profile, with_overrides
from patchmix.data.loading import load_data
from patchmix.data.synth import make_synthetic_icbhi
from patchmix.engine.train import fit
from patchmix.model import distributed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_icbhi(root, 12, seed=0)
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("PATCHMIX_CACHE", str(cache))
    cfg = with_overrides(profile("smoke"), [f"data.root={root}"])
    data = load_data(cfg.data, progress=False)  # fills the cache the workers will read
    yield root, cache, cfg, data
    mp.undo()


def _torchrun(root, cache, out, overrides: list[str]) -> None:
    env = {**os.environ, "PATCHMIX_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    for var in distributed.ENV_VARS + ("MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "patchmix", "train", "--profile", "smoke", "--data", str(root), "--out",
           str(out), "--quiet", *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if "Warning" not in line]
    assert done.returncode == 0, "\n".join(errors[:60])
    assert done.stdout.count("smoke/") == 1, done.stdout  # only rank 0 prints


@pytest.mark.parametrize("overrides", [
    ["method.name=ce"],  # fine-tuning with ma_update (smoke: ma_beta 0.5)
    ["method.name=patchmix_cl", "method.spec_augment=true"],  # batch-level loss, BatchNorm
], ids=["ce", "patchmix_cl"])
def test_two_processes_give_the_metrics_of_one(tiny, tmp_path, overrides):
    root, cache, cfg, data = tiny
    cfg = with_overrides(cfg, overrides)
    one = fit(cfg, data, tmp_path / "one", progress=False)
    _torchrun(root, cache, tmp_path / "two", overrides)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())

    assert two["processes"] == 2 and two["finished"]
    assert two["protocols"] == one["protocols"]  # Sp, Se, Score, recalls, confusion, epochs
    hist = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text()
             .splitlines()] for d in ("one", "two")]
    assert len(hist[0]) == len(hist[1]) == cfg.train.epochs
    for a, b in zip(*hist, strict=True):
        losses = [k for k in a if k == "train_loss" or k.startswith("loss_")]
        assert {k: b[k] for k in losses} == pytest.approx({k: a[k] for k in losses}, rel=1e-4)
        assert {k: v for k, v in a.items() if k not in losses} == {
            k: v for k, v in b.items() if k not in losses}
    pa, pb = (pd.read_csv(tmp_path / d / "predictions-last.csv") for d in ("one", "two"))
    assert pa[["recording", "cycle", "label", "pred"]].equals(
        pb[["recording", "cycle", "label", "pred"]])  # every test cycle once, in row order
    probs = [c for c in pa.columns if c.startswith("p_")]
    np.testing.assert_allclose(pb[probs].to_numpy(), pa[probs].to_numpy(), atol=1e-4)
    # only rank 0 wrote, and everything a one-process run writes is there
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


def test_shards_cover_the_batch_in_order():
    assert distributed.bounds(8, 2) == [(0, 4), (4, 8)]
    assert distributed.bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    single = distributed.Dist()
    x = torch.arange(6.0)
    assert single.shard(x) is x and single.gather(x, 6) is x  # one process: identities
    with pytest.raises(ValueError, match="cannot be shared by 4 processes"):
        distributed.Dist(rank=0, world_size=4).span(3)
