"""Notebook outputs: figures, tidy tables and the index that maps them to their notebook.

Every file a notebook writes is named after it (``figures/02_baselines-curves.png``,
``results/02_baselines-scores.csv`` + ``.md``) and recorded in ``results/manifest.json`` with
the notebook, profile, data, weights and seeds that produced it; ``results/README.md`` is
regenerated from that manifest after every write, so it always describes the files on disk.
The paper's reference numbers live here too, as data.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from patchmix.atomic import atomic_path, exclusive, write_json_atomic, write_text_atomic
from patchmix.companion.notebook_runs import NOTEBOOK_RUNS
from patchmix.methods import method_label, method_with_role

NOTEBOOKS: tuple[str, ...] = tuple(NOTEBOOK_RUNS)  # the notebooks/ files, in reading order
INDEX_FILES: tuple[str, ...] = ("README.md", "manifest.json")  # in results/, not per notebook

# The paper's table (docs/evaluation.md#the-published-numbers): 4-class ICBHI official split,
# best-test-epoch protocol, in %. The paper's own rows come from the official scripts (seed 1);
# the other rows are as the paper cites them.
_NAN = float("nan")
PAPER_TABLE = pd.DataFrame([
    {"method": "AST fine-tuning (ImageNet + AudioSet)", "sp": 77.14, "se": 41.97, "score": 59.55,
     "seeds": 1, "weights": "ImageNet + AudioSet"},
    {"method": "AST + Patch-Mix CL (the paper)", "sp": 81.66, "se": 43.07, "score": 62.37,
     "seeds": 1, "weights": "ImageNet + AudioSet"},
    {"method": "ResNet50 co-tuning (previous best cited)", "sp": 79.34, "se": 37.24,
     "score": 58.29, "seeds": _NAN, "weights": "as cited"},
    {"method": "SCL, CNN6 AudioSet (2023)", "sp": 75.95, "se": 39.15, "score": 57.55,
     "seeds": _NAN, "weights": "AudioSet"},
    {"method": "RespireNet, official split", "sp": _NAN, "se": _NAN, "score": 56.2,
     "seeds": _NAN, "weights": "as cited"},
])
PAPER_2CLASS_SCORE = 68.71  # Patch-Mix CL, normal vs abnormal


def project_root(start: str | Path | None = None) -> Path:
    """The repository root: the nearest folder at or above `start` (default: the working
    directory) holding ``pyproject.toml`` and ``notebooks/``. Notebooks ``chdir`` there so
    their relative paths (``figures/``, ``runs/``, ``data/``) mean the same under papermill
    and in JupyterLab, which starts kernels in ``notebooks/``.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    raise FileNotFoundError(f"no patchmix checkout (pyproject.toml + notebooks/) at or above "
                            f"{here}")


def notebook_of(filename: str) -> str | None:
    """The notebook a figure/result file is named after, or None."""
    matches = [nb for nb in NOTEBOOKS if filename.startswith(nb + "-")]
    return matches[0] if len(matches) == 1 else None


