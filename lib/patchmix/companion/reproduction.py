"""Whether a set of retrained runs reproduces another: one verdict at the precision reported.

A run retrained on another CPU model, or on the same one with another thread count, rounds its
sums differently in the last bits, and over 30 epochs such differences can grow into other
predictions. Bit-identity therefore holds on one CPU model only. `judge` compares every run of
a plan with its twin (e.g. ``shipped/``) as the tables report them:

- **per run**, the test Sp, Se and Score of each selection protocol;
- **per table row**, the seed means of each configuration (a method or an ablation setting),
  which is what the notebooks' tables show, and whether the new mean lies in the patient-
  bootstrap 95 % interval of the old one.

The tolerance comes from the spread the project measures anyway, the seed-to-seed spread
(`seed_noise`): for each protocol and metric, the pooled sample sd σ over the configurations
trained with two or more seeds, with ν degrees of freedom. A retrained run starts from the same
seed, so it can at most land as far from its twin as a run of another seed lands: two
independent draws differ by a standard deviation of √2 σ. A number passes when it lies within
the two-sided 99.73 % prediction bound of such a difference (the 3σ level), which for an sd
estimated from ν degrees of freedom is Student's t: ``k · √2 · σ`` for one run and
``k · √(2 / n) · σ`` for a mean over n seeds, k = t(ν) at 0.99865 (4.53 for ν = 7, → 3 as ν
grows). docs/evaluation.md#reproducing-a-run gives the measurements that justify the rule (the
cross-CPU and thread-count differences all fall inside it) and what it cannot see.

The verdict is one of three: ``reproduced to the last bit`` (every epoch's metrics and every
prediction file equal), ``reproduced within noise`` (every number within its tolerance) — both
pass — or ``not reproduced``, with a table of what lies outside (or is missing). `changed_outputs`
says which committed outputs a reproduction rewrote and whether a reported number moved.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from patchmix.companion.plan import compare, data_of
from patchmix.config import config_hash, result_config
from patchmix.engine.experiment import bootstrap_intervals, run_key
from patchmix.engine.integrity import PROVENANCE
from patchmix.engine.train import PROTOCOLS, finished

METRICS: tuple[str, ...] = ("sp", "se", "score")
COVERAGE = 0.9973  # two-sided: the share of differences within ±3 sd of a normal noise
NOISE = "noise"  # the key of the noise scale in a shipped set's PROVENANCE.json


def group_of(cfg: Any) -> str:
    """The configuration a run repeats over seeds (a table row): the hash of what decides its
    numbers (`patchmix.config.result_config`), seed left out."""
    return config_hash(dataclasses.replace(result_config(cfg), seed=0))


def run_scores(run_dir: Path) -> dict[str, dict[str, float]] | None:
    """``{protocol: {"sp", "se", "score", "epoch"}}`` of a finished run's ``summary.json``,
    else None."""
    summary = finished(run_dir, weights=False)
    if summary is None:
        return None
    return {p: {**{m: float(summary["protocols"][p][m]) for m in METRICS},
                "epoch": int(summary["protocols"][p]["epoch"])}
            for p in PROTOCOLS if p in summary["protocols"]}


def scores_table(plan: Sequence[Any], runs: Path, data: Any) -> pd.DataFrame:
    """One row per job of `plan` × protocol with its scores from the run cache `runs`: columns
    ``label, seed, group, run, protocol, sp, se, score, epoch`` (no rows for a run not
    finished; ``epoch`` is the one the protocol chose).
    `data` as `patchmix.companion.plan.data_of` takes it."""
    rows = []
    for job in plan:
        key = run_key(job.cfg, data_of(data, job))
        for protocol, scores in (run_scores(runs / key) or {}).items():
            rows.append({"label": job.label, "seed": job.cfg.seed, "group": group_of(job.cfg),
                         "run": key, "protocol": protocol, **scores})
    return pd.DataFrame(rows, columns=["label", "seed", "group", "run", "protocol", *METRICS,
                                       "epoch"])


def _plan_order(frame: pd.DataFrame, plan: Sequence[Any], data: Any) -> pd.DataFrame:
    """`frame` (with a ``run`` column) in the order of `plan`'s jobs, then of `PROTOCOLS`."""
    order = {run_key(job.cfg, data_of(data, job)): n for n, job in enumerate(plan)}
    rank = frame["run"].map(order) * len(PROTOCOLS) + frame["protocol"].map(
        {p: n for n, p in enumerate(PROTOCOLS)})
    return frame.assign(_rank=rank).sort_values("_rank", kind="stable").drop(
        columns="_rank").reset_index(drop=True)


