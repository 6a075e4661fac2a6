"""Every notebook end to end in the `smoke` profile through papermill, and the output rules.

The five notebooks run in order on a small synthetic set, with their own run cache, feature cache
and output folders under a temporary directory (the repository's `figures/` and `results/` are
never touched). Then: every output file is named after exactly one notebook, every notebook wrote
something, and the manifest and results README describe exactly the files on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
from conftest import in_ci, sprsound_mini_root

from patchmix.companion.notebook_runs import NOTEBOOK_DATA
from patchmix.companion.notebooks import execute
from patchmix.companion.report import INDEX_FILES, NOTEBOOKS, notebook_of, readme_table
from patchmix.data.synth import make_synthetic_icbhi

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run all notebooks once (smoke profile) and return where everything went. Notebook 06
    runs on the SPRSound subset (`sprsound_mini_root`); without it, 06 is left out (in CI its
    absence fails)."""
    sprsound = sprsound_mini_root()
    if sprsound is None and in_ci():
        pytest.fail("CI needs the SPRSound subset for notebook 06 (set SPRSOUND_MINI)")
    names = [n for n in NOTEBOOKS if n not in NOTEBOOK_DATA or sprsound is not None]
    base = tmp_path_factory.mktemp("notebooks")
    data = make_synthetic_icbhi(base / "data", n_recordings=16, seed=3, progress=False).root
    env = {"PATCHMIX_CACHE": str(base / "cache"), "PATCHMIX_RUNS": str(base / "runs")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    figures, results, executed_dir = base / "figures", base / "results", base / "executed"
    executed_dir.mkdir()
    errors, run_counts = {}, {}
    try:
        for name in names:
            try:
                execute(name, {"PROFILE": "smoke", "DATA_ROOT": str(data),
                               "SPRSOUND_ROOT": str(sprsound),
                               "FIGURES_DIR": str(figures), "RESULTS_DIR": str(results)},
                        notebook_dir=NOTEBOOK_DIR, executed_dir=executed_dir, html=False,
                        timeout=600)
            except RuntimeError as err:
                errors[name] = str(err)
            runs = base / "runs"
            run_counts[name] = len(list(runs.iterdir())) if runs.is_dir() else 0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"figures": figures, "results": results, "executed": executed_dir,
            "errors": errors, "run_counts": run_counts, "names": names}


def test_every_notebook_runs_in_smoke(executed: dict) -> None:
    assert executed["errors"] == {}
    for name in executed["names"]:
        assert (executed["executed"] / f"{name}.ipynb").is_file()


def test_outputs_are_named_after_exactly_one_notebook(executed: dict) -> None:
    files = [p for d in ("figures", "results") for p in executed[d].iterdir()]
    assert files
    for path in files:
        if path.parent == executed["results"] and path.name in INDEX_FILES:
            continue
        assert notebook_of(path.name) is not None, path.name


def test_every_notebook_wrote_outputs_listed_in_the_manifest(executed: dict) -> None:
    manifest = json.loads((executed["results"] / "manifest.json").read_text())
    by_notebook = {nb: [f for f, info in manifest.items() if info["notebook"] == nb]
                   for nb in executed["names"]}
    assert all(by_notebook.values()), {nb: len(f) for nb, f in by_notebook.items()}
    on_disk = {f"{d}/{p.name}" for d in ("figures", "results") for p in executed[d].iterdir()
               if p.name not in INDEX_FILES}
    assert set(manifest) == on_disk
    assert any(f.endswith(".png") for f in manifest) and any(f.endswith(".csv") for f in manifest)
    readme = (executed["results"] / "README.md").read_text()
    for name, info in manifest.items():
        assert f"`{name}`" in readme
        assert info["profile"] == "smoke"
        assert ("SPRSound 2022" if info["notebook"] in NOTEBOOK_DATA else "synthetic") in \
            info["data"]


def test_the_real_data_notebook_scores_each_part_in_both_families(executed: dict) -> None:
    if "06_real_lung_sounds" not in executed["names"]:
        pytest.skip("no SPRSound subset (set SPRSOUND_MINI)")
    results = executed["results"]
    scores = pd.read_csv(results / "06_real_lung_sounds-scores.csv")
    last = scores[scores["protocol"] == "last"]
    assert set(last["part"]) == {"test_intra", "test_inter", "all"}
    assert set(last["family"]) == {"icbhi", "sprsound"}
    assert set(last["method"]) == {"weighted_ce", "ce", "patchmix_cl"}
    assert (last["seeds"] == 2).all() and last["score_lo"].notna().all()
    per_seed = pd.read_csv(results / "06_real_lung_sounds-scores_per_seed.csv")
    assert set(per_seed.query("part == 'test_inter'")["n"]) == {60}  # the subset's inter events
    cross = pd.read_csv(results / "06_real_lung_sounds-cross_dataset.csv")
    assert set(cross["trained_on"]) == {"SPRSound 2022", "synthetic stand-in, not ICBHI"}
    events = pd.read_csv(results / "06_real_lung_sounds-event_types.csv")
    assert events["total"].sum() == 289  # sprsound-mini's 197 + 32 + 60 events


