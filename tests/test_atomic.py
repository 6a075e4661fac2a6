"""Atomic writes: the target changes only when the write succeeds; no temporary file is left."""

from __future__ import annotations

import json

import pytest

from patchmix.atomic import atomic_path, write_json_atomic


def test_success_replaces_the_target_and_failure_keeps_it(tmp_path):
    target = tmp_path / "result.json"
    write_json_atomic(target, {"b": 1, "a": 2})
    assert json.loads(target.read_text()) == {"a": 2, "b": 1}
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 2, "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
