"""Rollout coherence (README.md, "Rollout evaluation"): N seeded starting points in evaluation games, H frames
rolled out with the true controller, the model beside the persistence and constant-velocity baselines on the same
starts.

Per horizon h (the h-th predicted frame): position, velocity and percent MAE in game units, action accuracy and
action-change accuracy (entries whose true action differs from the last context frame's). Summaries over horizons
1..5, 1..10, 1..20 are micro averages (total error / total entries). Physical-constraint violation rates count
(start, frame, player) entries (`constraints.py`); the true frames are scored too, as a check that the rules
hold on real data.
Columns a game's replay format lacks are left out (`MeleeDataset.game_valid_*`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from melee_wm.data.batch import Targets
from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.store import Store
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.layout import NUM_PLAYERS, Layout
from melee_wm.eval.constraints import VIOLATIONS, physical_violations
from melee_wm.eval.rollout import baseline_rollout, constant_velocity_rollout, persistence_rollout, rollout
from melee_wm.frames.frame import NextFrame, PreviousFrame, robust_constant_velocity
from melee_wm.frames.table import TableBaseline
from melee_wm.frames.targets import TargetCodec
from melee_wm.model.interface import WorldModelInterface

SUMMARY_RANGES = ((1, 5), (1, 10), (1, 20))
METRICS = ("pos_mae", "vel_mae", "percent_mae", "action_acc", "change_acc")
HIGHER_IS_BETTER = ("action_acc", "change_acc")
PREDICTORS = ("model", "persistence", "constant_velocity", "robust_constant_velocity", "table")
BASELINES = PREDICTORS[1:]
NUM_EXAMPLES = 4  # starts kept whole for pictures
PREFIX = "rollout"
REPORT_FILE = "eval_rollout.json"


@dataclass
class RolloutSums:
    """Per-horizon sums and entry counts of every metric (`METRICS` -> (H,) float64) and violation counts and
    entries (`VIOLATIONS` -> (2,) float64) of one predictor."""

    sums: dict[str, Tensor]
    counts: dict[str, Tensor]
    violations: dict[str, Tensor]

    def __add__(self, other: RolloutSums) -> RolloutSums:
        def add(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: a[k] + b[k] for k in a}

        return RolloutSums(
            add(self.sums, other.sums), add(self.counts, other.counts), add(self.violations, other.violations)
        )

    def per_horizon(self, metric: str) -> list[float]:
        """Micro average at each horizon 1..H (NaN where nothing was counted)."""
        return (self.sums[metric] / self.counts[metric]).tolist()

    def over(self, metric: str, first: int, last: int) -> float:
        """Micro average over horizons first..last (1-based, inclusive)."""
        return float(self.sums[metric][first - 1 : last].sum() / self.counts[metric][first - 1 : last].sum())

    def rate(self, kind: str) -> float:
        count, entries = self.violations[kind].tolist()
        return count / entries if entries else math.nan


def score_frames(
    layout: Layout,
    pred_f: Tensor,
    pred_i: Tensor,
    true_f: Tensor,
    true_i: Tensor,
    last_f: Tensor,
    last_i: Tensor,
    valid_f: Tensor,
    valid_i: Tensor,
) -> RolloutSums:
    """Score predicted frames against the true ones. pred_*/true_*: (B, H, columns); last_*: (B, columns) the last
    context frame; valid_*: (B, columns) bool, False where the game lacks the column's field."""
    cfg = layout.cfg
    vf, vi = valid_f[:, None].expand_as(true_f), valid_i[:, None].expand_as(true_i)
    sums, counts = {}, {}

    def add(name: str, values: Tensor, mask: Tensor) -> None:  # values, mask: (B, H, n)
        sums[name] = torch.where(mask, values.double(), 0.0).sum((0, 2))
        counts[name] = mask.double().sum((0, 2))

    def cols(*fields: str) -> list[int]:
        return [layout.player_float_index(p, f) for p in range(NUM_PLAYERS) for f in fields]

    xy, percent = layout.position_columns, cols("percent")
    add("pos_mae", (pred_f[..., xy] - true_f[..., xy]).abs() / cfg.position_scale, vf[..., xy])
    vel = layout.float_slice("velocity")
    add("vel_mae", (pred_f[..., vel] - true_f[..., vel]).abs() / cfg.velocity_scale, vf[..., vel])
    add("percent_mae", (pred_f[..., percent] - true_f[..., percent]).abs() / cfg.percent_scale, vf[..., percent])
    act = layout.int_slice("action")
    hit, act_ok = pred_i[..., act] == true_i[..., act], vi[..., act]
    add("action_acc", hit, act_ok)
    add("change_acc", hit, act_ok & (true_i[..., act] != last_i[:, None, act]))
    violations = physical_violations(layout, pred_f, pred_i, last_f, valid_f)
    return RolloutSums(sums, counts, violations)


