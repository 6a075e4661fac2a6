"""The notebooks' one setup call, and running them in order with papermill.

In a notebook, `setup` turns the parameters cell into everything the notebook works with: the
configuration (profile, data folder, weights, overrides, typed knobs), the data set, the seeds,
the outputs and the runs the notebook needs (`patchmix.companion.notebook_runs.NOTEBOOK_RUNS`).

``python -m patchmix.companion.notebooks --profile demo [--data ROOT] [--weights FILE] [--seeds N]
[--sprsound ROOT] [--outputs DIR]`` (what ``make reproduce`` runs) executes ``notebooks/01_…``
to ``06_…`` headlessly (06, on SPRSound, only when it is given a SPRSound folder), writes
their figures and tables under ``DIR/figures`` and ``DIR/results`` (default ``out/<profile>``;
``make reproduce`` passes ``.`` for the committed demo outputs), keeps the executed copies and
their HTML under ``out/executed/``, and prints (and saves as ``timings.json``) the wall time of
each notebook. A failing notebook stops the run with its error and the path of its executed
copy.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from patchmix.atomic import atomic_path
from patchmix.companion import plots
from patchmix.companion.knobs import KNOBS, notebook_config
from patchmix.companion.notebook_runs import (
    NOTEBOOK_DATA,
    NOTEBOOK_RUNS,
    PlannedRun,
    notebook_roots,
    planned_runs,
    run_table,
)
from patchmix.companion.report import NOTEBOOKS, Outputs, project_root
from patchmix.config import PROFILES, ExperimentConfig, get_value
from patchmix.data.dataset import DATASETS, DataFolder, DataSet, dataset_root, find_folder
from patchmix.data.errors import DataError
from patchmix.data.features import CACHE_ENV
from patchmix.data.loading import Data, load_data
from patchmix.engine.experiment import runs_dir, shipped_dir
from patchmix.engine.integrity import PROVENANCE
from patchmix.engine.train import check_names
from patchmix.methods import METHODS

EXECUTED = Path("out/executed")  # executed copies of the notebooks and their HTML
SCRATCH = Path("out/scratch")  # a notebook's figures and tables unless it is told where
READABLE = Path("docs/notebooks")  # the committed demo run's notebooks, with their outputs
REPO_CACHE = Path(".cache/patchmix")  # the feature cache of make's targets and the notebooks


@dataclass
class Notebook:
    """What a notebook works with, made by `setup` from its parameters."""

    name: str
    cfg: ExperimentConfig
    seeds: list[int]
    ablation_seeds: list[int]
    folder: DataFolder  # the data folder, recognised once
    out: Outputs
    weights: Path | None = None  # the AudioSet checkpoint the notebook was given

    @property
    def root(self) -> str:
        """The data folder, as text."""
        return str(self.folder.path)

    @property
    def dataset(self) -> DataSet:
        """The registered data set of the folder."""
        return self.folder.dataset

    @functools.cached_property
    def data(self) -> Data:
        """The data set ready to train on (features computed on first use, then cached)."""
        return load_data(self.cfg.data, folder=self.folder)

    @functools.cached_property
    def cycles(self) -> pd.DataFrame:
        """The data set's cycle table as read, without a validation split."""
        return self.folder.read()

    def plan(self, *groups: str) -> list[PlannedRun]:
        """The runs of `groups` (default: all this notebook needs), without training any."""
        return planned_runs(groups or NOTEBOOK_RUNS[self.name], self.cfg)

    def runs(self, *groups: str) -> pd.DataFrame:
        """The per-seed table of the runs of `groups` (`patchmix.engine.experiment.run_seeds`):
        trained unless the run cache or the shipped runs have them, with a progress bar for
        those that train, and a line on stderr saying where they came from (`where_from`)."""
        seeds = {"seeds": self.seeds, "ablation_seeds": self.ablation_seeds}
        table = run_table(self.plan(*groups), seeds, data=self.data)
        print(where_from(table["run_dir"].unique()), file=sys.stderr)
        return table

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        """How figures and tables name the runs this notebook plans (name → label)."""
        return {p.name: p.label for p in self.plan()}

    @functools.cached_property
    def terms(self) -> dict[str, dict[str, str]]:
        """What the loss terms of each planned run are (name → `Method.terms`): loss panels
        share an axis only between runs of the same objective."""
        return {p.name: METHODS.get(p.cfg.method.name).terms for p in self.plan()}

    def shared_config(self, data_root: str = "") -> ExperimentConfig:
        """The configuration of the notebooks on the shared data (`data_root` as their
        ``DATA_ROOT``: "" → ``$ICBHI_ROOT``, else the synthetic set): this notebook's profile
        and weights, none of its knobs or overrides. For a notebook on a data set of its own
        (`NOTEBOOK_DATA`), which scores their models on its data and its models on theirs."""
        return notebook_config(self.cfg.profile, folder=find_folder(data_root),
                               weights=self.weights)

    def shared_data(self, data_root: str = "") -> Data:
        """The shared data set of `shared_config`, ready to score on."""
        return load_data(self.shared_config(data_root).data)

    def shared_runs(self, *groups: str, data_root: str = "") -> pd.DataFrame:
        """The runs of `groups` as the notebooks on the shared data train them
        (`shared_config`), for this notebook's seeds: from the run cache or the shipped runs,
        trained only where neither has them."""
        cfg = self.shared_config(data_root)
        table = run_table(planned_runs(groups, cfg), {"seeds": self.seeds},
                          data=self.shared_data(data_root))
        print(where_from(table["run_dir"].unique()), file=sys.stderr)
        return table

    def knobs(self) -> pd.DataFrame:
        """The knobs of `patchmix.companion.knobs.KNOBS` with their values in this configuration."""
        return pd.DataFrame([{"knob": name, "field": k.path, "value": get_value(self.cfg, k.path),
                              "what": k.help} for name, k in KNOBS.items()])


