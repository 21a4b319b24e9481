"""W&B without an API key runs offline and never touches the network."""

from __future__ import annotations

import socket

import pytest

from tests.helpers import quick_run

# Logging ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wandb_without_key_runs_offline_and_never_connects(sample_store, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    connects = []
    real_connect = socket.socket.connect

    def record(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            connects.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", record)
    _, run_dir = quick_run(sample_store, tmp_path, "logger=wandb", "run_name=wb")
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    assert not connects
    assert "WANDB_API_KEY" not in (run_dir / "config.yaml").read_text()