@dataclass
class RolloutReport:
    """Everything one rollout evaluation measured. sums: predictor (`PREDICTORS`) -> sums; true_violations: the
    rules on the true frames; examples: `NUM_EXAMPLES` starts spread over the draws (CPU tensors, for pictures):
    floats / ints (E, C + H, ...) true windows, <predictor>_floats / _ints (E, H, ...) predictions."""

    horizon: int
    context: int
    starts: int
    seed: int
    games: int
    sums: dict[str, RolloutSums]
    true_violations: RolloutSums
    examples: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """Summary ranges that fit the horizon."""
        return [(a, b) for a, b in SUMMARY_RANGES if b <= self.horizon]

    def scalars(self) -> dict[str, float]:
        """Flat metrics to log: rollout/<metric>_h<a>_<b> (model), rollout/<baseline>/<metric>_h<a>_<b>,
        rollout/violations/<kind> (model, every horizon) and rollout/<baseline>/violations/<kind>."""
        out = {}
        for name, sums in self.sums.items():
            prefix = PREFIX if name == "model" else f"{PREFIX}/{name}"
            for metric in METRICS:
                for a, b in self.ranges:
                    out[f"{prefix}/{metric}_h{a}_{b}"] = sums.over(metric, a, b)
            for kind in VIOLATIONS:
                out[f"{prefix}/violations/{kind}"] = sums.rate(kind)
        return out

    def to_json(self) -> dict[str, Any]:
        """Every number spelled out: per-horizon curves, summaries (model, baselines, ratio model / baseline) and
        violation rates, in game units."""
        model = self.sums["model"]
        summaries = {}
        for metric in METRICS:
            for a, b in self.ranges:
                entry = {name: sums.over(metric, a, b) for name, sums in self.sums.items()}
                for base in (b for b in BASELINES if b in self.sums):
                    entry[f"ratio_model_over_{base}"] = _ratio(entry["model"], entry[base])
                summaries[f"{metric}_h{a}_{b}"] = entry
        return {
            **self.meta,
            "horizon": self.horizon,
            "context": self.context,
            "starts": self.starts,
            "seed": self.seed,
            "games": self.games,
            "units": "pos_mae, vel_mae, percent_mae in game units; accuracies are shares; violations are shares "
            "of (start, frame, player) entries",
            "higher_is_better": list(HIGHER_IS_BETTER),
            "summaries": summaries,
            "per_horizon": {m: {name: s.per_horizon(m) for name, s in self.sums.items()} for m in METRICS},
            "violations": {
                kind: {**{name: s.rate(kind) for name, s in self.sums.items()}, "true": self.true_violations.rate(kind)}
                for kind in VIOLATIONS
            },
            "violation_counts": {kind: model.violations[kind].tolist() for kind in VIOLATIONS},
        }