def where_from(run_dirs: Sequence[str]) -> str:
    """One line saying where a notebook's runs came from: how many the repository shipped
    (and from which commit and CPU, `patchmix.companion.plan.export`), how many the run cache
    held."""
    shipped = shipped_dir()
    from_shipped = [d for d in run_dirs if shipped is not None and Path(d).parent == shipped]
    line = f"{len(run_dirs)} runs: {len(run_dirs) - len(from_shipped)} from {runs_dir()}/"
    if not from_shipped:
        return line
    try:
        made = json.loads((shipped / PROVENANCE).read_text(encoding="utf-8"))
        origin = (f", from commit {made['commit'][:10]}, trained on "
                  f"{made['machine']['cpu_model']}")
    except (OSError, ValueError, KeyError, TypeError):
        origin = ""
    return (f"{line}, {len(from_shipped)} shipped with the repository ({shipped}/{origin}); "
            f"a changed knob trains only the runs it changes, into {runs_dir()}/")


def setup(name: str, *, profile: str = "demo", data_root: str = "", weights: str = "",
          seeds: int = 1, ablation_seeds: int = 1, overrides: str = "",
          figures_dir: str = "", results_dir: str = "", **knobs: Any) -> Notebook:
    """A notebook's parameters → its `Notebook`: the one call after the parameters cell.

    Moves to the repository root (so ``data/``, ``runs/``, ``figures/`` mean the same under
    papermill and in JupyterLab, which starts kernels in ``notebooks/``), reads features from
    the repository's ``.cache/patchmix`` as ``make data`` writes them (unless
    ``$PATCHMIX_CACHE`` names another cache), applies the figure
    style, builds the configuration (`patchmix.companion.knobs.notebook_config`: `knobs` are names
    of `KNOBS` with typed values, None keeping the profile's), finds the data set and prepares the
    outputs, whose provenance line it prints. Seeds are 1..`seeds` (1..`ablation_seeds` for
    ablations). Features are loaded when first used (`Notebook.data`).

    Empty `figures_dir` and `results_dir` (the notebooks' defaults) mean the scratch folders
    ``out/scratch/figures`` and ``out/scratch/results``: a notebook run by hand, in JupyterLab
    or by papermill, never overwrites the committed ``figures/`` and ``results/``, which only
    ``make reproduce`` writes (``--outputs .``).
    """
    if name not in NOTEBOOKS:
        raise ValueError(f"unknown notebook {name!r}; one of {', '.join(NOTEBOOKS)}")
    if min(seeds, ablation_seeds) < 1:
        raise ValueError(f"SEEDS and ABLATION_SEEDS must be at least 1, not {seeds} and "
                         f"{ablation_seeds}")
    os.chdir(project_root())
    # the feature cache `make data` filled (the Makefile's PATCHMIX_CACHE), unless told another
    os.environ.setdefault(CACHE_ENV, str(REPO_CACHE.resolve()))
    plots.use_style()
    own = NOTEBOOK_DATA.get(name)  # a notebook on a data set of its own needs its folder
    folder = find_folder(dataset_root(own, data_root) if own else data_root)
    if own and folder.dataset.name != own:
        raise DataError(f"{name} trains on {DATASETS.get(own).title}; {folder.path} is a "
                        f"{folder.dataset.title} folder")
    checkpoint = Path(weights) if weights else None
    cfg = notebook_config(profile, folder=folder, weights=checkpoint, overrides=overrides,
                          knobs=knobs)
    check_names(cfg)  # an unknown method or backbone in OVERRIDES, before any feature
    trains = bool(NOTEBOOK_RUNS[name])
    run_seeds = list(range(1, seeds + 1))
    figures_dir = figures_dir or str(SCRATCH / "figures")
    results_dir = results_dir or str(SCRATCH / "results")
    out = Outputs(name, figures_dir, results_dir, context={
        "profile": profile, "data": folder.describe(),
        "weights": cfg.model.weights if trains else "–",
        "seeds": ", ".join(map(str, run_seeds)) if trains else "–"})
    print(out.context_line())
    print(f"figures → {figures_dir}/, tables → {results_dir}/")
    return Notebook(name, cfg, run_seeds, list(range(1, ablation_seeds + 1)), folder, out,
                    checkpoint)



