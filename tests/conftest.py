"""Shared fixtures: the real ICBHI-mini recordings, hand-made ICBHI-layout folders, a small
synthetic set ready to train on (smoke profile), and random training data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MINI = REPO.parent / "shared" / "data" / "icbhi-mini"
DEFAULT_SPRSOUND_MINI = REPO.parent / "shared" / "data" / "sprsound-mini"


def in_ci() -> bool:
    """Whether the suite runs in CI (``CI=true``), where missing shared data fails a test."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def icbhi_mini() -> Path:
    """The ten real ICBHI recordings: ``$ICBHI_ROOT`` or ``../shared/data/icbhi-mini``.

    Skipped on a developer machine without them; in CI (``CI=true``) their absence fails.
    """
    root = Path(os.environ.get("ICBHI_ROOT") or DEFAULT_MINI)
    if not (root / "ICBHI_final_database").is_dir():
        if in_ci():
            pytest.fail(f"CI needs the ICBHI-mini recordings at {root} (set ICBHI_ROOT)")
        pytest.skip(f"no ICBHI-mini recordings at {root} (set ICBHI_ROOT)")
    return root


def sprsound_mini_root() -> Path | None:
    """The 80 real SPRSound recordings (``$SPRSOUND_MINI`` or ``../shared/data/
    sprsound-mini``), or None where they are not."""
    root = Path(os.environ.get("SPRSOUND_MINI") or DEFAULT_SPRSOUND_MINI)
    return root if (root / "BioCAS2022").is_dir() else None


@pytest.fixture(scope="session")
def sprsound_mini() -> Path:
    """The 80 real SPRSound recordings (`sprsound_mini_root`). Skipped on a developer
    machine without them; in CI (``CI=true``) their absence fails."""
    root = sprsound_mini_root()
    if root is None:
        if in_ci():
            pytest.fail("CI needs the SPRSound subset (set SPRSOUND_MINI)")
        pytest.skip("no SPRSound subset (set SPRSOUND_MINI)")
    return root


def write_wav(path: Path, seconds: float = 3.0, rate: int = 4000, subtype: str = "PCM_16",
              channels: int = 1, seed: int = 0) -> Path:
    """A short noise WAV (deterministic) with the given format."""
    rng = np.random.default_rng(seed)
    data = 0.3 * rng.standard_normal((int(seconds * rate), channels))
    sf.write(str(path), data if channels > 1 else data[:, 0], rate, subtype=subtype)
    return path


MakeData = Callable[..., Path]


@pytest.fixture
def make_data(tmp_path: Path) -> MakeData:
    """Build a small ICBHI-layout folder and return its root.

    ``make_data({"101_1b1_Al_sc_Meditron": "train", ...}, annotations={name: text},
    wav={name: dict(seconds=..., rate=..., subtype=..., channels=...)}, split_extra=[...],
    stored_as={split name: name on disk}, skip_wav=[...], skip_txt=[...])``
    """
    def build(recordings: dict[str, str], *, annotations: dict[str, str] | None = None,
              wav: dict[str, dict] | None = None, split_extra: Iterable[str] = (),
              stored_as: dict[str, str] | None = None, skip_wav: Iterable[str] = (),
              skip_txt: Iterable[str] = (), split_name: str = "ICBHI_challenge_train_test.txt",
              root_name: str = "icbhi") -> Path:
        root = tmp_path / root_name
        rec = root / "ICBHI_final_database"
        rec.mkdir(parents=True)
        annotations, wav, stored_as = annotations or {}, wav or {}, stored_as or {}
        for i, (name, _) in enumerate(recordings.items()):
            disk = stored_as.get(name, name)
            if name not in skip_wav:
                write_wav(rec / f"{disk}.wav", seed=i, **wav.get(name, {}))
            if name not in skip_txt:
                text = annotations.get(name, "0.1\t1.2\t0\t0\n1.2\t2.5\t1\t0\n")
                (rec / f"{disk}.txt").write_text(text)
        (rec / "filename_format.txt").write_text("Elements contained in the filenames:\n")
        lines = [f"{n}\t{s}" for n, s in recordings.items()] + list(split_extra)
        (root / split_name).write_text("\n".join(lines) + "\n")
        return root

    return build


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from patchmix.data.synth import make_synthetic_icbhi

    root = tmp_path_factory.mktemp("synth")
    make_synthetic_icbhi(root, 24, seed=5, progress=False)
    return root


@pytest.fixture(scope="module")
def smoke_data(synth_root, tmp_path_factory, monkeypatch_module):
    """The smoke profile on a 24-recording synthetic set, and that data with its features
    (in a feature cache of this test module's own)."""
    from patchmix.config import profile, with_overrides
    from patchmix.data.loading import load_data

    monkeypatch_module.setenv("PATCHMIX_CACHE", str(tmp_path_factory.mktemp("cache")))
    cfg = with_overrides(profile("smoke"), [f"data.root={synth_root}"])
    return cfg, load_data(cfg.data, progress=False)


def random_data(n: int = 8, seed: int = 0):
    """`patchmix.data.loading.Data` of n random training cycles (n, 798, 128), labels 0..3."""
    import pandas as pd

    from patchmix.data.dataset import DATASETS, DataFolder
    from patchmix.data.loading import Data

    features = np.random.default_rng(seed).standard_normal((n, 798, 128), dtype=np.float32)
    cycles = pd.DataFrame({"split": ["train"] * n, "label": np.arange(n) % 4})
    return Data(cycles, features, DataFolder(Path("random"), DATASETS.get("synthetic")))
