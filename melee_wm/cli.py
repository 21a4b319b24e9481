"""`melee-wm`: fetch the sample replays, encode replays into a store, merge and inspect stores, score the
baselines, evaluate a checkpoint's rollouts, play a checkpoint as a simulator. Training is `python train.py`
(Hydra)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.merge import merge_stores
from melee_wm.data.pipeline import StoreFilters
from melee_wm.data.split import SPLIT_KINDS
from melee_wm.data.store import Store, StoreConfigError, StoreError, open_store
from melee_wm.data.store_writer import build_store
from melee_wm.data.summary import print_summary
from melee_wm.encoding.config import load_encoding_config
from melee_wm.eval.baselines import BASELINES, score_baselines
from melee_wm.frames.table import TableBaseline
from melee_wm.samples import SampleReplaysError, fetch_samples, sample_dir


class CLIError(Exception):
    """An error reported as one line on stderr with a non-zero exit code."""


def _cmd_samples(args: argparse.Namespace, console: Console) -> None:
    folder = fetch_samples(Path(args.dest)) if args.dest else sample_dir(fetch=True)
    console.print(str(folder), soft_wrap=True)


def _cmd_encode(args: argparse.Namespace, console: Console) -> None:
    try:
        cfg = load_encoding_config(args.encoding, args.set)
    except ValueError as err:
        raise CLIError(str(err)) from None
    filters = StoreFilters(
        stages=args.stages,
        characters=args.characters,
        end_methods=args.end_methods,
        min_frames=args.min_frames,
        allow_cpu=not args.no_cpu,
    )
    build_store(
        args.replays,
        args.out,
        cfg,
        filters,
        workers=args.workers,
        shard_frames=args.shard_frames,
        overwrite=args.overwrite,
        dedupe=not args.no_dedupe,
        progress=True,
    )


def _cmd_merge(args: argparse.Namespace, console: Console) -> None:
    merge_stores(args.stores, args.out, shard_frames=args.shard_frames, overwrite=args.overwrite, progress=True)


def _cmd_info(args: argparse.Namespace, console: Console) -> None:
    store = open_store(args.store)
    console.print(f"store {store.path}", soft_wrap=True)
    print_summary(store.manifest, console, details=True)


BASELINE_METRICS = ("pos_mae", "pos_mae_smooth", "action_acc", "change_acc", "false_change")


def print_baseline(store: Store, data_cfg: DataConfig, split: str, console: Console) -> None:
    """Score every baseline on a split of the store (the table fitted on its training split) and print a table."""
    dataset = MeleeDataset.from_store(store, split, data_cfg)
    if len(dataset) == 0:
        raise CLIError(
            f"store {store.path}: split {split!r} has no window of {data_cfg.window_len} frames "
            f"({dataset.num_games} games, val_fraction={data_cfg.val_fraction})"
        )
    scores = score_baselines(dataset, table=TableBaseline.fit(MeleeDataset.from_store(store, "train", data_cfg)))
    title = (
        f"baselines, split {split!r} ({data_cfg.split}, val_fraction {data_cfg.val_fraction}, salt "
        f"{data_cfg.split_salt!r}): {dataset.num_games} games, {len(dataset):,} windows"
    )
    table = Table(title=title)
    table.add_column("baseline")
    for metric in BASELINE_METRICS:
        table.add_column(metric, justify="right")
    for baseline in BASELINES:
        table.add_row(baseline, *(f"{scores[baseline][f'{metric}/all']:.4f}" for metric in BASELINE_METRICS))
    console.print(table)


def _cmd_baseline(args: argparse.Namespace, console: Console) -> None:
    data_cfg = DataConfig(
        store=args.store,
        context_len=args.context_len,
        multi_position=not args.last_position_only,
        val_fraction=args.val_fraction,
        split=args.split_kind,
        split_salt=args.split_salt,
        tail_gap=args.tail_gap,
    )
    print_baseline(open_store(args.store), data_cfg, args.split, console)


def _cmd_eval(args: argparse.Namespace, console: Console) -> None:
    from melee_wm.training.evaluate import evaluate_checkpoint  # torch and Lightning load only for this command

    report, folder = evaluate_checkpoint(
        args.checkpoint, args.store, args.horizon, args.samples, args.seed, args.out, args.all_games, args.device
    )
    summaries = report.to_json()["summaries"]
    table = Table(title=f"rollouts: {report.starts} starts, {report.games} games ({report.meta['split']} split)")
    predictors = [name for name in next(iter(summaries.values())) if not name.startswith("ratio")]
    table.add_column("summary")
    for name in predictors:
        table.add_column(name.replace("_", " "), justify="right")
    for key, entry in summaries.items():
        table.add_row(key, *(f"{entry[k]:.4f}" for k in predictors))
    console.print(table)
    if report.meta["same_games_as_training_store"] is False and not args.all_games:
        console.print(
            "this store is not the run's training store: scored its val split only; pass --all-games "
            "to score every game of a store the model never saw",
            soft_wrap=True,
        )
    console.print(f"written to {folder}", soft_wrap=True)


def _cmd_play(args: argparse.Namespace, console: Console) -> None:
    from melee_wm.sim import Simulator  # torch and Lightning load only for this command
    from melee_wm.sim.play import play, write_play

    if args.frame is not None and args.game is None:
        raise CLIError("--frame needs --game (which game the frame is in)")
    sim = Simulator.from_checkpoint(args.checkpoint, args.device or "cpu", temperature=args.temperature, seed=args.seed)
    store = sim.open(args.store)
    record = play(sim, store, args.frames, args.controller, args.game, args.frame, args.seed)
    meta = {"checkpoint": args.checkpoint, "store": str(store.path), "seed": args.seed, "temperature": args.temperature}
    paths = write_play(record, Path(args.out), meta)
    last = record.frames[-1]
    console.print(
        f"played {args.frames} frames of game {record.game} from frame {record.start_frame} with "
        f"{record.controller} controllers{' (game over)' if last['done'] else ''}",
        soft_wrap=True,
    )
    if record.truth is not None:
        for p in range(len(last["players"])):
            model, true = last["players"][p], record.truth[-1]["players"][p]
            gap = ((model["x"] - true["x"]) ** 2 + (model["y"] - true["y"]) ** 2) ** 0.5
            console.print(
                f"  p{p} last frame: model {model['action_name']} at ({model['x']:.1f}, {model['y']:.1f}), "
                f"true {true['action_name']} at ({true['x']:.1f}, {true['y']:.1f}): {gap:.1f} units apart",
                soft_wrap=True,
            )
    for path in paths:
        console.print(f"wrote {path}", soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melee-wm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    samples = sub.add_parser("samples", help="fetch (or verify) the six sample replays and print their folder")
    samples.add_argument("--dest", help="folder to fetch into (default: $MELEE_WM_SAMPLES or the user cache)")
    samples.set_defaults(func=_cmd_samples)

    encode = sub.add_parser("encode", help="encode replay files/folders into a sharded store")
    encode.add_argument("replays", nargs="+", help="replay files and folders (searched recursively for *.slp)")
    encode.add_argument("--out", required=True, help="store folder")
    encode.add_argument("--stages", type=int, nargs="+", help="keep only these stage ids (FD 32, BF 31)")
    encode.add_argument("--characters", type=int, nargs="+", help="keep games whose both characters are in these")
    encode.add_argument("--end-methods", type=int, nargs="+", help="keep only these game end methods")
    encode.add_argument("--min-frames", type=int, default=0, help="drop games shorter than this")
    encode.add_argument("--no-cpu", action="store_true", help="drop games with a CPU player")
    encode.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 1))
    encode.add_argument("--shard-frames", type=int, default=1_000_000, help="frames per shard (bounds memory)")
    encode.add_argument("--overwrite", action="store_true", help="replace an existing store")
    encode.add_argument("--no-dedupe", action="store_true", help="store files with identical bytes again")
    encode.add_argument("--encoding", help="EncodingConfig YAML (default: the schema defaults, as default.yaml)")
    encode.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="EncodingConfig overrides"
    )
    encode.set_defaults(func=_cmd_encode)

    merge = sub.add_parser("merge", help="merge stores encoded with the same config into one (dedupe by md5)")
    merge.add_argument("stores", nargs="+", help="source stores, merged in this order")
    merge.add_argument("--out", required=True, help="merged store folder (an existing one is resumed/extended)")
    merge.add_argument("--shard-frames", type=int, default=1_000_000, help="frames per shard (bounds memory)")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    merge.set_defaults(func=_cmd_merge)

    info = sub.add_parser("info", help="print a store's summary and column statistics")
    info.add_argument("store")
    info.set_defaults(func=_cmd_info)

    baseline = sub.add_parser("baseline", help="score every baseline (table fitted on the train split) on a split")
    baseline.add_argument("store")
    baseline.add_argument("--split", choices=("train", "val", "all"), default="val")
    baseline.add_argument("--context-len", type=int, default=DataConfig.context_len, help="K frames of context")
    baseline.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction)
    baseline.add_argument("--split-kind", choices=SPLIT_KINDS, default=DataConfig.split, help="data.split of the run")
    baseline.add_argument("--split-salt", default=DataConfig.split_salt, help="data.split_salt of the run")
    baseline.add_argument("--tail-gap", type=int, default=DataConfig.tail_gap, help="data.tail_gap of the run")
    baseline.add_argument("--last-position-only", action="store_true", help="score only each window's last frame")
    baseline.set_defaults(func=_cmd_baseline)

    evaluate = sub.add_parser("eval", help="rollout evaluation of a checkpoint on a store (JSON + pictures)")
    evaluate.add_argument("checkpoint", help="a training checkpoint (runs/<run>/checkpoints/*.ckpt)")
    evaluate.add_argument("--store", required=True, help="store to draw the starts from (same encoding config)")
    evaluate.add_argument("--horizon", type=int, default=20, help="frames rolled out from each start")
    evaluate.add_argument("--samples", type=int, default=300, help="starting points, drawn with --seed")
    evaluate.add_argument("--seed", type=int, default=42)
    evaluate.add_argument("--out", help="output folder (default: <run>/eval/<checkpoint name>)")
    evaluate.add_argument(
        "--all-games", action="store_true", help="score every game (a store the model never saw), not the val split"
    )
    evaluate.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    evaluate.set_defaults(func=_cmd_eval)

    play = sub.add_parser(
        "play", help="drive a checkpoint as a simulator from a real start: GIF, trajectory PNG and frames JSON"
    )
    play.add_argument("checkpoint", help="a training checkpoint (runs/<run>/checkpoints/*.ckpt)")
    play.add_argument("--store", required=True, help="store to start from (same encoding config)")
    play.add_argument("--game", type=int, help="game index in the store (default: the first with room)")
    play.add_argument("--frame", type=int, help="the start frame, the last context frame (default: 10 s in)")
    play.add_argument("--frames", type=int, default=600, help="frames to simulate")
    play.add_argument(
        "--controller",
        default="replay",
        help="replay (the game's own inputs; the truth is drawn beside), idle, random, or a JSON file of inputs",
    )
    play.add_argument("--seed", type=int, default=0, help="seeds random controllers and sampling")
    play.add_argument("--temperature", type=float, default=0.0, help="0: most likely action states; > 0: sampled at it")
    play.add_argument("--out", default="play.gif", help="the GIF; _trajectories.png and _frames.json go beside it")
    play.add_argument("--device", help="torch device (default: cpu)")
    play.set_defaults(func=_cmd_play)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `melee-wm` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        args.func(args, console)
    except (CLIError, FileNotFoundError, StoreConfigError, StoreError, SampleReplaysError, ValueError) as err:
        print(f"melee-wm {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