def execute(name: str, parameters: dict[str, Any], *, notebook_dir: Path,
            executed_dir: Path, html: bool = True, timeout: int = 3600) -> float:
    """Run one notebook with `parameters` into `executed_dir`; return its wall time (s).

    Parameters the notebook's ``parameters`` cell does not declare are left out (01 has no
    ``WEIGHTS``, for instance), so one set of parameters serves every notebook.

    Raises RuntimeError naming the notebook, the error and the executed copy when a cell fails.
    """
    import papermill  # noqa: PLC0415 - heavy, only when notebooks run
    from traitlets.config import Config  # noqa: PLC0415

    source = notebook_dir / f"{name}.ipynb"
    target = executed_dir / f"{name}.ipynb"
    executed_dir.mkdir(parents=True, exist_ok=True)
    declared = papermill.inspect_notebook(str(source))  # pass only the knobs it has
    parameters = {"SLIDERS": False, **parameters}  # headless: the static figures only
    parameters = {k: v for k, v in parameters.items() if k in declared}
    start = time.perf_counter()
    # local IPC sockets (no "TCP without encryption" warning), in a folder of this kernel's
    # own: their default names (kernel-ipc-1, …) would collide between kernels run at once
    with tempfile.TemporaryDirectory(prefix="patchmix-kernel-") as sockets:
        kernel = {"transport": "ipc", "ip": str(Path(sockets) / "kernel")}
        try:
            papermill.execute_notebook(str(source), str(target), parameters=parameters,
                                       cwd=str(notebook_dir), kernel_name="python3",
                                       progress_bar=False, execution_timeout=timeout,
                                       config=Config({"KernelManager": kernel}))
        except papermill.PapermillExecutionError as err:
            raise RuntimeError(f"{name}: {err.ename}: {err.evalue} (see {target})") from None
    seconds = time.perf_counter() - start
    if html:
        _to_html(target)
    return seconds


