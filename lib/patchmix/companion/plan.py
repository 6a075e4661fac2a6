"""The runs a profile's notebooks need, as commands: trained here or on a cluster, compared.

The notebooks train what they need when they first ask
(`patchmix.companion.notebooks.Notebook.runs`), one run after another. `jobs` lists the same runs up
front: for each notebook, its run groups (`patchmix.companion.notebook_runs.NOTEBOOK_RUNS`) for its
default seeds (read from its parameters cell), one job per distinct configuration. Each job is a
``patchmix train`` command line whose overrides rebuild exactly that configuration, so it lands in
the run cache under the key the notebook will look for, whoever runs it: `run_local` on this
machine, or any scheduler.

``patchmix plan --profile demo`` prints the commands; ``--run --workers N`` trains them here
(`run_local`); ``--submit FOLDER`` sends them to SLURM through submitit (`submit`;
``--cluster local`` runs the same jobs as local processes, the route the tests take);
``--compare RUNS`` judges each run against the same run in another run cache or shipped set
(`patchmix.companion.reproduction.judge`, which takes the bit-for-bit comparison from `compare`);
``--export DIR`` writes the finished runs in the compact form committed as ``shipped/``, with
their provenance (`export`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import multiprocessing.forkserver
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchmix.atomic import write_json_atomic
from patchmix.companion.knobs import notebook_config
from patchmix.companion.notebook_runs import (
    NOTEBOOK_RUNS,
    WEIGHTS_READ,
    notebook_roots,
    planned_runs,
)
from patchmix.companion.report import NOTEBOOKS, project_root
from patchmix.config import ExperimentConfig, overrides_between, profile
from patchmix.data.dataset import DataFolder, recognise
from patchmix.engine.experiment import finished, run_key
from patchmix.engine.integrity import FILES, PROVENANCE, checksums, differing_files, verify_shipped
from patchmix.engine.train import check_names


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

    def with_threads(self, threads: int) -> Job:
        """The same run trained on `threads` intra-op threads (its key does not change)."""
        train = dataclasses.replace(self.cfg.train, threads=threads)
        return dataclasses.replace(self, cfg=dataclasses.replace(self.cfg, train=train))


def notebook_seeds(name: str, notebook_dir: Path | None = None) -> dict[str, int]:
    """``SEEDS`` and ``ABLATION_SEEDS`` as the notebook's parameters cell sets them (1 where a
    notebook has no such parameter): the seeds a plain run of it trains."""
    import papermill  # noqa: PLC0415 - the notebooks extra, which make setup installs

    path = (notebook_dir or project_root() / "notebooks") / f"{name}.ipynb"
    declared = papermill.inspect_notebook(str(path))
    return {p: int(declared[p]["default"]) if p in declared else 1
            for p in ("SEEDS", "ABLATION_SEEDS")}


def jobs(profile_name: str, *, folder: DataFolder | None = None, weights: Path | None = None,
         overrides: str = "", seeds: int = 0, notebooks: Sequence[str] = NOTEBOOKS,
         data_roots: dict[str, str] | None = None) -> list[Job]:
    """Every distinct run the `notebooks` need in `profile_name`, in the order they ask.

    `seeds` > 0 replaces each notebook's ``SEEDS`` (its ``ABLATION_SEEDS`` stay), as
    ``make reproduce SEEDS=…`` does. `folder` is the shared data folder of the notebooks
    (None: ``$ICBHI_ROOT``, else the synthetic set, when the data is loaded). A notebook on a
    data set of its own (`NOTEBOOK_DATA`) trains on that set's folder (`data_roots` by data
    set name, else its environment variable: `patchmix.companion.notebook_runs.
    notebook_roots`) and is left out without one.
    """
    unknown = sorted(set(notebooks) - set(NOTEBOOKS))
    if unknown:
        raise ValueError(f"unknown notebook(s) {', '.join(unknown)}")
    own_roots = notebook_roots(data_roots)
    shared = notebook_config(profile_name, folder=folder, weights=weights, overrides=overrides)
    check_names(shared)
    found: dict[ExperimentConfig, Job] = {}  # a run two notebooks need is one job
    for name in notebooks:
        if name in own_roots and not own_roots[name]:
            continue
        cfg = shared if name not in own_roots else notebook_config(
            profile_name, folder=recognise(own_roots[name]), weights=weights,
            overrides=overrides)
        counts = notebook_seeds(name)
        # the seed lists of `patchmix.companion.notebooks.Notebook.runs`, by `PlannedRun.seeds`
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
    """The `patchmix.data.loading.Data` a job's run key is made with: `data` itself, or, where
    the plan spans data sets, `data` called with the job's data config (a cached loader)."""
    return data(job.cfg.data) if callable(data) else data


def pending(plan: Iterable[Job], runs: Path, data: Any) -> list[Job]:
    """The jobs of `plan` whose run is not finished in the run cache `runs` (`data` as
    `data_of` takes it)."""
    return [j for j in plan if finished(runs / run_key(j.cfg, data_of(data, j))) is None]