def test_paper_tables_say_synthetic_and_show_the_paper(executed: dict) -> None:
    md = (executed["results"] / "05_paper_tables-table1.md").read_text()
    assert "62.37" in md and "59.55" in md  # the paper's rows, as reference
    assert "synthetic" in md
    verdict = (executed["results"] / "05_paper_tables-verdict.md").read_text()
    assert "not ICBHI numbers" in verdict


def test_notebooks_04_and_05_train_nothing_new(executed: dict) -> None:
    """04 and 05 read the runs 02 and 03 trained from the run cache."""
    counts = executed["run_counts"]
    assert counts["02_baselines"] > 0
    assert counts["03_patchmix_ablations"] > counts["02_baselines"]
    assert counts["05_paper_tables"] == counts["04_latent_umap"] == counts[
        "03_patchmix_ablations"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_and_parametrised(name: str) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all("parameters" not in c.metadata.get("tags", []) for c in code[1:])
    assert "PROFILE = " in code[0].source and "DATA_ROOT = " in code[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None
    # papermill sees every parameter (it skips a line it cannot parse, e.g. with two "=")
    assigned = [line.split("=")[0].strip() for line in code[0].source.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert list(papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))) == assigned


def test_committed_outputs_follow_the_naming_rule() -> None:
    for folder in ("figures", "results"):
        for path in (REPO / folder).glob("*") if (REPO / folder).is_dir() else []:
            if folder == "results" and path.name in INDEX_FILES:
                continue
            assert notebook_of(path.name) is not None, f"{folder}/{path.name}"


def test_readme_key_table_equals_the_committed_results():
    table1 = REPO / "results" / "05_paper_tables-table1.csv"
    if not table1.is_file():
        pytest.skip("no committed demo results yet")
    readme = (REPO / "README.md").read_text()
    shown = readme.split("<!-- readme-table:start -->")[1].split("<!-- readme-table:end -->")[0]
    assert shown.strip() == readme_table(table1).strip()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_parameters_leave_the_output_folders_to_setup(name: str) -> None:
    """The parameters cell leaves the output folders empty; setup then picks out/scratch/, so
    running a notebook in JupyterLab or by plain papermill never rewrites figures/ or results/."""
    declared = papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))
    assert declared["FIGURES_DIR"]["default"] == '""'
    assert declared["RESULTS_DIR"]["default"] == '""'


def test_setup_without_output_folders_uses_scratch(synth_root, monkeypatch) -> None:
    from patchmix.companion.notebooks import SCRATCH, setup

    monkeypatch.chdir(REPO)  # setup moves to the repository root; come back afterwards
    nb = setup("01_data_exploration", profile="smoke", data_root=str(synth_root))
    assert Path(nb.out.figures_dir) == SCRATCH / "figures"
    assert Path(nb.out.results_dir) == SCRATCH / "results"


def test_setup_reads_the_feature_cache_make_data_filled(synth_root, monkeypatch) -> None:
    from patchmix.companion.notebooks import setup

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PATCHMIX_CACHE", "elsewhere")  # restored after the test
    setup("01_data_exploration", profile="smoke", data_root=str(synth_root))
    assert os.environ["PATCHMIX_CACHE"] == "elsewhere"  # a cache named by the user stays
    monkeypatch.delenv("PATCHMIX_CACHE")
    setup("01_data_exploration", profile="smoke", data_root=str(synth_root))
    assert os.environ["PATCHMIX_CACHE"] == str(REPO / ".cache" / "patchmix")  # the Makefile's


def test_the_runner_sends_outputs_where_it_is_told(monkeypatch) -> None:
    from patchmix.companion import notebooks

    seen = {}
    monkeypatch.setattr(notebooks, "run_all", lambda params, **kw: seen.update(params) or {})
    assert notebooks.main(["--profile", "smoke"]) == 0
    assert (seen["FIGURES_DIR"], seen["RESULTS_DIR"]) == ("out/smoke/figures", "out/smoke/results")
    assert notebooks.main(["--outputs", "."]) == 0  # what make reproduce passes for demo
    assert (seen["FIGURES_DIR"], seen["RESULTS_DIR"]) == ("figures", "results")