def readable_copy(executed: Path, target: Path, *, deeper: int = 1) -> None:
    """Write `executed` (a notebook papermill ran) to `target` as a reader should see it.

    Kept: every cell and its outputs (figures, tables, audio players). Dropped: what changes
    from one run to the next without changing the result, so that the copy is byte-stable:
    papermill's timings and paths (notebook and cell ``papermill`` metadata), the kernel's
    execution timestamps, the Python patch version, stderr streams (progress bars, the epoch
    lines of runs that trained, warnings), and the machine's part of absolute paths passed
    as parameters (``"…/SPRSound"``). The injected parameters cell gets a fixed id
    instead of papermill's random one. Markdown links that leave ``notebooks/`` (those
    starting with ``../``) are rewritten for a `target` folder `deeper` levels further from
    the repository root than ``notebooks/`` (1 for ``docs/notebooks/``).
    """
    import nbformat  # noqa: PLC0415

    nb = nbformat.read(executed, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.get("language_info", {}).pop("version", None)  # the machine's Python patch
    for cell in nb.cells:
        if cell.cell_type == "markdown" and deeper:  # a link up from notebooks/ needs more ups
            cell.source = cell.source.replace("](../", "](" + "../" * (deeper + 1))
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.id = "injected-parameters"
            cell.source = _MACHINE_PATH.sub(_folder_only, cell.source)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if not (o.output_type == "stream" and o.name == "stderr")]
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        nbformat.write(nb, str(tmp))


# an absolute path given as a parameter (SPRSOUND_ROOT=/home/…/SPRSound): a machine's, not the
# reader's, so the readable copy keeps only the folder's name
_MACHINE_PATH = re.compile(r'"((?:/|[A-Za-z]:[/\\])[^"]*)"')


def _folder_only(match: re.Match[str]) -> str:
    name = re.split(r"[/\\]", match[1].rstrip("/\\"))[-1]
    return f'"…/{name}"'


def _to_html(notebook: Path) -> None:
    import nbformat  # noqa: PLC0415
    from nbconvert import HTMLExporter  # noqa: PLC0415

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    notebook.with_suffix(".html").write_text(body, encoding="utf-8")


