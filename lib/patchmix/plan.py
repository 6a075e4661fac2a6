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
``--compare RUNS`` checks each run against the same run in another run cache (`compare`);
``--export DIR`` writes the finished runs in the compact form committed as ``shipped/``, with
their provenance (`export`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchmix.atomic import write_json_atomic
from patchmix.config import ExperimentConfig, notebook_config, overrides_between, profile
from patchmix.experiment import (
    NOTEBOOK_RUNS,
    PROVENANCE,
    WEIGHTS_READ,
    finished,
    notebook_roots,
    planned_runs,
    run_key,
)
from patchmix.report import NOTEBOOKS, project_root


@dataclass(frozen=True)
class Job:
    """One run to train: its configuration (seed included) and who needs it."""

    label: str  # how the notebooks name the run's method or variant
    cfg: ExperimentConfig
    notebooks: tuple[str, ...]  # the notebooks that read it
    weights: bool = False  # whether one of them opens its checkpoint (`WEIGHTS_READ`)

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
         seeds: int = 0, notebooks: Sequence[str] = NOTEBOOKS,
         data_roots: dict[str, str] | None = None) -> list[Job]:
    """Every distinct run the `notebooks` need in `profile_name`, in the order they ask.

    `seeds` > 0 replaces each notebook's ``SEEDS`` (its ``ABLATION_SEEDS`` stay), as
    ``make reproduce SEEDS=…`` does. A notebook on a data set of its own (`NOTEBOOK_DATA`)
    trains on that set's folder (`data_roots` by data set name, else its environment
    variable: `patchmix.experiment.notebook_roots`) and is left out without one.
    """
    unknown = sorted(set(notebooks) - set(NOTEBOOKS))
    if unknown:
        raise ValueError(f"unknown notebook(s) {', '.join(unknown)}")
    own_roots = notebook_roots(data_roots)
    shared = notebook_config(profile_name, data_root=data_root, weights=weights,
                             overrides=overrides)
    found: dict[ExperimentConfig, Job] = {}  # a run two notebooks need is one job
    for name in notebooks:
        if name in own_roots and not own_roots[name]:
            continue
        cfg = shared if name not in own_roots else notebook_config(
            profile_name, data_root=own_roots[name], weights=weights, overrides=overrides)
        counts = notebook_seeds(name)
        # the seed lists of `patchmix.notebooks.Notebook.runs`, by `PlannedRun.seeds`
        seed_lists = {"seeds": range(1, (seeds or counts["SEEDS"]) + 1),
                      "ablation_seeds": range(1, counts["ABLATION_SEEDS"] + 1)}
        for group in NOTEBOOK_RUNS[name]:
            for planned in planned_runs((group,), cfg):
                for seed in seed_lists[planned.seeds]:
                    run_cfg = dataclasses.replace(planned.cfg, seed=seed)
                    earlier = found.get(run_cfg)
                    notebooks = earlier.notebooks if earlier else ()
                    found[run_cfg] = Job(
                        earlier.label if earlier else planned.label, run_cfg,
                        notebooks if name in notebooks else (*notebooks, name),
                        bool(earlier and earlier.weights) or group in WEIGHTS_READ)
    return list(found.values())


def data_of(data: Any, job: Job) -> Any:
    """The `patchmix.datasets.Data` a job's run key is made with: `data` itself, or, where
    the plan spans data sets, `data` called with the job's data config (a cached loader)."""
    return data(job.cfg.data) if callable(data) else data


def pending(plan: Iterable[Job], runs: Path, data: Any) -> list[Job]:
    """The jobs of `plan` whose run is not finished in the run cache `runs` (`data` as
    `data_of` takes it)."""
    return [j for j in plan if finished(runs / run_key(j.cfg, data_of(data, j))) is None]


