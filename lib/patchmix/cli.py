"""The ``patchmix`` command line.

Exit status: 0 on success, 2 on bad input with one line on stderr naming the file and the
problem (never a traceback), 1 when ``data check --strict`` finds skipped input, 130 when
interrupted (Ctrl-C), 143 when terminated (SIGTERM, as SLURM and ``docker stop`` send); both
leave no half-written file behind.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from patchmix import __version__


class _OneLineError(Exception):
    """Bad input or usage: reported as one line, exit status 2."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that every ``finally`` cleans up."""

    signum = signal.SIGTERM  # how `patchmix.companion.plan.run_local` tells it from Ctrl-C


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _OneLineError(f"{message} (see '{self.prog} --help')")


class _MethodHelp(str):
    """The help of ``--method``, written when it is shown: naming the registered methods imports
    them, and torch with them (seconds), which ``patchmix --help`` and the commands that train
    nothing need not wait for."""

    def __mod__(self, params: object) -> str:  # how argparse expands a help text it shows
        from patchmix.config import MethodConfig
        from patchmix.methods import METHODS

        return f"{' | '.join(METHODS.names())} (default {MethodConfig.name})"


def build_parser() -> argparse.ArgumentParser:
    from patchmix.config import PROFILES

    parser = _Parser(
        prog="patchmix",
        description="Patch-Mix contrastive learning on ICBHI 2017: data, features, training.",
    )
    parser.add_argument("--version", action="version", version=f"patchmix {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    data = commands.add_parser("data", help="inspect an ICBHI-layout data set")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION",
                                        parser_class=_Parser)
    check = data_commands.add_parser(
        "check", help="read a data set and report its recordings, cycles and problems")
    check.add_argument("root", help="the recordings folder or its parent")
    check.add_argument("--split-file", help="the split file (found by name by default)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--strict", action="store_true",
                       help="exit 1 if any recording or cycle had to be skipped")
    feats = data_commands.add_parser(
        "features", help="compute (or find) the cached fbank features of every cycle")
    feats.add_argument("root", help="the recordings folder or its parent")
    feats.add_argument("--split-file", help="the split file (found by name by default)")
    feats.add_argument("--cache", help="cache folder (default $PATCHMIX_CACHE or "
                                       "~/.cache/patchmix)")
    feats.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: all cores)")

    train = commands.add_parser("train", help="train one run (cached under runs/ by default)")
    train.add_argument("--profile", default="demo",
                       help=f"{' | '.join(PROFILES)} (default demo)")
    train.add_argument("--method", help=_MethodHelp("the registered methods"))
    train.add_argument("--seed", type=int, help="run seed")
    train.add_argument("--data", help="data folder (default $ICBHI_ROOT, else data/synthetic)")
    train.add_argument("--out", help="train into this folder instead of the run cache")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="config overrides, e.g. epochs=3 train.lr=1e-4")

    calibrate = commands.add_parser("calibrate", help="measure how data sets sound, per "
                                    "class (synthetic against real), side by side")
    calibrate.add_argument("sets", nargs="+", metavar="NAME=ROOT[+ROOT…]",
                           help="a data set to measure and how tables name it; several "
                                "folders joined by + are measured as one")
    calibrate.add_argument("--per-class", type=int, default=0, help="at most this many cycles "
                           "of each class per data set, drawn with --seed (0: all)")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--out", required=True, help="folder for summary.csv, summary.md "
                           "and comparison.png")

    plan = commands.add_parser("plan", help="the runs a profile's notebooks need, as commands "
                                            "(--run: train them on a local pool)")
    plan.add_argument("--profile", default="demo", help=f"{' | '.join(PROFILES)} (default demo)")
    plan.add_argument("--data", default="", help="data folder, as the notebooks' DATA_ROOT "
                      "(default $ICBHI_ROOT, else data/synthetic; relative to the repository)")
    plan.add_argument("--weights", default="", help="AudioSet checkpoint (profile paper)")
    plan.add_argument("--seeds", type=int, default=0, help="seeds per method (0: each "
                                                           "notebook's default)")
    plan.add_argument("--sprsound", default=None, help="SPRSound folder, for notebook 06's "
                      "runs (default $SPRSOUND_ROOT; '' or neither: 06's runs are left out)")
    plan.add_argument("--notebooks", nargs="*", help="only the runs of these notebooks")
    plan.add_argument("--all", action="store_true", help="list finished runs too")
    plan.add_argument("--run", action="store_true", help="train the unfinished runs")
    plan.add_argument("--workers", type=int, default=0, help="runs at once with --run "
                      "(default: cores ÷ threads per run)")
    plan.add_argument("--threads", type=int, default=0, help="threads per run with --run "
                      "(default: the profile's train.threads where it pins them, else cores "
                      "÷ workers); the runs' keys do not change")
    plan.add_argument("--compare", metavar="RUNS", help="compare each run of the plan in the "
                      "run cache with the same run in RUNS (a run cache or shipped runs) at the "
                      "precision reported: one verdict line, exit 1 when a number lies "
                      "outside its tolerance or a run is missing")
    plan.add_argument("--report-outputs", action="store_true", help="with --compare: also "
                      "say which committed figures/, results/ and docs/notebooks/ files "
                      "changed (make reproduce)")
    plan.add_argument("--export", metavar="DIR", help="write the finished runs, compact and "
                      "with their provenance, to DIR (replaced): how shipped/ is made")
    plan.add_argument("--submit", metavar="FOLDER", help="submit the unfinished runs through "
                      "submitit (logs in FOLDER) and wait for them")
    plan.add_argument("--cluster", choices=("slurm", "local"), help="with --submit: where "
                      "(default: SLURM if sbatch exists, else local processes)")
    plan.add_argument("--timeout-min", type=int, default=24 * 60,
                      help="with --submit: time limit per run (minutes)")
    plan.add_argument("--gpus", type=int, default=0, help="with --submit: GPUs per run")
    plan.add_argument("--partition", help="with --submit: the SLURM partition")

    evaluate = commands.add_parser(
        "evaluate", help="score a trained checkpoint on each test part of a data set")
    evaluate.add_argument("checkpoint", help="a run's final.pt or best-*.pt")
    evaluate.add_argument("--data", help="data folder (default: the run's data.root if it "
                                         "named one, else $ICBHI_ROOT, else data/synthetic)")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")

    predict = commands.add_parser("predict", help="class probabilities of each cycle of a WAV")
    predict.add_argument("checkpoint", help="a run's final.pt or best-*.pt")
    predict.add_argument("wav", help="a recording")
    predict.add_argument("--annotations", help="its cycle annotation file; without one, "
                                               "fixed 8 s windows")

    synth = commands.add_parser("synth", help="write a synthetic data set in ICBHI's layout")
    synth.add_argument("out", help="output folder (created; a previous synthetic set is replaced)")
    synth.add_argument("--recordings", type=int, default=100, help="number of recordings")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patchmix`` script; returns the exit status."""
    parser = build_parser()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args = parser.parse_args(argv)
        if args.command == "data" and args.data_command == "check":
            return _data_check(args)
        if args.command == "data" and args.data_command == "features":
            return _data_features(args)
        if args.command == "synth":
            return _synth(args)
        if args.command == "train":
            return _train(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "calibrate":
            return _calibrate(args)
        parser.print_help()
        return 0 if args.command is None else 2
    except BrokenPipeError:  # the reader of the output left early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (_OneLineError, ValueError, OSError) as err:  # DataError is a ValueError
        if isinstance(err, OSError) and err.strerror:  # "file: problem", not "[Errno 2] …"
            text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
        else:
            text = str(err)
        message = " ".join(text.split()) or type(err).__name__
        print(f"patchmix: error: {message}", file=sys.stderr)
        return 2
    except _Terminated:
        print("patchmix: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("patchmix: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _data_check(args: argparse.Namespace) -> int:
    from patchmix.data.dataset import recognise

    folder = recognise(args.root)
    dataset, cycles = folder.dataset, folder.read(args.split_file)
    report = dataset.summarize(cycles)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    skipped = [p for p in report["problems"] if p["action"] == "skipped"]
    return 1 if args.strict and skipped else 0


def _data_features(args: argparse.Namespace) -> int:
    from patchmix.data.dataset import recognise
    from patchmix.data.features import cycle_features

    cycles = recognise(args.root).read(args.split_file)
    started = time.perf_counter()
    array = cycle_features(cycles, cache_dir=args.cache, workers=args.workers)
    seconds = time.perf_counter() - started
    print(f"{array.shape[0]} cycles → features {tuple(array.shape[1:])} in {seconds:.2f} s "
          f"({array.shape[0] / max(seconds, 1e-9):.0f} cycles/s): {array.filename}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from patchmix.companion import calibration, plots
    from patchmix.companion.report import markdown_table
    from patchmix.data.dataset import recognise

    plots.use_style()  # the notebooks' figure style
    measured = []
    for spec in args.sets:
        name, sep, roots = spec.partition("=")
        if not sep or not name or not roots:
            raise ValueError(f"{spec!r}: write a data set as NAME=ROOT (or NAME=ROOT+ROOT)")
        parts = []
        for root in roots.split("+"):
            cycles = recognise(root).read()
            if args.per_class:
                cycles = calibration.subsample(cycles, args.per_class, seed=args.seed)
            parts.append(calibration.measure_cycles(cycles, name))
        measured.append(calibration.concat(parts, name) if len(parts) > 1 else parts[0])
        print(f"{name}: {len(measured[-1].table)} cycles of "
              f"{measured[-1].table['recording'].nunique()} recordings", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = calibration.side_by_side([calibration.class_summary(m) for m in measured])
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown_table(table) + "\n", encoding="utf-8")
    calibration.comparison_figure({m.name: m for m in measured}).savefig(out / "comparison.png")
    print(markdown_table(table))
    print(f"wrote {out}/summary.csv, summary.md and comparison.png", file=sys.stderr)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from patchmix.data.synth import make_synthetic_icbhi

    summary = make_synthetic_icbhi(args.out, args.recordings, args.seed, progress=not args.quiet)
    print(f"wrote {summary.recordings} synthetic recordings of {summary.patients} patients "
          f"({sum(summary.cycles.values())} cycles) to {args.out} in {summary.seconds:.1f} s")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from patchmix.companion.plan import jobs, longest_first, pending, run_local
    from patchmix.companion.report import NOTEBOOKS, project_root
    from patchmix.data.dataset import recognise
    from patchmix.data.loading import load_data
    from patchmix.engine.experiment import runs_dir, shipped_dir

    if args.workers < 0 or args.threads < 0 or args.seeds < 0:
        raise ValueError("--workers, --threads and --seeds must be at least 0")
    # the folders named here are the caller's; runs/ and data/ are the repository's, as in
    # the notebooks (and so is a relative --data, which becomes part of each run's config)
    compare_to = Path(args.compare).resolve() if args.compare else None
    logs = Path(args.submit).resolve() if args.submit else None
    export_to = Path(args.export).resolve() if args.export else None
    os.chdir(project_root())
    roots = None if args.sprsound is None else {"sprsound": args.sprsound}
    plan = jobs(args.profile, folder=recognise(args.data) if args.data else None,
                weights=Path(args.weights) if args.weights else None, seeds=args.seeds,
                notebooks=args.notebooks or NOTEBOOKS, data_roots=roots)
    data = functools.cache(lambda cfg: load_data(cfg, progress=True))  # each data set once
    todo = pending(plan, runs_dir(), data)
    shown = plan if args.all else todo
    print(f"# {len(plan)} runs for the {args.profile} notebooks, {len(todo)} not yet in "
          f"{runs_dir()}/", file=sys.stderr)
    if compare_to:
        return _compare(plan, compare_to, runs_dir(), data, outputs=args.report_outputs)
    if export_to:
        from patchmix.companion.plan import export
        from patchmix.companion.reproduction import NOISE, scores_table, seed_noise

        # the seed spread a reproduction is judged against, recorded with the runs
        noise = seed_noise(scores_table(plan, runs_dir(), data))
        provenance = export(plan, runs_dir(), export_to, data, extra={NOISE: noise})
        kept = sum(r["weights"] for r in provenance["runs"])
        print(f"wrote {len(plan)} runs ({kept} with their weights) and {export_to.name}/"
              f"PROVENANCE.json to {export_to}", file=sys.stderr)
        return 0
    if logs:
        return _submit(todo, logs, args)
    if not args.run:
        for job in shown:
            print(job.command())
        return 0
    shipped = shipped_dir()  # how long each method trained there orders the pool
    earlier = sorted(shipped.iterdir()) if shipped is not None and shipped.is_dir() else []
    failed = run_local(longest_first(todo, earlier), main, workers=args.workers,
                       threads=args.threads)
    for job, code in failed:
        print(f"error: exit {code}: {job.command()}", file=sys.stderr)
    return 1 if failed else 0


def _compare(plan: list[Any], expected: Path, actual: Path, data: Any, *,
             outputs: bool = False) -> int:
    from patchmix.companion.report import project_root
    from patchmix.companion.reproduction import judge, outputs_lines, report

    judged = judge(plan, expected, actual, data)
    print(f"# the {len(plan)} runs in {actual}/ against those in {expected}/")
    print("\n".join(report(judged)))
    if outputs:
        print("\n".join(outputs_lines(project_root())))
    print(judged.verdict())
    return 0 if judged.passed else 1


def _submit(todo: list[Any], logs: Path, args: argparse.Namespace) -> int:
    from patchmix.companion.plan import submit

    parameters: dict[str, Any] = {"timeout_min": args.timeout_min}
    if args.gpus:
        parameters["gpus_per_node"] = args.gpus
    if args.partition:
        parameters["slurm_partition"] = args.partition
    submitted = submit(todo, logs, cluster=args.cluster, parameters=parameters)
    failed = 0
    for job, handle in zip(todo, submitted, strict=True):
        print(f"submitted {handle.job_id}: {job.command()}", flush=True)
    for job, handle in zip(todo, submitted, strict=True):
        try:
            handle.result()  # waits; raises when the run failed
            print(f"done {handle.job_id}: {job.label} seed {job.cfg.seed}", flush=True)
        except Exception as err:  # noqa: BLE001 - submitit's failures come in several types
            failed += 1
            last = str(err).strip().splitlines()[-1:] or ["failed"]
            print(f"error: {handle.job_id} ({job.command()}): {last[0]}", file=sys.stderr)
    return 1 if failed else 0


def _train(args: argparse.Namespace) -> int:
    from patchmix.config import profile, with_overrides
    from patchmix.data.loading import load_data
    from patchmix.engine.experiment import run
    from patchmix.engine.train import check_names, fit, resolve_device
    from patchmix.model import distributed

    overrides = list(args.overrides)
    for flag, key in ((args.method, "method.name"), (args.seed, "seed"), (args.data, "data.root")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = with_overrides(profile(args.profile), overrides)
    check_names(cfg)  # an unknown method or backbone, before any feature is computed
    # Under torchrun: join the job; rank 0 fills the feature cache before the others read it.
    job, _ = distributed.init_from_env(resolve_device(cfg.train.device))
    try:
        with distributed.main_first(job):
            data = load_data(cfg.data, progress=not args.quiet and job.is_main)
        if args.out:
            summary = {**fit(cfg, data, args.out, progress=not args.quiet), "run_dir": args.out}
        else:
            summary = run(cfg, data=data, progress=not args.quiet, shipped=False)  # runs/
    finally:
        distributed.shutdown()
    if not job.is_main:
        return 0
    origin = "SYNTHETIC data" if summary["synthetic"] else "data"
    print(f"{cfg.profile}/{cfg.method.name} seed {cfg.seed} on {origin} {summary['data']} "
          f"({summary['weights']} weights) → {summary['run_dir']}")
    for protocol, r in summary["protocols"].items():
        print(f"  {protocol:<10} epoch {r['epoch']:>3}  Sp {r['sp']:6.2f}  Se {r['se']:6.2f}  "
              f"Score {r['score']:6.2f}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from patchmix.data.loading import load_data
    from patchmix.engine.experiment import load_trained
    from patchmix.engine.metrics import format_scores
    from patchmix.engine.scoring import ALL, model_scores

    model, cfg = load_trained(args.checkpoint)
    data_cfg = dataclasses.replace(cfg.data, root=args.data) if args.data else cfg.data
    data = load_data(data_cfg, progress=False)
    by_part = model_scores(model, data, cfg.train.eval_batch_size)
    scores = by_part.get(ALL, next(iter(by_part.values())))["icbhi"]  # every part together
    if args.json:
        print(json.dumps({**scores, "data": data.root, "dataset": data.dataset.name,
                          "synthetic": data.synthetic, "parts": by_part}, indent=2))
        return 0
    origin = "SYNTHETIC " if data.synthetic else ""
    print(f"{scores['n']} {origin}test cycles of {data.describe()}")
    for part, of_part in by_part.items():
        for family, s in of_part.items():
            text = (format_scores(s) if family == "icbhi" else
                    f"Sp {s['sp']:.2f} · Se {s['se']:.2f} · AS {s['as']:.2f} · HS {s['hs']:.2f}"
                    f" · Score {s['score']:.2f}")
            print(f"  {part:<11}{s['n']:>6} cycles  {FAMILY_TITLES[family]:<9}{text}")
    return 0


FAMILY_TITLES = {"icbhi": "ICBHI", "sprsound": "SPRSound"}


def _predict(args: argparse.Namespace) -> int:
    from patchmix.data.audio import recording_cycles, wav_info
    from patchmix.data.dataset import CLASSES
    from patchmix.data.errors import DataError
    from patchmix.data.features import fbank
    from patchmix.data.icbhi import read_annotation
    from patchmix.engine.experiment import load_trained
    from patchmix.engine.train import predict_proba

    model, cfg = load_trained(args.checkpoint)
    feats_cfg = cfg.data.features
    if args.annotations:
        cycles = read_annotation(args.annotations)
        if not cycles:  # a header and no rows would read as a prediction of nothing
            raise DataError(f"{args.annotations}: no cycle annotated (expected lines 'start end "
                            "crackle wheeze'); leave out --annotations to predict 8 s windows")
        starts, ends = [c[1] for c in cycles], [c[2] for c in cycles]
        truth = [CLASSES[c[3] + 2 * c[4]] for c in cycles]
    else:
        duration = wav_info(args.wav).duration
        starts = [k * feats_cfg.cycle_seconds for k in range(
            max(1, int(-(-duration // feats_cfg.cycle_seconds))))]
        ends = [min(s + feats_cfg.cycle_seconds, duration) for s in starts]
        truth = []
    x = fbank(recording_cycles(args.wav, starts, ends, feats_cfg), feats_cfg).numpy()
    probs = predict_proba(model, x, np.arange(len(x)), cfg.train.eval_batch_size)
    names = CLASSES[:probs.shape[1]]
    print(f"{'start':>8}{'end':>8}" + "".join(f"{n:>9}" for n in names) + f"  {'predicted':<10}"
          + ("true" if truth else ""))
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        print(f"{s:8.3f}{e:8.3f}" + "".join(f"{p:9.3f}" for p in probs[i])
              + f"  {names[int(probs[i].argmax())]:<10}" + (truth[i] if truth else ""))
    return 0


MAX_PROBLEMS = 20  # a report with more lists only the first few of each kind
PROBLEMS_PER_KIND = 3


def format_report(report: dict[str, Any]) -> str:
    """`patchmix data check`'s report as aligned plain-text tables: the counts every data set
    reports, then whichever of a data set's own details it has."""
    from patchmix.data.dataset import CLASSES

    splits = list(report["recordings"])
    origin = "SYNTHETIC (patchmix synth)" if report["synthetic"] else "recordings on disk"
    lines = [f"data: {report['root']}  [{origin}]"]
    for title, key in (("split file", "split_file"), ("layout", "layout")):
        if report.get(key):
            lines.append(f"{title}: {report[key]}")
    w = max(8, *(len(s) + 2 for s in splits))  # the split column fits test_intra
    header = f"{'split':<{w}}{'recordings':>11}{'patients':>9}" + "".join(
        f"{c:>9}" for c in CLASSES) + f"{'cycles':>8}"
    lines += ["", header, "-" * len(header)]
    for s in splits:
        counts = report["cycles"][s]
        lines.append(f"{s:<{w}}{report['recordings'][s]:>11}{report['patients'][s]:>9}"
                     + "".join(f"{counts[c]:>9}" for c in CLASSES)
                     + f"{sum(counts.values()):>8}")
    lines.append(f"{'total':<{w}}{sum(report['recordings'].values()):>11}{'':>9}" + "".join(
        f"{sum(report['cycles'][s][c] for s in splits):>9}" for c in CLASSES)
        + f"{report['total_cycles']:>8}")
    # a data set's own label tables (SPRSound: its seven event types and five record labels)
    for title, key in (("events by type", "events"), ("records by label", "record_labels")):
        if key in report:
            names = list(next(iter(report[key].values()), {}))
            first = max(w, len(title) + 2)
            lines += ["", f"{title:<{first}}" + "".join(f"{n:>{len(n) + 2}}" for n in names)]
            lines += [f"{s:<{first}}" + "".join(f"{report[key][s][n]:>{len(n) + 2}}"
                                                 for n in names) for s in report[key]]
    lines.append("")
    for title, key in (("devices", "devices"), ("sample rates", "sample_rates"),
                       ("bit depths", "bit_depths")):
        for s in splits if key in report else ():
            items = ", ".join(f"{k} {v}" for k, v in report[key][s].items())
            lines.append(f"{title + ' (' + s + ')':<{w + 16}}{items}")
    d = report.get("cycle_seconds")
    if d:
        lines.append(f"{'cycle length (s)':<24}min {d['min']}, median {d['median']}, "
                     f"max {d['max']}, {d['over_8s']} over 8 s")
    if "patients_in_several_splits" in report:
        shared = report["patients_in_several_splits"]
        lines.append(f"{'patients in 2 splits':<24}{', '.join(map(str, shared)) or 'none'}")
    for s, n in report.get("patients_also_in_train", {}).items():
        lines.append(f"{'patients also in train':<24}{s}: {n} of {report['patients'][s]}")
    for title, key in (("renamed files mapped", "renamed"),
                       ("cycles clamped at end", "clamped_cycles"),
                       ("ignored files", "ignored_files"),
                       ("ignored folders", "ignored_folders"),
                       ("split-file names absent", "split_only")):
        if key in report:
            value = report[key]
            lines.append(f"{title:<24}{len(value) if isinstance(value, list) else value}")
    problems = report["problems"]
    lines.append(f"{'problems':<24}{len(problems)}")
    by_kind: dict[str, list[dict[str, str]]] = {}
    for p in problems:
        by_kind.setdefault(p["kind"], []).append(p)
    for kind, of_kind in by_kind.items():
        # a long list (the full SPRSound has 187 Poor Quality records) shows its first few;
        # --json has them all
        shown = of_kind if len(problems) <= MAX_PROBLEMS else of_kind[:PROBLEMS_PER_KIND]
        lines += [f"  - {p['file']}: {p['detail']} ({p['action']})" for p in shown]
        if len(shown) < len(of_kind):
            lines.append(f"  … and {len(of_kind) - len(shown)} more {kind} (--json lists all)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