def run_all(parameters: dict[str, Any], *, names: Sequence[str] = NOTEBOOKS,
            root: Path | None = None, executed_dir: Path | None = None,
            html: bool = True, readable_dir: Path | None = None,
            data_roots: dict[str, str] | None = None, jobs: int = 1,
            threads: int = 0) -> dict[str, float]:
    """Execute `names`; return ``{notebook: seconds}`` (also ``timings.json``).

    A notebook on a data set of its own (`NOTEBOOK_DATA`, e.g. 06 on SPRSound) gets that
    data set's folder (`data_roots` by data set name, else its environment variable,
    `notebook_roots`) as the parameter named like the variable (``SPRSOUND_ROOT``); without a
    folder it is skipped, saying so, and its committed outputs stay as they are.
    With `readable_dir`, each executed notebook is also written there as `readable_copy`
    (``make reproduce`` keeps the demo run's under ``docs/notebooks/``, in git).

    `jobs` > 1 runs that many notebooks at once, each in a process of its own (they only
    read runs and share nothing but the results index, which `Outputs` writes under a lock);
    every kernel computes on `threads` threads (default `NOTEBOOK_THREADS`), however many run
    at once, so that what the notebooks compute (features of a trained model, a UMAP) has the
    same bits on any number of cores. The first failure stops the others."""
    root = root or project_root()
    executed_dir = executed_dir or root / EXECUTED
    own_roots = notebook_roots(data_roots)
    todo: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        given = parameters
        if name in own_roots:
            dataset = DATASETS.get(NOTEBOOK_DATA[name])
            if not own_roots[name]:
                print(f"▷ {name}: skipped, its committed outputs kept (no {dataset.title} "
                      f"folder: set {dataset.root_env}=…)", flush=True)
                continue
            given = {**parameters, dataset.root_env: own_roots[name]}
        todo.append((name, given))
    executed_dir.mkdir(parents=True, exist_ok=True)  # here: an unwritable folder fails at once
    args = (root, executed_dir, html, readable_dir)
    timings: dict[str, float] = {}
    with _kernel_threads(threads or NOTEBOOK_THREADS), ProcessPoolExecutor(
            max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {}
        for name, given in todo:
            print(f"▶ {name} …", flush=True)
            running[pool.submit(_run_one, name, given, *args)] = name
        try:
            for future in as_completed(running):
                name = running[future]
                timings[name] = future.result()
                print(f"  {name}: {timings[name]:.0f} s", flush=True)
        except BaseException:
            for future in running:
                future.cancel()
            raise
    timings = {name: timings[name] for name, _ in todo}  # reading order
    (executed_dir / "timings.json").write_text(json.dumps(
        {"parameters": parameters, "seconds": timings,
         "total": round(sum(timings.values()), 1)}, indent=2) + "\n")
    return timings


NOTEBOOK_THREADS = 1
"""Intra-op threads of every notebook kernel that `run_all` starts (``OMP_NUM_THREADS``)."""


def _run_one(name: str, parameters: dict[str, Any], root: Path, executed_dir: Path,
             html: bool, readable_dir: Path | None) -> float:
    """One notebook of `run_all`, in a worker process: executed, and its readable copy."""
    seconds = round(execute(name, parameters, notebook_dir=root / "notebooks",
                            executed_dir=executed_dir, html=html), 1)
    if readable_dir is not None:
        readable_copy(executed_dir / f"{name}.ipynb", readable_dir / f"{name}.ipynb")
    return seconds


@contextlib.contextmanager
def _kernel_threads(threads: int) -> Any:
    """``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for the kernels started inside the block
    (they inherit the environment), restored after it."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: str(threads) for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patchmix.companion.notebooks",
                                     description="Run the notebooks in order with papermill.")
    parser.add_argument("--profile", default="demo", choices=PROFILES)
    parser.add_argument("--data", default="", help="ICBHI-layout folder (default: $ICBHI_ROOT, "
                        "else data/synthetic)")
    parser.add_argument("--weights", default="", help="AudioSet checkpoint for --profile paper")
    parser.add_argument("--seeds", type=_count, default=0, help="seeds per method (0: each "
                        "notebook's default)")
    parser.add_argument("--outputs", default="", help="folder that receives figures/ and "
                        "results/ (default out/<profile>; '.' rewrites the repository's own, "
                        "as make reproduce does for the demo profile)")
    parser.add_argument("--sprsound", default=None, help="SPRSound folder for notebook 06 "
                        "(default $SPRSOUND_ROOT; without one 06 is skipped and its committed "
                        "outputs stay)")
    parser.add_argument("--only", nargs="*", default=None, help="notebook names to run")
    parser.add_argument("--no-html", action="store_true")
    parser.add_argument("--jobs", type=_count, default=0, help="notebooks run at once "
                        "(default: the CPU count)")
    parser.add_argument("--threads", type=_count, default=0, help="intra-op threads of each "
                        f"notebook kernel (default {NOTEBOOK_THREADS})")
    args = parser.parse_args(argv)
    params: dict[str, Any] = {"PROFILE": args.profile, "DATA_ROOT": args.data,
                              "WEIGHTS": args.weights}
    outputs = Path(args.outputs or f"out/{args.profile}")
    params["FIGURES_DIR"] = str(outputs / "figures")
    params["RESULTS_DIR"] = str(outputs / "results")
    if args.seeds:
        params["SEEDS"] = args.seeds
    names = args.only or NOTEBOOKS
    unknown = sorted(set(names) - set(NOTEBOOKS))
    if unknown:
        print(f"error: unknown notebook(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    jobs = args.jobs or os.cpu_count() or 1
    began = time.perf_counter()
    try:
        publishing = outputs == Path(".")  # the committed outputs: their notebooks too
        timings = run_all(params, names=names, html=not args.no_html,
                          readable_dir=project_root() / READABLE if publishing else None,
                          data_roots=None if args.sprsound is None else
                          {"sprsound": args.sprsound}, jobs=jobs,
                          threads=args.threads)
    except RuntimeError as err:  # a notebook failed: its executed copy says where
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. a read-only checkout: out/ cannot be written
        print(f"error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"all notebooks: {time.perf_counter() - began:.0f} s ({sum(timings.values()):.0f} s "
          f"of notebook time, up to {min(jobs, len(timings)) or 1} at once)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
