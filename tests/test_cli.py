"""The `melee-wm` command line, in-process through `main(argv)` (one console-script subprocess)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from melee_wm.cli import main
from melee_wm.data.store import open_store
from melee_wm.samples import SAMPLES_ENV


def test_encode_with_filters_and_bad_files(replay_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(replay_dir, folder)
    (folder / "broken.slp").write_bytes(b"\x00" * 64)
    out = tmp_path / "store"
    argv = ["encode", str(folder), "--out", str(out), "--stages", "8", "31", "--workers", "1"]
    assert main([*argv, "--shard-frames", "8000", "--set", "position_scale=0.02"]) == 0
    printed = capsys.readouterr().out
    assert "skipped by reason" in printed and "filtered: stage" in printed and "unreadable by peppi" in printed
    store = open_store(out)
    assert sorted(g.stage for g in store.games) == [8, 8, 31]
    assert store.config.position_scale == 0.02
    assert store.manifest["counts"]["skipped"] == 4

    assert main([*argv]) == 1  # default encoding config now differs from the store's
    err = capsys.readouterr().err
    assert "position_scale" in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0
    assert open_store(out).config.position_scale == 0.01


def test_encode_errors_exit_nonzero(replay_dir, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "games"
    assert main(["encode", str(replay_dir), str(missing), "--out", str(tmp_path / "s")]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["encode", str(replay_dir), "--out", str(tmp_path / "s"), "--set", "action_vocb=3"]) == 1
    assert "action_vocb" in capsys.readouterr().err
    yaml = tmp_path / "enc.yaml"
    yaml.write_text("stick_deadzone: wide\n")
    assert main(["encode", str(replay_dir), "--out", str(tmp_path / "s"), "--encoding", str(yaml)]) == 1
    assert "stick_deadzone" in capsys.readouterr().err


def test_info(sample_store, capsys):
    assert main(["info", str(sample_store.path)]) == 0
    out = capsys.readouterr().out
    assert sample_store.manifest["config_hash"] in out
    for text in ("games by stage", "column statistics", "p1.x", "39,188"):
        assert text in out
    assert main(["info", str(sample_store.path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err


def test_samples_prints_the_folder(replay_dir, monkeypatch, capsys):
    monkeypatch.setenv(SAMPLES_ENV, str(replay_dir))
    assert main(["samples"]) == 0
    assert str(Path(replay_dir).resolve()) in capsys.readouterr().out


def test_baseline_refuses_a_split_without_windows(sample_store, capsys):
    """The printed numbers are checked in tests/test_baselines.py; here: with the default 10% game split none of
    the six sample games is in val, which is a clear error, not a 0."""
    assert main(["baseline", str(sample_store.path), "--split", "val"]) == 1
    assert "no window" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script(sample_store):
    script = Path(sys.executable).with_name("melee-wm")
    result = subprocess.run([str(script), "info", str(sample_store.path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "column statistics" in result.stdout
