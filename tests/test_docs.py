"""The contributor docs show the examples the tests run, line for line."""

from __future__ import annotations

import re
from itertools import takewhile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc, test, first", [
    ("adding-a-method.md", "test_methods.py", "class LabelSmoothing(Method):"),
    ("adding-a-dataset.md", "test_datasets.py", "def read_wav_folder(root, split_file=None):"),
])
def test_the_docs_example_is_the_tested_one(doc, test, first):
    text = (REPO / "docs" / doc).read_text()
    assert len(text.splitlines()) <= 20, f"{doc} is longer than 20 lines"
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    lines = code[code.index(first):].splitlines()
    body = [lines[0]] + list(takewhile(lambda line: not line or line[0] == " ", lines[1:]))
    example = "\n".join(body).rstrip() + "\n"  # the class or function, to its last line
    assert len(body) > 3 and example in (REPO / "tests" / test).read_text()