@dataclass
class Outputs:
    """Where one notebook writes, and what it says about each file.

    ``context`` (profile, data, weights, seeds, …) is stored with every file in the manifest
    and printed above every Markdown table, so no number travels without its provenance.
    """

    notebook: str
    figures_dir: Path = Path("figures")
    results_dir: Path = Path("results")
    context: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.notebook not in NOTEBOOKS:
            raise ValueError(f"unknown notebook {self.notebook!r}; one of {', '.join(NOTEBOOKS)}")
        self.figures_dir, self.results_dir = Path(self.figures_dir), Path(self.results_dir)
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)

    def _name(self, stem: str, suffix: str) -> str:
        if not re.fullmatch(r"[a-z0-9_]+", stem):
            raise ValueError(f"output name {stem!r}: use lower-case letters, digits and _")
        return f"{self.notebook}-{stem}{suffix}"

    def figure(self, fig: Any, stem: str, description: str) -> None:
        """Save a matplotlib figure as ``figures/<notebook>-<stem>.png`` (atomically).

        Returns nothing, so that a notebook cell ending with this call shows the figure alone
        (the file is listed in the results index)."""
        path = self.figures_dir / self._name(stem, ".png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
        self._record(path, description)

    def table(self, frame: pd.DataFrame, stem: str, description: str, *,
              floatfmt: str = ".1f") -> None:
        """Write ``results/<notebook>-<stem>.csv`` (tidy) and a ``.md`` twin, both at the
        precision reported: `floatfmt`'s decimals.

        The Markdown copy opens with a line stating the context. Why the CSV is rounded too:
        at full precision, a number computed on another CPU model (a silhouette, a loss)
        differs in its 8th digit, and the committed file would change though no reported
        number did.
        """
        csv = self.results_dir / self._name(stem, ".csv")
        with atomic_path(csv) as tmp:
            reported(frame, floatfmt).to_csv(tmp, index=False)
        md = csv.with_suffix(".md")
        write_text_atomic(md, f"{description}\n\n{self.context_line()}\n\n"
                          f"{markdown_table(frame, floatfmt)}\n")
        self._record(csv, description)
        self._record(md, description + " (Markdown)")

    def text(self, markdown: str, stem: str, description: str) -> None:
        """Write Markdown prose as ``results/<notebook>-<stem>.md``, context line on top."""
        path = self.results_dir / self._name(stem, ".md")
        write_text_atomic(path, f"{description}\n\n{self.context_line()}\n\n{markdown}\n")
        self._record(path, description)

    def context_line(self) -> str:
        """``profile demo · data synthetic (…) · weights none · seeds 1, 2`` for table headers."""
        return " · ".join(f"{k} {v}" for k, v in self.context.items())

    def _record(self, path: Path, description: str) -> None:
        manifest_path = self.results_dir / "manifest.json"
        # notebooks run at once (`patchmix.companion.notebooks.run_all`) share the index: one at a
        # time
        with exclusive(_index_lock(self.results_dir), "a notebook writing the results index",
                       wait=True):
            manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
            folder = "figures" if path.parent == self.figures_dir else "results"
            manifest[f"{folder}/{path.name}"] = {"notebook": self.notebook,
                                                 "description": description, **self.context}
            manifest = dict(sorted(manifest.items()))
            write_json_atomic(manifest_path, manifest)
            write_text_atomic(self.results_dir / "README.md", results_readme(manifest))


def _index_lock(results_dir: Path) -> Path:
    """The folder whose lock guards `results_dir`'s index: in the temporary folder, so that
    no lock file lies among the outputs."""
    name = hashlib.sha256(str(results_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"patchmix-results-{name}"


def reported(frame: pd.DataFrame, floatfmt: str = ".1f") -> pd.DataFrame:
    """`frame` with its float columns rounded to the decimals of `floatfmt` (``".2f"`` → 2),
    as `markdown_table` shows them (``-0.0`` written as ``0.0``); a format without a
    fixed number of decimals leaves the frame as it is."""
    match = re.fullmatch(r"\.(\d+)f", floatfmt)
    if not match:
        return frame
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].round(int(match[1])) + 0.0  # + 0.0: no negative zero
    return out


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".1f") -> str:
    """A GitHub Markdown table of `frame` (floats formatted with `floatfmt`, NaN as –)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            text = "–" if v != v else format(v, floatfmt)
            # a number that rounds to zero is "0.00", as `reported` writes it, not "-0.00"
            return text[1:] if text.startswith("-") and not text.strip("-0.") else text
        return str(v).replace("|", "\\|")
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def results_readme(manifest: dict[str, dict[str, Any]]) -> str:
    """``results/README.md``: every output file with its notebook, profile, data and seeds."""
    lines = ["# Results and figures", "",
             "Generated by the notebooks (`make reproduce`); do not edit by hand. Each file is "
             "named after the notebook that writes it. Numbers from synthetic data are not "
             "ICBHI numbers.", "",
             "| file | notebook | what | profile | data | weights | seeds |",
             "|---|---|---|---|---|---|---|"]
    for name, info in manifest.items():
        link = f"../{name}" if name.startswith("figures/") else name.removeprefix("results/")
        lines.append("| [`{}`]({}) | `{}` | {} | {} | {} | {} | {} |".format(
            name, link, info["notebook"], info["description"],
            info.get("profile", "–"), info.get("data", "–"), info.get("weights", "–"),
            info.get("seeds", "–")))
    return "\n".join(lines) + "\n"


def roles(summary: pd.DataFrame, protocol: str = "last") -> dict[str, str]:
    """How the comparison tables name the part each method plays (method name → words).

    The paper's baseline (the official fine-tuning, class-weighted CE) and plain CE are both
    fine-tuning; whichever scores higher under `protocol` in `summary` is also called the
    stronger baseline, so the label follows the numbers of the run it describes.
    """
    paper, plain = method_with_role("paper_baseline"), method_with_role("reference")
    words = {paper.name: "the paper's baseline", plain.name: "plain CE",
             method_with_role("proposed").name: "the paper's method"}
    last = summary[summary["protocol"] == protocol].set_index("method")["score_mean"]
    if paper.name in last and plain.name in last:
        stronger = paper.name if last[paper.name] >= last[plain.name] else plain.name
        words[stronger] += ", the stronger baseline"
    return words


_PAPER_ROLES = ("the paper's baseline", "the paper's method")  # PAPER_TABLE's first two rows
_METRICS = ("sp", "se", "score")


def paper_comparison(summary: pd.DataFrame, *, data: str, weights: str,
                     labels: dict[str, str] | None = None,
                     protocols: tuple[str, ...] = ("best_test", "last", "val"),
                     intervals: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's Table-1 rows above this run's, one row per method × protocol.

    `summary` is `patchmix.engine.experiment.aggregate` output; `labels` names its methods (default:
    the method registry's labels); `intervals` (`patchmix.engine.experiment.bootstrap_intervals`,
    any protocols) adds each row's 95 % patient-bootstrap interval. Columns: ``source, method,
    compared_as`` (`roles`), ``protocol, sp, sp_sd, se, se_sd, score, score_sd, sp_lo, sp_hi,
    se_lo, se_hi, score_lo, score_hi, seeds, data, weights``; the paper's rows are its
    published best-test-epoch numbers on ICBHI (no sd or interval reported).
    """
    paper = PAPER_TABLE.assign(source="paper", protocol="best_test", data="ICBHI 2017 (published)",
                               compared_as=[*_PAPER_ROLES, *[""] * (len(PAPER_TABLE) - 2)])
    ours = summary[summary["protocol"].isin(protocols)].rename(columns={
        "sp_mean": "sp", "se_mean": "se", "score_mean": "score"})
    if intervals is not None:
        ours = ours.merge(intervals.drop(columns="n_valid", errors="ignore"),
                          on=["method", "protocol"], how="left")
    parts = roles(summary)
    ours = ours.assign(source="this run", data=data, weights=weights,
                       compared_as=[parts.get(m, "") for m in ours["method"]],
                       method=[(labels or {}).get(m) or method_label(m) for m in ours["method"]])
    bounds = [f"{m}_{end}" for m in _METRICS for end in ("lo", "hi")]
    columns = ["source", "method", "compared_as", "protocol", "sp", "sp_sd", "se", "se_sd",
               "score", "score_sd", *bounds, "seeds", "data", "weights"]
    table = pd.concat([paper, ours], ignore_index=True).reindex(columns=columns)
    table["seeds"] = ["–" if n != n else str(int(n)) for n in table["seeds"]]  # not "2.00"
    return table


def with_sd(frame: pd.DataFrame, metrics: tuple[str, ...] = _METRICS) -> pd.DataFrame:
    """`frame` with each metric (``sp`` or ``sp_mean``), its ``sp_sd`` and, when present, its
    interval ``sp_lo``/``sp_hi`` merged into one ``"61.20 ± 1.30 [58.4, 63.9]"`` string column
    named after the metric."""
    out = frame.copy()
    for m in metrics:
        sd = out.pop(f"{m}_sd")
        mean = out.pop(f"{m}_mean") if f"{m}_mean" in out else out[m]
        lo, hi = (out.pop(f"{m}_{end}") if f"{m}_{end}" in out else [_NAN] * len(out)
                  for end in ("lo", "hi"))
        out[m] = [("–" if v != v else f"{v:.2f}") + ("" if s != s else f" ± {s:.2f}")
                  + ("" if a != a else f" [{a:.1f}, {b:.1f}]")
                  for v, s, a, b in zip(mean, sd, lo, hi, strict=True)]
    return out


def _interval(intervals: pd.DataFrame | None, method: str, protocol: str) -> str:
    """`` (95 % CI 58.1–66.0)`` for a method's Score, or nothing without an interval."""
    if intervals is None:
        return ""
    rows = intervals[(intervals["method"] == method) & (intervals["protocol"] == protocol)]
    if not len(rows) or rows["score_lo"].iloc[0] != rows["score_lo"].iloc[0]:
        return ""
    return f" (95 % CI {rows['score_lo'].iloc[0]:.1f}–{rows['score_hi'].iloc[0]:.1f})"


def verdict(summary: pd.DataFrame, *, synthetic: bool, weights: str, profile: str,
            intervals: pd.DataFrame | None = None) -> str:
    """A plain-language reading of `aggregate` output: what this run shows and does not.

    Compares the paper's method (role ``proposed``) under the last-epoch protocol with the
    paper's baseline (``paper_baseline``) and with plain CE (``reference``), against the seeds'
    spread and, with `intervals` (`patchmix.engine.experiment.bootstrap_intervals`), beside each
    Score's patient-bootstrap interval; and measures what choosing the epoch on the test set adds.
    """
    def get(method: str, protocol: str) -> pd.Series | None:
        rows = summary[(summary["method"] == method) & (summary["protocol"] == protocol)]
        return rows.iloc[0] if len(rows) else None

    lines = []
    if synthetic or weights == "none":
        source = "synthetic data" if synthetic else "ICBHI"
        init = "a randomly initialised" if weights == "none" else f"a {weights}-initialised"
        lines.append(
            f"- **These are not ICBHI numbers.** This run used {source} and {init}"
            f" model (profile `{profile}`). The paper's rows are shown as the reference they"
            " are not meant to match.")
    proposed = method_with_role("proposed")
    cl = get(proposed.name, "last")
    parts = roles(summary)
    for role in ("paper_baseline", "reference"):
        other = method_with_role(role)
        ce = get(other.name, "last")
        if cl is None or ce is None:
            continue
        diff = cl["score_mean"] - ce["score_mean"]
        spread = max(cl["score_sd"], ce["score_sd"])
        if spread != spread:
            judged = "with one seed there is no spread to judge it against"
        elif abs(diff) > 2 * spread:
            judged = f"more than twice the larger seed sd ({spread:.2f})"
        else:
            judged = f"within about two seed sds ({spread:.2f}): not evidence either way"
        lines.append(
            f"- Last epoch, against {parts[other.name]} ({other.short}): {proposed.label} scores "
            f"{cl['score_mean']:.2f}{_interval(intervals, proposed.name, 'last')} and "
            f"{other.short} {ce['score_mean']:.2f}{_interval(intervals, other.name, 'last')}, "
            f"a difference of {diff:+.2f} points, {judged}.")
    if intervals is not None and cl is not None:
        lines.append("- The intervals resample the test patients (1,000 draws, the seeds' mean "
                     "each time): how far a Score could move with other patients, on top of "
                     "the seed spread above.")
    best = get(proposed.name, "best_test")
    if best is not None and cl is not None:
        lines.append(f"- Choosing the epoch on the test set (the published protocol) adds "
                     f"{best['score_mean'] - cl['score_mean']:+.2f} points to {proposed.label}'s "
                     "Score over the last epoch: that gain is selection, not learning.")
    lines.append("- What this run does not show: whether the paper's ICBHI numbers reproduce "
                 "(that needs `make reproduce PROFILE=paper ICBHI_ROOT=… WEIGHTS=…` on a GPU "
                 "and ≥ 5 seeds).")
    return "\n".join(lines)


def _provenance(data: str, weights: str) -> str:
    """A table1 row's data and weights in the words of the README's key table."""
    if data.startswith("ICBHI 2017 (published)"):
        return f"ICBHI 2017, {weights} pretrained"
    kind = "synthetic data" if "synthetic" in data else "ICBHI 2017"
    return f"{kind}, trained from scratch" if weights == "none" else f"{kind}, {weights} weights"


def readme_table(table1_csv: str | Path) -> str:
    """The key table the README shows, cut from ``results/05_paper_tables-table1.csv``.

    The paper's two AST rows, then this run's paper baseline (weighted CE), plain CE and
    Patch-Mix CL under the published and the last-epoch protocols, each saying on which data
    and weights it was obtained, as Markdown; a test keeps the README's copy equal to it, so the
    README never shows numbers the last `make reproduce` did not produce.
    """
    ours = [method_with_role(r).label for r in ("paper_baseline", "reference", "proposed")]
    table = pd.read_csv(table1_csv, keep_default_na=True)
    keep = (table["method"].isin([*PAPER_TABLE["method"][:2], *ours])
            & table["protocol"].isin(["best_test", "last"]))
    shown = with_sd(table[keep])
    shown["data"] = [_provenance(d, w) for d, w in zip(shown["data"], shown["weights"],
                                                       strict=True)]
    shown["compared_as"] = shown["compared_as"].fillna("")
    shown["seeds"] = shown["seeds"].astype(str)  # "–" or a count, as paper_comparison wrote
    return markdown_table(shown[["source", "data", "method", "compared_as", "protocol", "sp",
                                 "se", "score", "seeds"]])