def seed_noise(scores: pd.DataFrame) -> dict[str, Any]:
    """The seed-to-seed noise scale of a `scores_table`: per protocol and metric, the pooled
    sample sd over the configurations with ≥ 2 seeds (√ of the degrees-of-freedom-weighted
    mean of their variances), and those degrees of freedom.

    Returns ``{"sd": {protocol: {metric: σ}}, "dof": {protocol: ν}, "configurations": n,
    "runs": n, "rule": text}``; ``sd`` is empty when no configuration has two seeds (nothing
    to judge noise by).
    """
    sd: dict[str, dict[str, float]] = {}
    dofs: dict[str, int] = {}
    groups = scores.groupby(["group", "protocol"])
    for protocol in PROTOCOLS:
        chosen = [g for (_, p), g in groups if p == protocol and len(g) >= 2]
        if not chosen:
            continue
        dof = sum(len(g) - 1 for g in chosen)
        sd[protocol] = {m: round(math.sqrt(sum(g[m].var(ddof=1) * (len(g) - 1)
                                               for g in chosen) / dof), 4) for m in METRICS}
        dofs[protocol] = dof
    repeated = scores[scores["group"].map(scores.groupby("group")["seed"].nunique()) >= 2]
    return {"sd": sd, "dof": dofs, "configurations": int(repeated["group"].nunique()),
            "runs": int(repeated["run"].nunique()),
            "rule": "a number passes within k · √(2/n) · sd of its twin (n: seeds averaged, "
                    f"1 for a run), k = Student's t(dof) at {1 - (1 - COVERAGE) / 2:.5f}; sd "
                    "pooled over the configurations trained with several seeds"}


def factor(dof: int) -> float:
    """k of the tolerance: the two-sided `COVERAGE` quantile of Student's t with `dof`
    degrees of freedom (4.53 for 7, 3.00 in the limit)."""
    return float(stats.t.ppf(1 - (1 - COVERAGE) / 2, dof))


def tolerance(noise: dict[str, Any], protocol: str, metric: str, seeds: int = 1) -> float:
    """How far a number of `protocol` may lie from its twin: ``k · √(2 / seeds) · σ`` (NaN
    without a noise scale for the protocol)."""
    sd = noise.get("sd", {}).get(protocol, {}).get(metric, math.nan)
    dof = noise.get("dof", {}).get(protocol, 0)
    return factor(dof) * math.sqrt(2 / seeds) * sd if dof else math.nan


@dataclass
class Judgement:
    """What `judge` found: the per-run and per-row comparisons, and the verdict."""

    runs: pd.DataFrame  # one row per run × protocol × metric
    rows: pd.DataFrame  # one row per configuration × protocol × metric (seed means)
    bits: int  # runs identical to the last bit
    missing: list[str]  # "label seed N (run key): missing in …" per run absent on either side
    noise: dict[str, Any]
    n_runs: int

    @property
    def outside(self) -> pd.DataFrame:
        """Every compared number beyond its tolerance (or outside the bootstrap interval)."""
        runs = self.runs[~self.runs["ok"]].assign(kind="run", seeds=1)
        rows = self.rows[~self.rows["ok"]].assign(kind="seed mean")
        both = pd.concat([runs, rows], ignore_index=True)
        # one text column: a run's seed, or the seeds a mean is over
        both["seed"] = [str(int(s)) if s == s else f"mean of {n}"
                        for s, n in zip(both.get("seed", [math.nan] * len(both)),
                                        both["seeds"], strict=True)]
        return both

    @property
    def passed(self) -> bool:
        return not self.missing and (self.bits == self.n_runs or (
            bool(self.noise.get("sd")) and self.outside.empty))

    def verdict(self) -> str:
        """The one line a reproduction ends with."""
        if self.missing:
            return (f"not reproduced: {len(self.missing)} of {self.n_runs} runs missing "
                    f"(first: {self.missing[0]})")
        if self.bits == self.n_runs:
            return f"reproduced to the last bit ({self.n_runs} of {self.n_runs} runs identical)"
        if not self.noise.get("sd"):
            return (f"not reproduced: {self.n_runs - self.bits} of {self.n_runs} runs differ "
                    "and no configuration has two seeds to judge the noise by")
        if not self.outside.empty:
            return (f"not reproduced: {len(self.outside)} numbers lie outside their tolerance "
                    "(table above)")
        worst = self.runs.loc[_share(self.runs).idxmax()]
        moved = self.runs.loc[self.runs["epoch"].str.contains("→"), "run"].nunique()
        return (f"reproduced within noise (largest difference "
                f"{worst['new'] - worst['compared']:+.2f} points, {worst['label']} seed "
                f"{worst['seed']}, {worst['protocol']} {_NAMES[worst['metric']]}; tolerance "
                f"±{worst['tolerance']:.2f}; {self.bits} of {self.n_runs} runs identical to the "
                "last bit" + (f"; {moved} chose another epoch under best_test or val, held "
                              "against the twin's numbers at that epoch" if moved else "")
                + ")")