@pytest.mark.parametrize(("args", "outputs"), [
    ([], "'.'"),  # the default demo run: the committed outputs
    (["PROFILE=smoke"], "'out/smoke'"),
    (["SEEDS=3"], "'out/demo'"),
    (["ICBHI_ROOT=/data/icbhi"], "'out/demo'"),
])
def test_make_rewrites_the_committed_outputs_only_for_the_default_run(args, outputs) -> None:
    import subprocess

    dry = subprocess.run(["make", "-n", "-C", str(REPO), "notebooks", *args], check=True,
                         capture_output=True, text=True, env={**os.environ, "ICBHI_ROOT": ""})
    assert f"--outputs {outputs}" in dry.stdout


def test_make_reproduce_trains_first_and_checks_only_the_default_run_against_shipped() -> None:
    import subprocess

    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(REPO), *args], check=True,
                              capture_output=True, text=True,
                              env={**os.environ, "ICBHI_ROOT": ""}).stdout

    default = dry("reproduce")
    assert default.index("plan --profile demo") < default.index("PATCHMIX_SHIPPED=off")
    assert "--run" in default and "--compare shipped --report-outputs" in default
    assert "--threads" not in default  # the profile's thread count, for runs and kernels
    other = " ".join(dry("reproduce", "THREADS=2", "NOTEBOOK_THREADS=3").replace("\\", " ")
                     .split())  # one line: no continuations
    assert "--run --threads 2" in other
    assert "--threads 3" in other.split("patchmix.companion.notebooks")[1]
    assert "--compare" not in dry("reproduce", "PROFILE=smoke")  # nothing shipped to match
    render = dry("render")
    assert "PATCHMIX_RUNS=out/render/runs" in render and "--outputs '.'" in render
    assert "--export shipped" in dry("ship")


def test_make_takes_sprsound_for_notebook_06_only_where_it_trains_and_runs() -> None:
    """SPRSOUND_ROOT reaches the data step, the plan's training and the notebooks; the check
    against shipped/, make ship and make render leave 06 out (its data is not in the repo)."""
    import subprocess

    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(REPO), *args], check=True,
                              capture_output=True, text=True,
                              env={**os.environ, "ICBHI_ROOT": "", "SPRSOUND_ROOT": ""}).stdout

    with_it = dry("reproduce", "SPRSOUND_ROOT=/data/sprsound")
    assert "data check '/data/sprsound'" in with_it and "data features '/data/sprsound'" in with_it
    assert "--sprsound '/data/sprsound' --run" in with_it
    assert "--outputs '.'" in with_it and "--sprsound '/data/sprsound'" in with_it.split(
        "patchmix.companion.notebooks")[1]
    assert "--sprsound '' --compare shipped" in with_it
    assert "--sprsound '' --export shipped" in dry("ship", "SPRSOUND_ROOT=/data/sprsound")
    assert "SPRSOUND_ROOT=" in dry("render", "SPRSOUND_ROOT=/data/sprsound")
    assert "/data/sprsound" not in dry("reproduce")  # without it: nothing of SPRSound


def test_the_readable_copy_keeps_outputs_and_drops_what_varies(executed: dict, tmp_path) -> None:
    from patchmix.companion.notebooks import readable_copy

    name = "03_patchmix_ablations"
    first, again = tmp_path / "a" / f"{name}.ipynb", tmp_path / "b" / f"{name}.ipynb"
    readable_copy(executed["executed"] / f"{name}.ipynb", first)
    readable_copy(executed["executed"] / f"{name}.ipynb", again)
    assert first.read_bytes() == again.read_bytes()
    nb = nbformat.read(first, as_version=4)
    assert "papermill" not in nb.metadata and "version" not in nb.metadata.language_info
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figures stay
    assert not any(o.output_type == "stream" and o.name == "stderr" for o in outputs)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert [c.id for c in injected] == ["injected-parameters"]
    text = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
    up = "](../"  # links out of notebooks/ gain one level from the copy's folder
    assert f"{up}../docs/method.md)" in text and f"{up}docs/" not in text


def test_the_readable_copy_keeps_only_the_folder_name_of_an_absolute_parameter(tmp_path) -> None:
    from patchmix.companion.notebooks import readable_copy

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        'SPRSOUND_ROOT = "/home/someone/data/SPRSound"\nFIGURES_DIR = "figures"',
        metadata={"tags": ["injected-parameters"]})])
    nbformat.write(nb, tmp_path / "in.ipynb")
    readable_copy(tmp_path / "in.ipynb", tmp_path / "out.ipynb")
    source = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].source
    assert source == 'SPRSOUND_ROOT = "…/SPRSound"\nFIGURES_DIR = "figures"'
