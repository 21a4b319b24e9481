"""scripts/ablation_table.py: rows name what sets a run apart, baselines come from the runs' own metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import ablation_table  # noqa: E402

KEYS = ("pos_mae/all", "pos_mae_smooth/all", "action_acc/all", "change_acc/all", "false_change/all")


def fake_run(root: Path, name: str, overrides: list[str], model: float, table: float) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    metrics = {f"val/{k}": model for k in KEYS}
    metrics |= {f"baseline/{b}/{k}": table for b in ablation_table.BASELINES for k in KEYS}
    (run / "final_metrics.json").write_text(json.dumps(metrics))
    return run


def test_rows_name_only_what_differs(tmp_path, capsys):
    shared = ["experiment=smoke", "data.store=/s"]
    a = fake_run(tmp_path, "0", [*shared, "run_name=x/0"], 0.25, 0.5)
    b = fake_run(tmp_path, "1", [*shared, "run_name=x/1", "optim.lr=1e-3"], 0.125, 0.5)
    assert ablation_table.main([str(a), str(b), str(tmp_path / "not_a_run")]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].startswith("| defaults | 0.2500") and rows[3].startswith("| optim.lr=1e-3 | 0.1250")
    assert sum(r.startswith("| baseline: ") for r in rows) == len(ablation_table.BASELINES)
    assert not any("not scored on the same frames" in r for r in rows)
    c = fake_run(tmp_path, "2", [*shared, "run_name=x/2"], 0.25, 0.75)  # another split: the table says so
    assert ablation_table.main([str(a), str(c)]) == 0
    assert "not scored on the same frames" in capsys.readouterr().out
    assert ablation_table.main([str(tmp_path / "not_a_run")]) == 1
