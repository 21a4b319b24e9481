"""Pictures of a rollout evaluation (matplotlib, Agg): error against horizon for the model and both baselines,
predicted against true trajectories of a few starts, and an animated GIF of one rollout over the stage."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.patches import Rectangle

from melee_wm.encoding.layout import NUM_PLAYERS, STAGE_FIELD, Layout
from melee_wm.eval.rollout_eval import PREDICTORS, RolloutReport
from melee_wm.game.stages import STAGES

ERROR_PLOT = "rollout_error.png"
TRAJECTORY_PLOT = "rollout_trajectories.png"
ANIMATION = "rollout.gif"
STYLES = {
    "model": ("C3", "-"),
    "persistence": ("0.5", ":"),
    "constant_velocity": ("C0", "--"),
    "robust_constant_velocity": ("C2", "-."),
    "table": ("C1", "--"),
}
PANELS = (
    ("pos_mae", "position MAE (game units)"),
    ("vel_mae", "velocity MAE (game units/frame)"),
    ("percent_mae", "percent MAE"),
    ("action_acc", "action accuracy"),
)
CONTEXT_SHOWN = 10  # context frames drawn before the rollout starts
PLAYER_COLORS = ("C3", "C0")


def plot_error_vs_horizon(report: RolloutReport, out: Path) -> Path:
    """Per-horizon error of the model and both baselines, one panel per metric."""
    data = report.to_json()["per_horizon"]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    horizons = range(1, report.horizon + 1)
    for ax, (metric, title) in zip(axes, PANELS, strict=True):
        for name in (p for p in PREDICTORS if p in data[metric]):
            color, style = STYLES[name]
            ax.plot(horizons, data[metric][name], style, color=color, label=name.replace("_", " "))
        ax.set_title(title)
        ax.set_xlabel("horizon (frames)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"rollouts from {report.starts} starts ({report.games} games), context {report.context} frames")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _xy(layout: Layout, floats, player: int):
    s = layout.cfg.position_scale
    return (
        floats[..., layout.player_float_index(player, "x")] / s,
        floats[..., layout.player_float_index(player, "y")] / s,
    )


def plot_trajectories(report: RolloutReport, layout: Layout, out: Path, count: int = 3) -> Path:
    """x and y over time and the action-state timeline of both players for the first `count` starts: true
    (solid) against the model's rollout (dashed); frame 0 is the last context frame."""
    ex, c = report.examples, report.context
    count = min(count, len(ex["floats"]))
    fig, axes = plt.subplots(count, 3, figsize=(14, 3.2 * count), squeeze=False)
    shown = min(CONTEXT_SHOWN, c)
    t_true = range(1 - shown, report.horizon + 1)
    t_pred = range(1, report.horizon + 1)
    act = layout.int_slice("action")
    for row in range(count):
        true_f, pred_f = ex["floats"][row, c - shown :], ex["model_floats"][row]
        true_a, pred_a = ex["ints"][row, c - shown :, act], ex["model_ints"][row, :, act]
        for p in range(NUM_PLAYERS):
            color = PLAYER_COLORS[p]
            for col, (true_v, pred_v) in enumerate(zip(_xy(layout, true_f, p), _xy(layout, pred_f, p), strict=True)):
                axes[row, col].plot(t_true, true_v, "-", color=color, label=f"p{p} true")
                axes[row, col].plot(t_pred, pred_v, "--", color=color, label=f"p{p} model")
            axes[row, 2].step(t_true, true_a[:, p], "-", where="post", color=color, label=f"p{p} true")
            axes[row, 2].step(t_pred, pred_a[:, p], "--", where="post", color=color, label=f"p{p} model")
        for col, name in enumerate(("x", "y", "action state id")):
            axes[row, col].axvline(0.5, color="0.7", lw=0.8)
            axes[row, col].set_title(f"start {row}: {name}")
            axes[row, col].set_xlabel("frame (0 = last context frame)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def draw_stage(ax, stage_id: int) -> None:
    """Blast zone (dashed), main stage and platforms of a stage in `STAGES` (nothing for an unknown one)."""
    stage = STAGES.get(stage_id)
    if stage is None:
        ax.set_title(f"stage {stage_id} (no geometry)")
        return
    w, h = stage.right - stage.left, stage.top - stage.bottom
    ax.add_patch(Rectangle((stage.left, stage.bottom), w, h, fill=False, ls="--", ec="0.6"))
    ax.add_patch(Rectangle((-stage.ledge, -12.0), 2 * stage.ledge, 12.0, color="0.75"))
    for x0, x1, y in stage.platforms:
        ax.plot([x0, x1], [y, y], color="0.45", lw=2)
    ax.set_xlim(stage.left - 10, stage.right + 10)
    ax.set_ylim(stage.bottom - 10, stage.top + 10)
    ax.set_title(stage.name)


def animate_rollout(report: RolloutReport, layout: Layout, out: Path, index: int = 0, fps: int = 10) -> Path:
    """GIF of one start: the last context frames, then the rollout; both players' true positions (filled) and
    the model's (hollow) over the stage outline, with a frame counter."""
    ex, c = report.examples, report.context
    shown = min(CONTEXT_SHOWN, c)
    true_f = ex["floats"][index, c - shown :]
    pred_f = ex["model_floats"][index]
    stage = int(ex["ints"][index, 0, layout.int_slice(STAGE_FIELD)][0])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    draw_stage(ax, stage)
    ax.set_aspect("equal")
    true_dots = [ax.plot([], [], "o", color=PLAYER_COLORS[p], label=f"p{p} true")[0] for p in range(NUM_PLAYERS)]
    pred_dots = [
        ax.plot([], [], "o", mfc="none", mew=2, color=PLAYER_COLORS[p], label=f"p{p} model")[0]
        for p in range(NUM_PLAYERS)
    ]
    counter = ax.text(0.02, 0.95, "", transform=ax.transAxes, va="top")
    ax.legend(loc="lower right", fontsize=7)
    true_xy = [_xy(layout, true_f, p) for p in range(NUM_PLAYERS)]
    pred_xy = [_xy(layout, pred_f, p) for p in range(NUM_PLAYERS)]

    def draw(k: int):
        t = k - shown + 1  # frame relative to the last context frame
        for p in range(NUM_PLAYERS):
            true_dots[p].set_data([float(true_xy[p][0][k])], [float(true_xy[p][1][k])])
            if t >= 1:
                pred_dots[p].set_data([float(pred_xy[p][0][t - 1])], [float(pred_xy[p][1][t - 1])])
        counter.set_text(f"frame {t:+d} ({'context' if t <= 0 else 'rollout'})")
        return [*true_dots, *pred_dots, counter]

    animation = FuncAnimation(fig, draw, frames=len(true_f), blit=False)
    animation.save(out, writer=PillowWriter(fps=fps))
    plt.close(fig)
    return out


def save_pictures(report: RolloutReport, layout: Layout, folder: Path) -> list[Path]:
    """All three pictures into `folder`: `ERROR_PLOT`, `TRAJECTORY_PLOT`, `ANIMATION`."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        plot_error_vs_horizon(report, folder / ERROR_PLOT),
        plot_trajectories(report, layout, folder / TRAJECTORY_PLOT),
        animate_rollout(report, layout, folder / ANIMATION),
    ]
