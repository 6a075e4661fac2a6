"""The runs committed in shipped/: a fresh clone's data finds every run its notebooks need."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from patchmix.companion.plan import SHIPPED_FILES, jobs
from patchmix.data.loading import load_cycles
from patchmix.engine.experiment import SHIPPED, run_key
from patchmix.engine.integrity import PROVENANCE
from patchmix.engine.train import finished

REPO = Path(__file__).resolve().parents[1]
SHIPPED_DIR = REPO / SHIPPED


@pytest.fixture(scope="module")
def fresh_demo_data(tmp_path_factory):
    """The demo's synthetic set as `make data` builds it in a new clone: new files, new
    mtimes, another folder."""
    from patchmix.data.synth import make_synthetic_icbhi

    root = tmp_path_factory.mktemp("fresh") / "synthetic"
    make_synthetic_icbhi(root, 100, seed=0, progress=False)  # the Makefile's RECORDINGS, SEED
    return root


def test_every_demo_run_is_shipped_under_the_key_a_fresh_clone_computes(fresh_demo_data):
    plan = jobs("demo")  # the notebooks' own configs (data.root "": data/synthetic)
    data = load_cycles(dataclasses.replace(plan[0].cfg.data, root=str(fresh_demo_data)))
    made = json.loads((SHIPPED_DIR / PROVENANCE).read_text())
    assert made["data_identity"] == data.identity()
    assert made["profile"] == "demo" and made["machine"]["cpu_model"]
    keys = [run_key(job.cfg, data) for job in plan]
    assert [r["run"] for r in made["runs"]] == keys
    for job, key in zip(plan, keys, strict=True):
        run = SHIPPED_DIR / key
        assert finished(run, weights=False) is not None, job.command()
        assert (run / "final.pt").is_file() == job.weights  # weights only where opened
        assert all(list(run.glob(pattern)) for pattern in SHIPPED_FILES)
    shipped = {p.name for p in SHIPPED_DIR.iterdir() if p.is_dir()}
    assert shipped == set(keys)  # nothing stale beside them


def test_shipped_runs_stay_small():
    size = sum(p.stat().st_size for p in SHIPPED_DIR.rglob("*") if p.is_file())
    assert size < 8 * 2**20, f"shipped/ is {size / 2**20:.1f} MiB"