_NAMES = {"sp": "Sp", "se": "Se", "score": "Score"}


def judge(plan: Sequence[Any], expected: Path, actual: Path, data: Any, *,
          noise: dict[str, Any] | None = None, n_boot: int = 1000) -> Judgement:
    """Compare each job's run in `actual` with its twin in `expected` (run caches or shipped
    sets) at the precision reported; `noise` (`seed_noise`) defaults to the one recorded in
    `expected`'s ``PROVENANCE.json``, else to that of `expected`'s own runs."""
    bits = compare(plan, expected, actual, data)  # first: it verifies shipped sets' checksums
    old, new = scores_table(plan, expected, data), scores_table(plan, actual, data)
    noise = noise if noise is not None else _recorded_noise(expected) or seed_noise(old)
    missing = [f"{r['label']} seed {r['seed']} ({r['run']}): missing in "
               f"{expected if r['run'] not in set(old['run']) else actual}"
               for r in bits if r["status"] == "missing"]
    same = sum(r["status"] == "same" for r in bits)
    runs = _plan_order(_per_run(old, new, noise, expected), plan, data)
    runs.insert(3, "bits", runs["run"].map({r["run"]: r["status"] for r in bits}))
    rows = _per_row(old, new, noise, expected, n_boot)
    return Judgement(runs, rows, same, missing, noise, len(plan))


def _recorded_noise(folder: Path) -> dict[str, Any] | None:
    try:
        noise = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))[NOISE]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return noise if isinstance(noise, dict) and noise.get("sd") else None


SELECTING: tuple[str, ...] = ("best_test", "val")
"""The protocols that choose an epoch by a Score. When a retrained run's choice falls on
another epoch of about the same Score, the numbers it reports are that epoch's, which can
differ from the twin's chosen epoch by tens of points: they are compared with the twin's at
that same epoch (its ``metrics.jsonl``) instead (`held_at_epoch`)."""


def held_at_epoch(protocol: str, metric: str) -> bool:
    """Whether a protocol's `metric`, where the chosen epoch moved, is held against the twin's
    value at the epoch chosen now: Sp and Se of both selecting protocols, and val's test Score,
    which the choice does not look at (it maximises the validation Score). best_test's Score is
    the very maximum chosen over, which an epoch's flip barely moves: it is compared as
    reported."""
    return protocol in SELECTING and (metric != "score" or protocol == "val")


def _long(scores: pd.DataFrame) -> pd.DataFrame:
    return scores.melt(id_vars=["label", "seed", "group", "run", "protocol", "epoch"],
                       value_vars=list(METRICS), var_name="metric")


def _moved(frame: pd.DataFrame) -> pd.Series:
    """Rows whose number a selecting protocol took from another epoch than its twin's and
    that are held against the twin's at that epoch (`held_at_epoch`)."""
    held = [held_at_epoch(p, m) for p, m in zip(frame["protocol"], frame["metric"],
                                                strict=True)]
    return pd.Series(held, index=frame.index) & (frame["epoch_old"] != frame["epoch_new"])


