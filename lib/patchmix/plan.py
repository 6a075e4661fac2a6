"""The runs a profile's notebooks need, as commands: trained here or on a cluster, compared.

The notebooks train what they need when they first ask (`patchmix.notebooks.Notebook.runs`),
one run after another. `jobs` lists the same runs up front: for each notebook, its run groups
(`patchmix.experiment.NOTEBOOK_RUNS`) for its default seeds (read from its parameters cell), one
job per distinct configuration. Each job is a ``patchmix train`` command line whose overrides
rebuild exactly that configuration, so it lands in the run cache under the key the notebook
will look for, whoever runs it: `run_local` on this machine, or any scheduler.

``patchmix plan --profile demo`` prints the commands; ``--run --workers N`` trains them here
(`run_local`); ``--submit FOLDER`` sends them to SLURM through submitit (`submit`;
``--cluster local`` runs the same jobs as local processes, the route the tests take);
``--compare RUNS`` checks each run against the same run in another run cache (`compare`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchmix.config import ExperimentConfig, notebook_config, overrides_between, profile
from patchmix.experiment import NOTEBOOK_RUNS, finished, planned_runs, run_key
from patchmix.report import NOTEBOOKS, project_root


@dataclass(frozen=True)
class Job:
    """One run to train: its configuration (seed included) and who needs it."""

    label: str  # how the notebooks name the run's method or variant
    cfg: ExperimentConfig
    notebooks: tuple[str, ...]  # the notebooks that read it

    def argv(self) -> list[str]:
        """``patchmix train`` arguments that rebuild `cfg` from its profile."""
        return ["train", "--profile", self.cfg.profile, "--quiet",
                *overrides_between(profile(self.cfg.profile), self.cfg)]

    def process(self) -> list[str]:
        """The command a worker runs: `argv` under this interpreter."""
        return [sys.executable, "-m", "patchmix", *self.argv()]

    def command(self) -> str:
        """The job as a shell command line."""
        return shlex.join(["patchmix", *self.argv()])


def notebook_seeds(name: str, notebook_dir: Path | None = None) -> dict[str, int]:
    """``SEEDS`` and ``ABLATION_SEEDS`` as the notebook's parameters cell sets them (1 where a
    notebook has no such parameter): the seeds a plain run of it trains."""
    import papermill  # noqa: PLC0415 - the notebooks extra, which make setup installs

    path = (notebook_dir or project_root() / "notebooks") / f"{name}.ipynb"
    declared = papermill.inspect_notebook(str(path))
    return {p: int(declared[p]["default"]) if p in declared else 1
            for p in ("SEEDS", "ABLATION_SEEDS")}


def jobs(profile_name: str, *, data_root: str = "", weights: str = "", overrides: str = "",
         seeds: int = 0, notebooks: Sequence[str] = NOTEBOOKS) -> list[Job]:
    """Every distinct run the `notebooks` need in `profile_name`, in the order they ask.

    `seeds` > 0 replaces each notebook's ``SEEDS`` (its ``ABLATION_SEEDS`` stay), as
    ``make reproduce SEEDS=…`` does.
    """
    unknown = sorted(set(notebooks) - set(NOTEBOOKS))
    if unknown:
        raise ValueError(f"unknown notebook(s) {', '.join(unknown)}")
    cfg = notebook_config(profile_name, data_root=data_root, weights=weights,
                          overrides=overrides)
    found: dict[ExperimentConfig, Job] = {}  # a run two notebooks need is one job
    for name in notebooks:
        counts = notebook_seeds(name)
        # the seed lists of `patchmix.notebooks.Notebook.runs`, by `PlannedRun.seeds`
        seed_lists = {"seeds": range(1, (seeds or counts["SEEDS"]) + 1),
                      "ablation_seeds": range(1, counts["ABLATION_SEEDS"] + 1)}
        for planned in planned_runs(NOTEBOOK_RUNS[name], cfg):
            for seed in seed_lists[planned.seeds]:
                run_cfg = dataclasses.replace(planned.cfg, seed=seed)
                earlier = found[run_cfg].notebooks if run_cfg in found else ()
                found[run_cfg] = Job(planned.label, run_cfg, (*earlier, name))
    return list(found.values())


def pending(plan: Iterable[Job], runs: Path, data: Any) -> list[Job]:
    """The jobs of `plan` whose run is not finished in the run cache `runs`."""
    return [j for j in plan if finished(runs / run_key(j.cfg, data)) is None]


def run_local(plan: Sequence[Job], *, workers: int, threads: int | None = None,
              log_dir: Path | None = None) -> list[tuple[Job, int]]:
    """Train `plan` with up to `workers` ``patchmix train`` processes at once.

    Each process gets `threads` intra-op threads (default: the CPU count ÷ `workers`, at least
    1) through ``OMP_NUM_THREADS``; its output goes to ``log_dir/<n>.log``. Returns the jobs
    that failed, with their exit status. A line is printed when each job ends.

    The thread count is not part of a run's cache key, yet CPU kernels split their sums by
    thread, so a run trained with other threads than a plain ``patchmix train`` on the same
    machine differs from it in the last bits (unless the profile pins ``train.threads``).
    """
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_dir = log_dir or project_root() / "out" / "plan"
    log_dir.mkdir(parents=True, exist_ok=True)
    failed: list[tuple[Job, int]] = []
    done = 0
    start = time.perf_counter()

    def train(n: int, job: Job) -> tuple[int, float]:
        began = time.perf_counter()
        with open(log_dir / f"{n:03d}.log", "w", encoding="utf-8") as log:
            log.write(job.command() + "\n")
            log.flush()
            code = subprocess.call(job.process(), env=env,
                                   cwd=project_root(), stdout=log, stderr=subprocess.STDOUT)
        return code, time.perf_counter() - began

    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait on processes
        futures = {pool.submit(train, n, job): job for n, job in enumerate(plan, 1)}
        for future in as_completed(futures):
            job, (code, seconds) = futures[future], future.result()
            done += 1
            state = "ok" if code == 0 else f"FAILED (exit {code}, log in {log_dir})"
            print(f"[{done}/{len(plan)}] {job.label} seed {job.cfg.seed}: {state} in "
                  f"{seconds:.0f} s ({time.perf_counter() - start:.0f} s so far)", flush=True)
            if code:
                failed.append((job, code))
    return failed


def submit(plan: Sequence[Job], folder: str | os.PathLike, *, cluster: str | None = None,
           parameters: dict[str, Any] | None = None) -> list[Any]:
    """Submit each job of `plan` as one submitit job; return the submitit jobs.

    `cluster` is submitit's: ``"slurm"``, ``"local"`` (processes on this machine) or None
    (SLURM where ``sbatch`` exists, else local). `parameters` go to
    ``executor.update_parameters`` (``timeout_min``, ``gpus_per_node``, ``slurm_partition``,
    ``cpus_per_task``, …). Each job runs the job's ``patchmix train`` command with this
    interpreter in the repository root, so it lands in the run cache the notebooks read
    (``$PATCHMIX_RUNS`` or ``runs/`` there, which must be on a shared file system for SLURM).
    Logs go to `folder`.
    """
    import submitit  # noqa: PLC0415 - optional (the cluster extra)
    from submitit.helpers import CommandFunction  # noqa: PLC0415

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(name="patchmix", **(parameters or {}))
    commands = [CommandFunction(job.process(), cwd=str(project_root()), verbose=False)
                for job in plan]
    with executor.batch():  # one array job on SLURM
        submitted = [executor.submit(command) for command in commands]
    return submitted


def _epochs(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def compare(plan: Sequence[Job], expected: Path, actual: Path, data: Any) -> list[dict[str, Any]]:
    """Each job's run in the run cache `actual` against the same run in `expected`.

    One row per job: ``label``, ``seed``, ``run`` (its key), ``status`` (``same`` when every
    epoch's metrics are equal to the last bit, ``differs``, or ``missing`` when either cache
    lacks the finished run), ``first_epoch`` that differs (text, empty when none), and
    ``last_score_diff``, the change of the last-epoch test Score (actual − expected, points;
    NaN when missing).
    """
    rows = []
    for job in plan:
        key = run_key(job.cfg, data)
        row: dict[str, Any] = {"label": job.label, "seed": job.cfg.seed, "run": key,
                               "status": "missing", "first_epoch": "",
                               "last_score_diff": float("nan")}
        if finished(expected / key) is not None and finished(actual / key) is not None:
            old, new = _epochs(expected / key), _epochs(actual / key)
            differing = [n for n, (a, b) in enumerate(zip(old, new, strict=False), 1) if a != b]
            if len(old) != len(new) and not differing:
                differing = [min(len(old), len(new)) + 1]
            row["status"] = "differs" if differing else "same"
            row["first_epoch"] = str(differing[0]) if differing else ""
            row["last_score_diff"] = new[-1]["test_score"] - old[-1]["test_score"]
        rows.append(row)
    return rows
