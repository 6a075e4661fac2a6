"""No dangling references: every repository path that a tracked text file names exists, and no
file outside ``tests/`` and ``.ci/`` points at material that a clone of the repository lacks.

Two checks, each a pure function of one file's text, so that they are tested on made-up text
below (the proof that they fail where they should) before they are run on the whole checkout:

- `dangling_references`: Markdown links ``[text](target)`` (resolved from the file's folder,
  ``#anchor`` checked against the target page's headings), and bare or backticked paths that
  end in ``.md`` or start with ``docs/``, ``lib/``, ``notebooks/``, ``figures/`` or
  ``results/`` (resolved from the repository root, else from the file's folder; a bare file
  name without a folder only has to exist somewhere). URLs, globs and placeholders
  (``<hash>``, ``{name}``, ``$VAR``, ``01_…``, an all-capitals first folder such as ``ROOT/``)
  are not references. A target must be a file (or folder) of the repository, not merely
  present on this machine: ignored files do not count. (This file's own made-up texts are not
  read.)
- `outside_mentions`: the machine-local notes and the shared folder beside the checkout
  (`LOCAL_ONLY`), which only tests and CI may reach.

`repository_problems` runs both over the files `git ls-files --cached --others
--exclude-standard` lists.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LOCAL_ONLY: tuple[str, ...] = ("PAPER.md", "DESIGN.md", "../shared")
# Where a mention of LOCAL_ONLY is allowed: tests and CI reach shared data on purpose.
LOCAL_ONLY_ALLOWED: tuple[str, ...] = ("tests/", ".ci/")
PATH_PREFIXES: tuple[str, ...] = ("docs/", "lib/", "notebooks/", "figures/", "results/")
# This file's made-up texts name files of a made-up repository: it is not read for references.
SELF = "tests/test_references.py"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s)>\]\"'`]*|mailto:\S+")
# [text](target "title"): text on one line, may hold backticks; images ![..](..) included
_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"\n]*\")?\s*\)")
# a run of characters a path (with placeholders, globs and an anchor) can be made of
_TOKEN = re.compile(r"[\w./<>{}*?$#~…-]+")
_PLACEHOLDER = re.compile(r"[<>{}*?$~…]|^[A-Z][A-Z0-9_]*/")
# outside Markdown, ``a[i](x)`` is code: a [..](..) there is a link only if it names a file
_FILE_LIKE = re.compile(r"/|[\w-]\.\w+(#|$)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Problem:
    """One finding: where (file relative to the root, and a line or notebook cell/line) and
    what."""

    path: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.where}: {self.message}"


@dataclass(frozen=True)
class Repository:
    """The files of a checkout (relative POSIX paths), for lookups; `text` reads one."""

    root: Path
    files: frozenset[str]

    @classmethod
    def of(cls, root: Path, files: Iterable[str]) -> Repository:
        return cls(root, frozenset(files))

    @functools.cached_property
    def folders(self) -> frozenset[str]:
        """Every folder that holds a file, at any depth (``lib``, ``lib/patchmix``, …)."""
        return frozenset("/".join(f.split("/")[:i]) for f in self.files
                         for i in range(1, f.count("/") + 1))

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """The file names without their folders."""
        return frozenset(posixpath.basename(f) for f in self.files)

    def has(self, rel: str) -> bool:
        """Whether `rel` is one of the files or folders."""
        rel = rel.rstrip("/")
        return rel in self.files or rel in self.folders

    def text(self, rel: str) -> str:
        return (self.root / rel).read_text(encoding="utf-8")


def tracked_files(root: Path = REPO) -> list[str]:
    """The checkout's files as git sees them (tracked, or new and not ignored), present on
    disk."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=root, capture_output=True, text=True, check=True).stdout
    return sorted(f for f in out.split("\0") if f and (root / f).is_file())


def is_checked(rel: str) -> bool:
    """Whether `dangling_references` reads this file: the README, the docs pages, the library,
    the benchmark, the tests, the notebooks (and their executed copies in docs/notebooks/),
    the Makefile and pyproject.toml."""
    folder, suffix = posixpath.dirname(rel), posixpath.splitext(rel)[1]
    if rel == SELF:
        return False
    return (rel in ("README.md", "Makefile", "pyproject.toml")
            or (folder == "docs" and suffix == ".md")
            or (rel.startswith("lib/") and suffix == ".py")
            or rel.startswith("bench/")
            or (rel.startswith("tests/") and suffix == ".py")
            or (folder in ("notebooks", "docs/notebooks") and suffix == ".ipynb"))


