"""scripts/lint.py: a file may only lose findings against lint-baseline.json."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def lint(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("lint_script", ROOT / "scripts" / "lint.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    monkeypatch.setattr(mod, "BASELINE", tmp_path / "baseline.json")
    found = {"ruff": Counter({"a.py": 2}), "mypy": Counter({"b.py": 1})}
    monkeypatch.setattr(mod, "ruff_counts", lambda: (found["ruff"], ["a.py:1: F401 x"]))
    monkeypatch.setattr(mod, "mypy_counts", lambda: (found["mypy"], ["b.py:3: error: y"]))
    mod.found = found
    return mod


def test_growth_fails_and_shrinking_passes(lint, capsys) -> None:  # type: ignore[no-untyped-def]
    assert lint.main(["--record", "--allow-growth"]) == 0
    assert json.loads(lint.BASELINE.read_text()) == {"ruff": {"a.py": 2}, "mypy": {"b.py": 1}}
    assert lint.main([]) == 0
    lint.found["mypy"]["c.py"] = 1  # a new file with an error: its baseline is 0
    assert lint.main([]) == 1
    assert "mypy: c.py has 1 findings, its baseline is 0" in capsys.readouterr().out
    assert lint.main(["--record"]) == 1  # the baseline never grows without --allow-growth
    del lint.found["mypy"]["c.py"]
    lint.found["ruff"]["a.py"] = 1
    assert lint.main([]) == 0
    assert "went from 2 to 1" in capsys.readouterr().out
    assert lint.main(["--record"]) == 0
    assert json.loads(lint.BASELINE.read_text())["ruff"] == {"a.py": 1}