def longest_first(plan: Sequence[Job], earlier: Iterable[Path]) -> list[Job]:
    """`plan` with the runs expected to take longest first, so that a pool's workers finish
    together instead of one training alone at the end.

    The expectation is the mean training time (``seconds_this_session``) of the finished runs
    of the same method among the run folders `earlier` (e.g. the shipped runs); a method with
    none keeps its place after those with one. The order changes no run."""
    seconds: dict[str, list[float]] = {}
    for folder in earlier:
        summary = finished(folder, weights=False)
        if summary and isinstance(summary.get("seconds_this_session"), int | float):
            seconds.setdefault(str(summary.get("method")), []).append(
                float(summary["seconds_this_session"]))
    expected = {m: sum(v) / len(v) for m, v in seconds.items()}
    return sorted(plan, key=lambda job: -expected.get(job.cfg.method.name, 0.0))


def run_local(plan: Sequence[Job], entry: Callable[[list[str]], int], *, workers: int = 0,
              threads: int = 0, log_dir: Path | None = None) -> list[tuple[Job, int]]:
    """Train `plan` with up to `workers` ``patchmix train`` processes at once.

    `entry` is the command line's entry point (`patchmix.cli.main`, which passes itself: the
    pool sits below the command line and does not import it); each job runs it on its
    ``train`` arguments.

    Each process gets the profile's ``train.threads`` where it pins them (``demo``: 1), else
    the CPU count ÷ `workers`; `threads` > 0 replaces either (the thread count is not part
    of a run's key: the runs are the same runs, other in their last bits). `workers` 0 means
    the CPU count ÷ threads (at least 1): two one-thread demo runs at once on a 2-core
    laptop, sixteen on 16 cores. Each process's output goes to ``log_dir/<n>.log``. Returns
    the jobs that failed, with their exit status. A line is printed when each job ends.
    """
    cores = os.cpu_count() or 1
    if threads:
        plan = [job.with_threads(threads) for job in plan]
    pinned = {job.cfg.train.threads for job in plan} - {0}
    if len(pinned) > 1:
        raise ValueError(f"the runs pin different thread counts "
                         f"({', '.join(map(str, sorted(pinned)))}): give --threads")
    threads = max(pinned) if pinned else max(1, cores // (workers or 1))
    workers = workers or max(1, cores // threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_dir = log_dir or project_root() / "out" / "plan"
    log_dir.mkdir(parents=True, exist_ok=True)
    failed: list[tuple[Job, int]] = []
    done = 0
    start = time.perf_counter()
    jobs_now = _Running()

    def train(n: int, job: Job) -> tuple[int, float]:
        began = time.perf_counter()
        log = log_dir / f"{n:03d}.log"
        log.write_text(job.command() + "\n", encoding="utf-8")
        return _launch(job, env, log, server, jobs_now, entry), time.perf_counter() - began

    server = _fork_server(entry) if plan else None
    pool = ThreadPoolExecutor(max_workers=workers)  # threads only wait on processes
    try:
        futures = {pool.submit(train, n, job): job for n, job in enumerate(plan, 1)}
        for future in as_completed(futures):
            job, (code, seconds) = futures[future], future.result()
            done += 1
            state = "ok" if code == 0 else f"FAILED (exit {code}, log in {log_dir})"
            print(f"[{done}/{len(plan)}] {job.label} seed {job.cfg.seed}: {state} in "
                  f"{seconds:.0f} s ({time.perf_counter() - start:.0f} s so far)", flush=True)
            if code:
                failed.append((job, code))
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (the CLI raises it as one)
        jobs_now.stop(terminated=getattr(err, "signum", None) == signal.SIGTERM)
        raise
    finally:  # an interrupted pool starts no more jobs and waits for those it started
        pool.shutdown(wait=True, cancel_futures=True)
    return failed


class _Running:
    """The pool's job processes, so that an interrupted pool can end them: after `stop`, no
    job starts, and a job that starts anyway (its fork was under way) is terminated."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[int] = []  # their pids
        self.stopped = False

    def add(self, pid: int) -> None:
        """Record a started job; terminate it at once when the pool is stopping."""
        with self.lock:
            self.started.append(pid)
            late = self.stopped
        if late:
            _signal(pid, signal.SIGTERM)

    def stopping(self) -> bool:
        with self.lock:
            return self.stopped

    def stop(self, *, terminated: bool) -> None:
        """SIGTERM to the parent (`terminated`) is passed on to every job; Ctrl-C reached
        the jobs already (a terminal signals the whole process group), so only those started
        since are terminated, none is signalled twice while it cleans up."""
        with self.lock:
            self.stopped = True
            started = list(self.started)
        for pid in started if terminated else []:
            _signal(pid, signal.SIGTERM)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own
        os.kill(pid, signum)


# The heavy imports a ``patchmix train`` process spends its first seconds on (torch, timm,
# pandas: about 6 s on a laptop core, a tenth of a demo run), done once in the pool's fork
# server, so that each job starts from a warm copy of it; the entry point's module joins them.
_PRELOAD = ["patchmix.engine.train", "patchmix.engine.experiment"]


def _fork_server(entry: Callable[[list[str]], int]) -> Any:
    """The fork server's multiprocessing context, started (None where the platform has none).

    It starts with Ctrl-C ignored, so that an interrupt during its imports ends the pool
    without a traceback from it; each job restores the handler (`_job_process`). Call from the
    main thread (signal handlers can only be set there)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([entry.__module__, *_PRELOAD])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the server
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
    return context


def _launch(job: Job, env: dict[str, str], log: Path, context: Any, running: _Running,
            entry: Callable[[list[str]], int]) -> int:
    """Run ``patchmix train`` for `job` in a new process with `env`, its output appended to
    `log`; return its exit status (negative: killed by that signal; 143 when the pool stopped
    before it began).

    Where the platform has a fork server, the process is a fork of one that has already
    imported the library (`_PRELOAD`) and runs `entry` on the job's arguments:
    the same code as the command line, without its start-up (`context`, from `_fork_server`).
    Without one (None) it is the command itself, `Job.process`. `running` records it."""
    if running.stopping():
        return 143
    if context is None:
        with open(log, "a", encoding="utf-8") as out:
            child = subprocess.Popen(job.process(), env=env, cwd=project_root(), stdout=out,
                                     stderr=subprocess.STDOUT)
            running.add(child.pid)
            return child.wait()
    process = context.Process(target=_job_process, args=(entry, job.argv(), env, str(log),
                                                         str(project_root())))
    process.start()
    running.add(process.pid)
    process.join()
    return int(process.exitcode if process.exitcode is not None else 1)


def _job_process(entry: Callable[[list[str]], int], argv: list[str], env: dict[str, str],
                 log: str, cwd: str) -> None:
    """The body of a forked job (`_launch`): the job's environment, folder and output, then
    the command line's own entry point."""
    import torch  # noqa: PLC0415 - imported already by the fork server

    os.environ.clear()  # the fork server's copy dates from its start, not from this job
    os.environ.update(env)
    os.chdir(cwd)
    out = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(out, 1)
    os.dup2(out, 2)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores Ctrl-C
    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    code = entry(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


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
    file either side has is equal to the last bit, its timing in ``summary.json`` aside;
    ``differs``; or ``missing`` when either side lacks the finished run), ``first_epoch``
    that differs (text: the first file that differs when the per-epoch history does not;
    empty when none), and ``last_score_diff``, the change of the last-epoch test Score
    (actual − expected, points; NaN when missing). Either side may be shipped runs
    (`export`), which keep only some files: a file one side has and the other lacks differs,
    except weights and resume checkpoints a shipped side does not keep. A run whose files
    disagree with each other, or a shipped run changed since its export, raises
    RunIntegrityError (`patchmix.engine.integrity`).
    """
    shipped = {side: (side / PROVENANCE).is_file() for side in (expected, actual)}
    rows = []
    for job in plan:
        key = run_key(job.cfg, data_of(data, job))
        row: dict[str, Any] = {"label": job.label, "seed": job.cfg.seed, "run": key,
                               "status": "missing", "first_epoch": "",
                               "last_score_diff": float("nan")}
        for side in (expected, actual):
            if shipped[side] and (side / key).is_dir():
                verify_shipped(side, key)
        if (finished(expected / key, weights=False) is not None
                and finished(actual / key, weights=False) is not None):
            old, new = _epochs(expected / key), _epochs(actual / key)
            differing: list[int | str] = [
                n for n, (a, b) in enumerate(zip(old, new, strict=False), 1) if a != b]
            if len(old) != len(new) and not differing:
                differing = [min(len(old), len(new)) + 1]
            if not differing:  # a shipped side keeps only some files: those count
                kept = [*SHIPPED_FILES, "final.pt"] if any(shipped.values()) else None
                differing = differing_files(expected / key, actual / key, kept)
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


def export(plan: Sequence[Job], runs: Path, dest: Path, data: Any, *,
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the finished runs of `plan` from the run cache `runs` to `dest` as shipped runs.

    Each run keeps `SHIPPED_FILES` under its key, and ``final.pt`` where a notebook opens it
    (`Job.weights`); ``PROVENANCE.json`` says where they come from: the commit (and whether
    the library's code differed from it), the profile, the data set and its identity, each
    notebook's seeds, the machine (`machine`) and, per run, its label, seed, notebooks,
    command and the SHA-256 of each of its files; and `extra` (the CLI adds the noise scale
    of `patchmix.companion.reproduction.seed_noise`).
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
                  "command": j.command()} for j in plan],
        **(extra or {})}
    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for job, entry in zip(plan, provenance["runs"], strict=True):
        source, target = runs / entry["run"], staging / entry["run"]
        target.mkdir()
        names = [p for pattern in SHIPPED_FILES for p in sorted(source.glob(pattern))]
        for path in [*names, *([source / "final.pt"] if job.weights else [])]:
            shutil.copyfile(path, target / path.name)
        entry[FILES] = checksums(target)  # what a reader verifies (`integrity.verify_shipped`)
    write_json_atomic(staging / PROVENANCE, provenance)
    shutil.rmtree(dest, ignore_errors=True)  # the old set goes only once the new one is whole
    staging.rename(dest)
    return provenance
