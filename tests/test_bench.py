"""`scripts/bench.py` exits non-zero when a benchmark's own summary says it missed its target."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_script", SCRIPTS / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("passed", "code"), [(True, 0), (False, 1)])
def test_exit_status_follows_the_summary(monkeypatch, capsys, passed, code):
    bench = _bench()
    monkeypatch.syspath_prepend(str(SCRIPTS))
    common = importlib.import_module("benchmarks._common")
    fake = types.ModuleType("benchmarks.fake")
    fake.run = lambda quick: iter([common.record("step", x=1), common.summary(ratio=0.5, target=1.0, passed=passed)])
    monkeypatch.setitem(sys.modules, "benchmarks.fake", fake)
    monkeypatch.setattr(bench, "available", lambda: ["fake"])
    assert bench.main(["fake"]) == code
    if not passed:
        assert "passed: false" in capsys.readouterr().err