def save_report(report: RolloutReport, folder: Path) -> Path:
    """Write `report.to_json()` to folder/`REPORT_FILE` (NaN written as null)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    path.write_text(json.dumps(_nan_to_none(report.to_json()), indent=2))
    return path


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def rollout_windows(
    store: Store | str | Path, split: str, data: DataConfig, encoding: EncodingConfig, context: int, horizon: int
) -> MeleeDataset:
    """The windows of `context + horizon` frames of a split ('val', or 'all' for a store the model never saw),
    split by game as in training (`data.val_fraction`, `data.split_salt`)."""
    cfg = dataclasses.replace(data, context_len=context + horizon - 1)
    return MeleeDataset.from_store(store, split, cfg, encoding)


def draw_starts(num_windows: int, samples: int, seed: int) -> Tensor:
    """Up to `samples` distinct window indices drawn with a fixed seed (the same on every machine), sorted."""
    if num_windows == 0:
        raise ValueError("rollout evaluation: the split has no window long enough (context + horizon frames)")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(num_windows, generator=g)[:samples].sort().values


@torch.no_grad()
def evaluate_rollouts(
    net: WorldModelInterface,
    codec: TargetCodec,
    windows: MeleeDataset,
    context: int,
    samples: int,
    seed: int,
    batch_size: int = 256,
    table: TableBaseline | None = None,
) -> RolloutReport:
    """Roll the model and every baseline out from the same seeded starts of `windows` (windows of context + H
    frames, `rollout_windows`) and score them; the table baseline when `table` (fitted on the run's training
    split) is given. The network runs on its own device, in eval mode."""
    layout = codec.layout
    device = next(codec.buffers()).device
    table = None if table is None else table.to(device)

    def robust_cv(targets: Targets, previous: PreviousFrame, _: Tensor) -> NextFrame:
        return robust_constant_velocity(targets, previous, layout)

    horizon = windows.cfg.window_len - context
    starts = draw_starts(len(windows), samples, seed)
    xy = torch.tensor(layout.position_columns, device=device)
    was_training = net.training
    net.eval()
    sums: dict[str, RolloutSums] = {}
    true_sums: RolloutSums | None = None
    examples: dict[str, list[Tensor]] = {}
    example_rows = torch.linspace(0, len(starts) - 1, min(NUM_EXAMPLES, len(starts))).round().long().tolist()
    try:
        for lo in range(0, len(starts), batch_size):
            idx = starts[lo : lo + batch_size]
            floats, ints = (t.to(device) for t in windows.gather(idx))
            _, games = windows.window_games(idx)
            valid_f, valid_i = windows.game_valid_floats[games].to(device), windows.game_valid_ints[games].to(device)
            true_f, true_i = floats[:, context:], ints[:, context:]
            last_f, last_i = floats[:, context - 1], ints[:, context - 1]
            preds = {
                "model": rollout(net, codec, floats, ints, context, valid=valid_f, valid_ints=valid_i),
                "persistence": persistence_rollout(floats, ints, context),
                "constant_velocity": constant_velocity_rollout(floats, ints, context, xy),
                "robust_constant_velocity": baseline_rollout(robust_cv, layout, floats, ints, context),
            }
            if table is not None:
                preds["table"] = baseline_rollout(table.predict, layout, floats, ints, context)
            for name, (pf, pi) in preds.items():
                s = score_frames(layout, pf, pi, true_f, true_i, last_f, last_i, valid_f, valid_i)
                sums[name] = s if name not in sums else sums[name] + s
            t = score_frames(layout, true_f, true_i, true_f, true_i, last_f, last_i, valid_f, valid_i)
            true_sums = t if true_sums is None else true_sums + t
            keep = [i - lo for i in example_rows if lo <= i < lo + len(idx)]
            chosen = {"floats": floats, "ints": ints}
            for name, (pf, pi) in preds.items():
                chosen[f"{name}_floats"], chosen[f"{name}_ints"] = pf, pi
            for key, values in chosen.items():
                examples.setdefault(key, []).append(values[keep].cpu())
    finally:
        net.train(was_training)
    return RolloutReport(
        horizon=horizon,
        context=context,
        starts=len(starts),
        seed=seed,
        games=windows.num_games,
        sums={k: _to_cpu(v) for k, v in sums.items()},
        true_violations=_to_cpu(true_sums),
        examples={k: torch.cat(v) for k, v in examples.items()},
    )


def _to_cpu(sums: RolloutSums) -> RolloutSums:
    def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.cpu() for k, v in d.items()}

    return RolloutSums(move(sums.sums), move(sums.counts), move(sums.violations))