def text_parts(rel: str, text: str) -> Iterator[tuple[str, str]]:
    """(label, text) of the parts of a file that are read: a notebook's cell sources (label
    ``"cell N "``, numbered from 1), any other file whole (label ``""``)."""
    if rel.endswith(".ipynb"):
        for i, cell in enumerate(json.loads(text)["cells"], start=1):
            source = cell["source"]
            yield f"cell {i} ", "".join(source) if isinstance(source, list) else source
    else:
        yield "", text


def _where(label: str, text: str, offset: int) -> str:
    """Where `offset` of `text` lies: ``"line 3"``, or ``"cell 2 line 3"`` in a notebook."""
    line = text.count("\n", 0, offset) + 1
    return f"{label}line {line}"


def slugs(markdown: str) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them (fenced code skipped):
    lower case, punctuation dropped, spaces to hyphens, repeats numbered ``-1``, ``-2``, …"""
    out: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(line)
        if heading:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(2))  # link → text
            slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
            n = 0
            while (numbered := f"{slug}-{n}" if n else slug) in out:
                n += 1
            out.add(numbered)
    return out


def _check_target(rel: str, target: str, repo: Repository, *, link: bool) -> str | None:
    """Why `target`, named in file `rel`, dangles; None when it resolves."""
    path, _, anchor = target.partition("#")
    here = posixpath.dirname(rel)
    if not path:  # an anchor on the same page
        candidates = [rel]
    elif path.startswith("/"):  # from the repository root, as GitHub reads it
        candidates = [posixpath.normpath(path.lstrip("/"))]
    elif link:
        candidates = [posixpath.normpath(posixpath.join(here, path))]
    elif "/" not in path.rstrip("/"):  # a bare file name: it has to exist somewhere
        return None if path in repo.names or repo.has(path) else f"no file named {path!r}"
    else:
        candidates = [posixpath.normpath(path), posixpath.normpath(posixpath.join(here, path))]
    found = next((c for c in candidates if not c.startswith("../") and repo.has(c)), None)
    if found is None:
        return f"{target!r} does not exist in the repository"
    if anchor and found.endswith(".md") and found in repo.files \
            and anchor not in slugs(repo.text(found)):
        return f"{target!r}: {found} has no heading with the anchor #{anchor}"
    return None


def dangling_references(rel: str, text: str, repo: Repository) -> list[Problem]:
    """Every reference in the text of file `rel` (relative to ``repo.root``) that does not
    resolve to a file or folder of `repo` (or to a heading of it), with its line."""
    problems = []
    markdown = rel.endswith((".md", ".ipynb"))
    for label, part in text_parts(rel, text):
        part = _URL.sub(lambda m: " " * len(m.group()), part)  # URLs are not references
        blanked = list(part)
        for match in _LINK.finditer(part):
            target = match.group(1)
            start, end = match.span(1)
            blanked[start:end] = " " * (end - start)  # the path scan below skips link targets
            if (not target or _PLACEHOLDER.search(target)
                    or not (markdown or _FILE_LIKE.search(target))):
                continue
            why = _check_target(rel, target, repo, link=True)
            if why:
                problems.append(Problem(rel, _where(label, part, match.start()), f"link {why}"))
        part = "".join(blanked)
        for match in _TOKEN.finditer(part):
            token = match.group().rstrip(".,;:")
            path = token.partition("#")[0]
            named_md = path.endswith(".md") and not posixpath.basename(path).startswith(".")
            if (not (named_md or path.startswith(PATH_PREFIXES))
                    or _PLACEHOLDER.search(token)):
                continue
            why = _check_target(rel, token, repo, link=False)
            if why:
                problems.append(Problem(rel, _where(label, part, match.start()), f"path {why}"))
    return problems


def outside_mentions(rel: str, text: str) -> list[Problem]:
    """Every mention of `LOCAL_ONLY` material in file `rel`, unless `rel` lies under one of
    `LOCAL_ONLY_ALLOWED`."""
    if rel.startswith(LOCAL_ONLY_ALLOWED):
        return []
    return [Problem(rel, _where(label, part, match.start()),
                    f"mentions {name}, which a clone of the repository does not have")
            for label, part in text_parts(rel, text) for name in LOCAL_ONLY
            for match in re.finditer(re.escape(name), part)]


def repository_problems(root: Path = REPO, files: Iterable[str] | None = None) -> list[Problem]:
    """Both checks over every text file of the checkout at `root` (`tracked_files`, or the
    given relative paths), sorted."""
    repo = Repository.of(root, tracked_files(root) if files is None else files)
    problems: list[Problem] = []
    for rel in sorted(repo.files):
        try:
            text = repo.text(rel)
        except (UnicodeDecodeError, OSError):  # figures and other binary files
            continue
        if "\0" in text:
            continue
        if is_checked(rel):
            problems += dangling_references(rel, text, repo)
        problems += outside_mentions(rel, text)
    return sorted(set(problems), key=_in_file_order)


def _in_file_order(problem: Problem) -> tuple:
    """Sort key: by file, then by cell and line as numbers (line 9 before line 10)."""
    where = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", problem.where)]
    return problem.path, where, problem.message


# --- the whole repository ------------------------------------------------------------------


def test_the_repository_has_no_dangling_reference():
    try:
        files = tracked_files(REPO)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of the repository's files")
    problems = repository_problems(REPO, files)
    assert not problems, f"{len(problems)} reference problem(s):\n" + "\n".join(
        map(str, problems))


# --- the checker itself, on made-up text ---------------------------------------------------

FAKE_FILES = ("README.md", "docs/README.md", "docs/method.md", "lib/patchmix/model/losses.py",
              "notebooks/01_data_exploration.ipynb", "figures/02_baselines-curves.png")


class FakeRepository(Repository):
    """`FAKE_FILES`, whose Markdown pages read as `pages` says (empty otherwise)."""

    def __init__(self, pages: dict[str, str] | None = None) -> None:
        super().__init__(Path("/nonexistent"), frozenset(FAKE_FILES))
        object.__setattr__(self, "pages", pages or {})

    def text(self, rel: str) -> str:
        return self.pages.get(rel, "")


def _problems(rel: str, text: str, pages: dict[str, str] | None = None) -> list[str]:
    """`dangling_references` of `text`, as if it were file `rel` of the fake repository."""
    return [str(p) for p in dangling_references(rel, text, FakeRepository(pages))]


def _where_only(problems: list[str]) -> list[str]:
    return [p.split(": ", 1)[0] for p in problems]


def test_references_that_resolve_pass():
    text = "\n".join([
        "[the method](docs/method.md) and ![curves](figures/02_baselines-curves.png)",
        "`lib/patchmix/model/losses.py`, lib/patchmix/ and notebooks/01_data_exploration.ipynb.",
        "A bare name such as method.md exists somewhere; so does `README.md`.",
    ])
    assert _problems("README.md", text) == []
    # a link resolves from its file's folder, and ../ may climb inside the repository
    assert _problems("docs/README.md", "[m](method.md), [top](../README.md), [f](/README.md)") \
        == []


def test_urls_globs_placeholders_and_code_are_not_references():
    text = "\n".join([
        "https://github.com/raymin0223/patch-mix_contrastive_learning/blob/main/docs/x.md",
        "[paper](https://arxiv.org/abs/2305.14032) <https://example.org/a.md>",
        "`results/01_data_exploration-*.csv`, runs/<hash>/summary.json, lib/patchmix/<name>.py",
        "ROOT/ICBHI_final_database/README.md, $OUT/notes.md, f'docs/{name}.md'",
        "a ``.csv`` file and its ``.md`` twin",
    ])
    assert _problems("README.md", text) == []
    code = "y = models['store'](x)\nline = '[{}]({})'.format(name, link)\n"
    assert _problems("lib/patchmix/model/losses.py", code) == []
    # in Markdown any link target counts, even one that does not look like a file
    assert _where_only(_problems("README.md", "see [x](x)")) == ["README.md:line 1"]


def test_a_missing_link_is_reported_with_its_file_and_line():
    text = "line one\nsee [the recipe](docs/no-such-page.md) for more\n"
    assert _problems("README.md", text) == [
        "README.md:line 2: link 'docs/no-such-page.md' does not exist in the repository"]
    # resolved from the file's folder: docs/docs/method.md does not exist
    assert _problems("docs/README.md", "[m](docs/method.md)") == [
        "docs/README.md:line 1: link 'docs/method.md' does not exist in the repository"]
    # a link in a docstring names a file, so it is checked too
    assert _where_only(_problems("lib/patchmix/model/losses.py", '"""See [it](docs/gone.md)."""')) \
        == ["lib/patchmix/model/losses.py:line 1"]


def test_missing_bare_paths_are_reported():
    text = ("`docs/no-such-page.md`\n"
            "figures/no-such-page.png and lib/no-such-page.py\n"
            "no-such-page.md\n")
    page = "lib/patchmix/model/losses.py"
    got = _problems(page, text)
    assert _where_only(got) == [f"{page}:line 1", f"{page}:line 2", f"{page}:line 2",
                                f"{page}:line 3"]
    assert got[-1].endswith("no file named 'no-such-page.md'")


def test_anchors_must_name_a_heading_of_the_target_page():
    pages = {"docs/method.md": "# Method\n\n## The soft targets M = λI + (1 − λ)P\n\n"
                               "```\n# not a heading\n```\n"
                               "## Why contrastive?\n## Why contrastive?\n"}
    assert sorted(slugs(pages["docs/method.md"])) == [
        "method", "the-soft-targets-m--λi--1--λp", "why-contrastive", "why-contrastive-1"]
    ok = "[a](docs/method.md#why-contrastive-1) [b](docs/method.md#the-soft-targets-m--λi--1--λp)"
    assert _problems("README.md", ok, pages) == []
    assert _problems("README.md", "[c](docs/method.md#not-a-heading)", pages) == [
        "README.md:line 1: link 'docs/method.md#not-a-heading': docs/method.md has no heading "
        "with the anchor #not-a-heading"]
    # an anchor on the page itself
    assert _where_only(_problems("docs/method.md", "[up](#nowhere)", pages)) == [
        "docs/method.md:line 1"]


def test_notebook_cells_are_read_and_located_by_cell_and_line():
    notebook = json.dumps({"cells": [
        {"cell_type": "markdown", "source": ["# Title\n", "fine: `docs/method.md`\n"]},
        {"cell_type": "markdown", "source": ["text\n", "[gone](../docs/no-such-page.md)\n"]},
    ]})
    assert _problems("notebooks/01_data_exploration.ipynb", notebook) == [
        "notebooks/01_data_exploration.ipynb:cell 2 line 2: link '../docs/no-such-page.md' "
        "does not exist in the repository"]


def test_local_only_material_is_reported_outside_tests_and_ci():
    text = "as PAPER.md §5 says\nsee DESIGN.md\ndata in ../shared/data/icbhi-mini\n"
    assert _where_only([str(p) for p in outside_mentions("README.md", text)]) == [
        "README.md:line 1", "README.md:line 2", "README.md:line 3"]
    assert outside_mentions("tests/conftest.py", text) == []
    assert outside_mentions(".ci/run", text) == []
    # tests may reach ../shared, but the notes are not in the repository: dangling there too
    assert _problems("tests/test_x.py", "see PAPER.md §5") == [
        "tests/test_x.py:line 1: path no file named 'PAPER.md'"]


def test_a_broken_copy_of_a_checkout_fails(tmp_path):
    """On files on disk: one good reference and three bad ones, one of them to a file that is
    on disk but not in the repository's list (an ignored file a clone would not have)."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "method.md").write_text("# Method\n\n## Soft targets\n")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "ignored.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (tmp_path / "README.md").write_text(
        "[ok](docs/method.md#soft-targets)\n"
        "[bad](docs/no-such-page.md)\n"
        "as PAPER.md says\n"
        "![figure](figures/ignored.png)\n")
    (tmp_path / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")  # binary: not read
    problems = repository_problems(tmp_path, ["README.md", "docs/method.md", "figure.png"])
    assert [f"{p.path}:{p.where}" for p in problems] == [
        "README.md:line 2", "README.md:line 3", "README.md:line 3", "README.md:line 4"]