def _at_epoch(run_dir: Path, epoch: float, metric: str) -> float:
    """A run's test `metric` at `epoch`, from its per-epoch history (NaN where it has none)."""
    try:
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            entry = json.loads(line) if line.strip() else {}
            if entry.get("epoch") == epoch:
                return float(entry[f"test_{metric}"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return math.nan


def _per_run(old: pd.DataFrame, new: pd.DataFrame, noise: dict[str, Any],
             expected: Path) -> pd.DataFrame:
    """Each run's numbers against its twin's, within the tolerance; ``compared`` is the twin's
    value they are held against: the one it reports, or, where a selecting protocol chose
    another epoch, its value at the epoch this run chose (`held_at_epoch`)."""
    both = _long(old).merge(_long(new), on=["label", "seed", "group", "run", "protocol",
                                            "metric"], how="outer", suffixes=("_old", "_new"))
    both = both[both["run"].isin(set(old["run"]) & set(new["run"]))]  # missing runs: apart
    both["diff"] = both["value_new"] - both["value_old"]
    both["tolerance"] = [tolerance(noise, p, m) for p, m in zip(both["protocol"],
                                                                 both["metric"], strict=True)]
    moved = _moved(both)
    both["compared"] = both["value_old"].where(~moved, [
        _at_epoch(expected / r, e, m) if flag else math.nan
        for r, e, m, flag in zip(both["run"], both["epoch_new"], both["metric"], moved,
                                 strict=True)])
    gap = both["value_new"] - both["compared"]
    # a protocol one side has and the other lacks (best_test needs an epoch with Se > 5)
    # is a reported number that appeared or vanished: NaN, outside
    both["ok"] = (gap.abs() <= both["tolerance"]) | (gap == 0)
    both["epoch"] = [f"{a:.0f}" if a == b else f"{a:.0f} → {b:.0f}"
                     for a, b in zip(both["epoch_old"], both["epoch_new"], strict=True)]
    return both.rename(columns={"value_old": "old", "value_new": "new"})[
        ["label", "seed", "run", "protocol", "epoch", "metric", "old", "new", "diff",
         "compared", "tolerance", "ok"]].reset_index(drop=True)


def _per_row(old: pd.DataFrame, new: pd.DataFrame, noise: dict[str, Any], expected: Path,
             n_boot: int) -> pd.DataFrame:
    """Seed means per configuration × protocol × metric, with the old mean's bootstrap
    interval (the runs' predictions, patients resampled): the new mean must lie in it and
    within the tolerance of a mean. Where a selecting protocol chose other epochs (`_per_run`),
    the means `held_at_epoch` are held against the twins' values at those epochs instead, within
    the tolerance (the interval is the old epochs')."""
    common = set(old["run"]) & set(new["run"])
    old, new = old[old["run"].isin(common)], new[new["run"].isin(common)]
    rows = []
    for (group, protocol), runs in old.groupby(["group", "protocol"], sort=False):
        twins = new[(new["group"] == group) & (new["protocol"] == protocol)]
        if len(twins) != len(runs):  # the protocol vanished on one side: `_per_run` has it
            continue
        table = runs.assign(method=group, run_dir=[str(expected / r) for r in runs["run"]])
        ci = bootstrap_intervals(table, protocol, n_boot=n_boot).iloc[0]
        chosen = twins.set_index("run")["epoch"]
        moved = protocol in SELECTING and not (runs.set_index("run")["epoch"] == chosen).all()
        for m in METRICS:
            reported, after = runs[m].mean(), twins[m].mean()
            tol = tolerance(noise, protocol, m, len(runs))
            inside = ci[f"{m}_lo"] <= after <= ci[f"{m}_hi"] or reported == after
            compared = reported
            if moved and held_at_epoch(protocol, m):  # the twins at the epochs chosen now
                compared = sum(_at_epoch(expected / r, chosen[r], m)
                               for r in runs["run"]) / len(runs)
                inside = True
            rows.append({"label": runs["label"].iloc[0], "seeds": len(runs),
                         "protocol": protocol, "metric": m, "old": reported, "new": after,
                         "compared": compared, "tolerance": tol,
                         "ci_lo": ci[f"{m}_lo"], "ci_hi": ci[f"{m}_hi"], "in_ci": inside,
                         "ok": bool(abs(after - compared) <= tol or after == compared)
                         and inside})
    return pd.DataFrame(rows, columns=["label", "seeds", "protocol", "metric", "old", "new",
                                       "compared", "tolerance", "ci_lo", "ci_hi", "in_ci",
                                       "ok"])


def noise_table(noise: dict[str, Any], seeds: int = 2) -> pd.DataFrame:
    """The noise scale and the tolerances it gives, one row per protocol × metric."""
    return pd.DataFrame([{"protocol": p, "metric": m, "seed_sd": sd,
                          "dof": noise["dof"][p], "k": factor(noise["dof"][p]),
                          "per_run": tolerance(noise, p, m),
                          f"per_mean_of_{seeds}": tolerance(noise, p, m, seeds)}
                         for p, by in noise.get("sd", {}).items() for m, sd in by.items()])


def tolerance_markdown(noise: dict[str, Any]) -> str:
    """`noise_table` as docs/evaluation.md shows it (a test keeps that copy equal to the
    shipped runs' noise scale)."""
    from patchmix.companion.report import markdown_table  # noqa: PLC0415

    table = noise_table(noise).drop(columns=["dof", "k"])
    table["metric"] = table["metric"].map(_NAMES)
    table = table.rename(columns={"seed_sd": "seed sd σ", "per_run": "per run",
                                  "per_mean_of_2": "per mean of 2 seeds"})
    return markdown_table(table, floatfmt=".2f")


def report(j: Judgement) -> list[str]:
    """The lines `patchmix plan --compare` prints before the verdict: the tolerances, the
    per-run summary and, when something lies outside, the table of it."""
    from patchmix.companion.report import markdown_table  # noqa: PLC0415

    dof = sorted(set(j.noise.get("dof", {}).values()))
    lines = [f"noise scale: the seed-to-seed sd of {j.noise.get('configurations', 0)} "
             f"configurations ({j.noise.get('runs', 0)} runs); {j.noise.get('rule', '')}"
             + "".join(f" (k = {factor(d):.2f} for {d} dof)" for d in dof)]
    if j.noise.get("sd"):
        lines += ["", tolerance_markdown(j.noise)]
    if not j.runs.empty:
        ratio = j.runs.assign(share=_share(j.runs))
        worst = ratio.loc[ratio.groupby("run", sort=False)["share"].idxmax()]
        shown = worst.assign(metric=worst["metric"].map(_NAMES),
                             used=[f"{x:.0%}" for x in worst["share"]])
        lines += ["", "per run, the number nearest its tolerance (compared: the twin's value it "
                      "is held against, at the epoch this run chose):", "",
                  markdown_table(shown[["label", "seed", "run", "bits", "protocol", "epoch",
                                        "metric", "old", "new", "compared", "tolerance",
                                        "used"]], floatfmt=".2f")]
    if not j.outside.empty:
        lines += ["", "OUTSIDE the tolerance:", "",
                  markdown_table(j.outside[["kind", "label", "seed", "protocol",
                                            "metric", "old", "new", "compared", "tolerance",
                                            "ci_lo", "ci_hi"]], floatfmt=".2f")]
    lines += [f"missing: {m}" for m in j.missing]
    return lines


def _share(runs: pd.DataFrame) -> pd.Series:
    """How much of its tolerance each compared number uses (0 where it is equal)."""
    gap = (runs["new"] - runs["compared"]).abs()
    return (gap / runs["tolerance"]).where(gap != 0, 0.0).fillna(0.0)


# --- the working tree after a reproduction -------------------------------------------------

OUTPUT_FOLDERS: tuple[str, ...] = ("figures", "results", "docs/notebooks")
"""The committed outputs `make reproduce` rewrites in place (``git diff`` shows what moved)."""


def changed_outputs(root: Path) -> dict[str, list[str]] | None:
    """The committed outputs that differ from the commit, by folder of `OUTPUT_FOLDERS`
    (``git status`` of the checkout at `root`), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", *OUTPUT_FOLDERS],
                             cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    changed: dict[str, list[str]] = {f: [] for f in OUTPUT_FOLDERS}
    for line in out.splitlines():
        path = line[3:].strip().strip('"')
        folder = next((f for f in OUTPUT_FOLDERS if path.startswith(f + "/")), None)
        if folder:
            changed[folder].append(path)
    return changed


def outputs_lines(root: Path) -> list[str]:
    """What a reproduction did to the committed outputs, in two lines: which files changed,
    and whether a reported number did (results are written at the precision reported, so a
    changed file under ``results/`` is a changed number)."""
    changed = changed_outputs(root)
    if changed is None:
        return ["committed outputs: not a git checkout, so no list of what changed"]
    total = sum(map(len, changed.values()))
    if not total:
        return ["committed outputs: none changed (git status is clean for "
                f"{', '.join(f + '/' for f in OUTPUT_FOLDERS)})",
                "reported numbers: none changed"]
    parts = ", ".join(f"{f}/ {len(v)}" for f, v in changed.items() if v)
    lines = [f"committed outputs: {total} files rewritten with other bytes ({parts}); "
             "git diff shows them, git checkout -- figures results docs/notebooks restores "
             "the committed ones"]
    results = changed["results"]
    if results:
        lines.append(f"reported numbers: changed in {len(results)} files: "
                     + ", ".join(results))
    else:
        lines.append("reported numbers: none changed (results/ as committed; the other files "
                     "differ in pixels or in values computed on this CPU)")
    return lines
