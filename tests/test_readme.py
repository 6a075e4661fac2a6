"""The README's code runs as printed: its Python example makes the figure it promises."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_python_example_draws_its_figure(synth_root, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README should show how to draw a figure from Python"
    monkeypatch.setenv("ICBHI_ROOT", str(synth_root))  # what data/synthetic is after make data
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    exec(compile(textwrap.dedent(blocks[0]), "README.md", "exec"), {})
    with Image.open(tmp_path / "patchmix.png") as image:
        assert min(image.size) > 400  # four panels, not an empty canvas
    plt.close("all")
