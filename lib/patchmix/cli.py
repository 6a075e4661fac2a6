"""The ``patchmix`` command line.

Exit status: 0 on success, 2 on bad input with one line on stderr naming the file and the
problem (never a traceback), 1 when ``data check --strict`` finds skipped input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from patchmix import __version__


class _OneLineError(Exception):
    """Bad input or usage: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _OneLineError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
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

    synth = commands.add_parser("synth", help="write a synthetic data set in ICBHI's layout")
    synth.add_argument("out", help="output folder (created; a previous synthetic set is replaced)")
    synth.add_argument("--recordings", type=int, default=100, help="number of recordings")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patchmix`` script; returns the exit status."""
    from patchmix.icbhi import DataError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "data" and args.data_command == "check":
            return _data_check(args)
        if args.command == "data" and args.data_command == "features":
            return _data_features(args)
        if args.command == "synth":
            return _synth(args)
        parser.print_help()
        return 0 if args.command is None else 2
    except (_OneLineError, DataError, ValueError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"patchmix: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("patchmix: interrupted", file=sys.stderr)
        return 130


def _data_check(args: argparse.Namespace) -> int:
    from patchmix.icbhi import read_icbhi, summarize

    report = summarize(read_icbhi(args.root, args.split_file))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    skipped = [p for p in report["problems"] if p["action"] == "skipped"]
    return 1 if args.strict and skipped else 0


def _data_features(args: argparse.Namespace) -> int:
    from patchmix.features import cycle_features
    from patchmix.icbhi import read_icbhi

    cycles = read_icbhi(args.root, args.split_file)
    started = time.perf_counter()
    array = cycle_features(cycles, cache_dir=args.cache, workers=args.workers)
    seconds = time.perf_counter() - started
    print(f"{array.shape[0]} cycles → features {tuple(array.shape[1:])} in {seconds:.2f} s "
          f"({array.shape[0] / max(seconds, 1e-9):.0f} cycles/s): {array.filename}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from patchmix.synth import make_synthetic_icbhi

    summary = make_synthetic_icbhi(args.out, args.recordings, args.seed, progress=not args.quiet)
    print(f"wrote {summary.recordings} synthetic recordings of {summary.patients} patients "
          f"({sum(summary.cycles.values())} cycles) to {args.out} in {summary.seconds:.1f} s")
    return 0


def format_report(report: dict[str, Any]) -> str:
    """`patchmix data check`'s report as aligned plain-text tables."""
    from patchmix.icbhi import CLASSES

    splits = list(report["recordings"])
    origin = "SYNTHETIC (patchmix synth)" if report["synthetic"] else "recordings on disk"
    lines = [f"data: {report['root']}  [{origin}]", f"split file: {report['split_file']}", ""]
    header = f"{'split':<8}{'recordings':>11}{'patients':>9}" + "".join(
        f"{c:>9}" for c in CLASSES) + f"{'cycles':>8}"
    lines += [header, "-" * len(header)]
    for s in splits:
        counts = report["cycles"][s]
        lines.append(f"{s:<8}{report['recordings'][s]:>11}{report['patients'][s]:>9}"
                     + "".join(f"{counts[c]:>9}" for c in CLASSES)
                     + f"{sum(counts.values()):>8}")
    lines.append(f"{'total':<8}{sum(report['recordings'].values()):>11}{'':>9}" + "".join(
        f"{sum(report['cycles'][s][c] for s in splits):>9}" for c in CLASSES)
        + f"{report['total_cycles']:>8}")
    lines.append("")
    for title, key in (("devices", "devices"), ("sample rates", "sample_rates"),
                       ("bit depths", "bit_depths")):
        for s in splits:
            items = ", ".join(f"{k} {v}" for k, v in report[key][s].items())
            lines.append(f"{title + ' (' + s + ')':<24}{items}")
    d = report["cycle_seconds"]
    if d:
        lines.append(f"{'cycle length (s)':<24}min {d['min']}, median {d['median']}, "
                     f"max {d['max']}, {d['over_8s']} over 8 s")
    shared = report["patients_in_several_splits"]
    lines.append(f"{'patients in 2 splits':<24}{', '.join(map(str, shared)) or 'none'}")
    lines.append(f"{'renamed files mapped':<24}{report['renamed']}")
    lines.append(f"{'cycles clamped at end':<24}{report['clamped_cycles']}")
    lines.append(f"{'ignored files':<24}{len(report['ignored_files'])}")
    lines.append(f"{'split-file names absent':<24}{report['split_only']}")
    problems = report["problems"]
    lines.append(f"{'problems':<24}{len(problems)}")
    lines += [f"  - {p['file']}: {p['detail']} ({p['action']})" for p in problems]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