def run_local(plan: Sequence[Job], *, workers: int = 0, threads: int = 0,
              log_dir: Path | None = None) -> list[tuple[Job, int]]:
    """Train `plan` with up to `workers` ``patchmix train`` processes at once.

    Each process gets `threads` intra-op threads through ``OMP_NUM_THREADS``: the profile's
    ``train.threads`` where it pins them (``demo``: 2), else `threads`, else the CPU count ÷
    `workers`. `workers` 0 means the CPU count ÷ threads (at least 1): one two-thread demo
    run on a 2-core laptop, eight at once on 16 cores. Each process's output goes to
    ``log_dir/<n>.log``. Returns the jobs that failed, with their exit status. A line is
    printed when each job ends.

    CPU kernels split their sums by thread, so a run trained with another thread count than
    the one it was first trained with differs in the last bits; the thread count is part of
    a run's key only where the profile pins it.
    """
    cores = os.cpu_count() or 1
    pinned = {job.cfg.train.threads for job in plan} - {0}
    if len(pinned) > 1 or (pinned and threads and threads not in pinned):
        raise ValueError(f"the runs pin train.threads={', '.join(map(str, sorted(pinned)))}; "
                         "leave --threads out (or override train.threads)")
    threads = max(pinned) if pinned else threads or max(1, cores // (workers or 1))
    workers = workers or max(1, cores // threads)
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
    epoch's metrics and every prediction file `expected` has are equal to the last bit,
    ``differs``, or ``missing`` when either cache lacks the finished run), ``first_epoch``
    that differs (text: ``predictions`` when only they do; empty when none), and
    ``last_score_diff``, the change of the last-epoch test Score (actual − expected, points;
    NaN when missing). Either side may be shipped runs (`export`), which keep no weights.
    """
    rows = []
    for job in plan:
        key = run_key(job.cfg, data_of(data, job))
        row: dict[str, Any] = {"label": job.label, "seed": job.cfg.seed, "run": key,
                               "status": "missing", "first_epoch": "",
                               "last_score_diff": float("nan")}
        if (finished(expected / key, weights=False) is not None
                and finished(actual / key, weights=False) is not None):
            old, new = _epochs(expected / key), _epochs(actual / key)
            differing: list[int | str] = [
                n for n, (a, b) in enumerate(zip(old, new, strict=False), 1) if a != b]
            if len(old) != len(new) and not differing:
                differing = [min(len(old), len(new)) + 1]
            if not differing and any(
                    not (actual / key / p.name).is_file()
                    or p.read_bytes() != (actual / key / p.name).read_bytes()
                    for p in sorted((expected / key).glob("predictions-*.csv"))):
                differing = ["predictions"]
            row["status"] = "differs" if differing else "same"
            row["first_epoch"] = str(differing[0]) if differing else ""
            row["last_score_diff"] = new[-1]["test_score"] - old[-1]["test_score"]
        rows.append(row)
    return rows


# --- shipped runs --------------------------------------------------------------------------

SHIPPED_FILES: tuple[str, ...] = ("config.json", "metrics.jsonl", "predictions-*.csv",
                                  "summary.json")
"""What a shipped run keeps of a run folder (plus ``final.pt`` where `Job.weights`): the
scores, the per-epoch history and the predictions every table and figure is made from. Not
the resume checkpoint ``last.pt`` nor the best-epoch weights, which no notebook opens."""


def machine() -> dict[str, Any]:
    """What the numbers of a run depend on besides the code: the CPU model (from
    ``/proc/cpuinfo``; MKL picks its kernels by it), its cores and bf16 units, and the
    library versions."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "amx_bf16": "amx_bf16" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=project_root(), capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def export(plan: Sequence[Job], runs: Path, dest: Path, data: Any) -> dict[str, Any]:
    """Write the finished runs of `plan` from the run cache `runs` to `dest` as shipped runs.

    Each run keeps `SHIPPED_FILES` under its key, and ``final.pt`` where a notebook opens it
    (`Job.weights`); ``PROVENANCE.json`` says where they come from: the commit (and whether
    the library's code differed from it), the profile, the data set and its identity, each
    notebook's seeds, the machine (`machine`) and, per run, its label, seed, notebooks and
    command.
    `dest` is replaced as a whole, so it holds exactly this plan. A ValueError lists the runs
    that are not finished. Returns the provenance.
    """
    if len({j.cfg.data for j in plan}) > 1:
        raise ValueError("shipped runs are of one data set; export the shared data's "
                         "notebooks only (the runs of 06 need SPRSound, not in the repository)")
    data = data_of(data, plan[0]) if plan else data
    missing = [j for j in plan if finished(runs / run_key(j.cfg, data)) is None]
    if missing:
        raise ValueError(f"{len(missing)} of {len(plan)} runs are not finished in {runs}/ "
                         f"(train them first: patchmix plan --run); the first: "
                         f"{missing[0].command()}")
    profiles = sorted({j.cfg.profile for j in plan})
    provenance = {
        "profile": ", ".join(profiles), "commit": _git("rev-parse", "HEAD"),
        "code_changed": bool(_git("status", "--porcelain", "--", "lib", "pyproject.toml")),
        "data": data.describe(), "data_identity": data.identity(),
        "seeds": {nb: notebook_seeds(nb) for nb in dict.fromkeys(
            nb for j in plan for nb in j.notebooks)},
        "machine": machine(),
        "runs": [{"run": run_key(j.cfg, data), "label": j.label, "seed": j.cfg.seed,
                  "notebooks": list(j.notebooks), "weights": j.weights,
                  "command": j.command()} for j in plan]}
    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for job, entry in zip(plan, provenance["runs"], strict=True):
        source, target = runs / entry["run"], staging / entry["run"]
        target.mkdir()
        names = [p for pattern in SHIPPED_FILES for p in sorted(source.glob(pattern))]
        for path in [*names, *([source / "final.pt"] if job.weights else [])]:
            shutil.copyfile(path, target / path.name)
    write_json_atomic(staging / PROVENANCE, provenance)
    shutil.rmtree(dest, ignore_errors=True)  # the old set goes only once the new one is whole
    staging.rename(dest)
    return provenance
