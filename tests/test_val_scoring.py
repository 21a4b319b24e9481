"""Under DDP the validation sampler pads a rank's last batch with a window another rank also scores: the model and
every baseline leave that repeat out alike, so both are scored on every validation window exactly once."""

from __future__ import annotations

import json
import math

import pytest

from melee_wm.data.config import DataConfig
from melee_wm.data.datamodule import BatchItems, MeleeDataModule
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.sampler import WindowBatchSampler
from melee_wm.eval.baselines import BASELINES, score_baselines
from melee_wm.eval.frame_metrics import FrameMetrics
from melee_wm.frames.table import TableBaseline
from melee_wm.frames.targets import target_statistics
from melee_wm.training.compose import compose_train_config, to_container, train_config_from_dict
from melee_wm.training.module import WorldModelModule
from melee_wm.training.run import HEADLINE, METRICS_FILE
from tests.helpers import overrides_for, quiet_trainer, run_train_py

KEYS = [key for key, _, _ in HEADLINE]


def scores(module: WorldModelModule, batch) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The model's and every baseline's metrics on one batch, scored as `validation_step` scores them."""
    model = FrameMetrics(module.layout)
    baselines = {name: FrameMetrics(module.layout) for name in BASELINES}
    module.forward_loss(batch, model, baselines)
    return model.compute(), {name: m.compute() for name, m in baselines.items()}


def assert_close(a: dict[str, float], b: dict[str, float], keys: list[str]) -> None:
    """Equal values of `keys` up to float32 round-off in the model (NaN, nothing counted, equals NaN)."""
    for key in keys:
        assert math.isnan(a[key]) if math.isnan(b[key]) else a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), key


def test_a_padding_repeat_is_scored_by_neither_model_nor_baselines(sample_store):
    """Rank 1 of 2 over 7 windows gets windows 1, 3, 5 and a repeat of window 0: its batch, built through the real
    sampler and dataset item, scores like the batch of windows 1, 3, 5 alone, for the model and every baseline."""
    cfg = train_config_from_dict(compose_train_config(["experiment=smoke"]))
    train_set = MeleeDataset.from_store(sample_store, "train", cfg.data)
    val = MeleeDataset.from_store(sample_store, "val", cfg.data)
    stats = target_statistics(train_set, cfg.objective.position_parameterization)
    module = WorldModelModule(to_container(cfg), stats.to_dict(), TableBaseline.fit(train_set)).eval()
    module.net.heads.out.weight.data.normal_(0, 0.1)  # an untrained model would predict the table exactly
    stride = len(val) // 7  # windows spread over the val games
    (item,) = WindowBatchSampler(7, 4, shuffle=False, drop_last=False, rank=1, world_size=2)
    assert item.indices == [0, 1, 3, 5] and item.counted.tolist() == [False, True, True, True]
    spread = item._replace(indices=[i * stride for i in item.indices])
    padded = BatchItems(val)[spread]
    alone = val.get_batch(spread.indices[1:])
    assert padded.num_counted == alone.num_counted == 3
    model, baselines = scores(module, padded)
    model_alone, baselines_alone = scores(module, alone)
    keys = ["pos_mae/all", "pos_mae_smooth/all", "action_acc/all", "false_change/all", "velocity_mae"]
    assert_close(model, model_alone, keys)
    for name in BASELINES:
        assert_close(baselines[name], baselines_alone[name], keys)
    assert module.forward_loss(padded).total.item() == pytest.approx(module.forward_loss(alone).total.item(), rel=1e-5)
    # The repeat would have counted: scored without the mark, the same batch gives other numbers.
    unmarked, _ = scores(module, val.get_batch(spread.indices))
    assert unmarked["pos_mae/all"] != pytest.approx(model_alone["pos_mae/all"], rel=1e-3)


# A tail split of 0.4 % of every sample game holds 51 windows of the smoke run's 31 frames (in a Slippi 2.2 game,
# which lacks the velocities, and a 3.15 game): an odd count, and few, so the one repeat would weigh 2 %.
VAL_FRACTION = 0.004


@pytest.mark.slow
def test_ddp_validation_scores_model_and_baselines_on_every_window_once(sample_store, tmp_path):
    """`train.py` on two CPU processes (DistributedDataParallel, gloo; `trainer=ddp`) with an odd number of val
    windows: the model's logged metrics equal one process validating the same checkpoint on the same windows,
    and the baselines' equal `score_baselines` over every val window once."""
    data = DataConfig(context_len=30, split="tail", val_fraction=VAL_FRACTION)
    val = MeleeDataset.from_store(sample_store, "val", data)
    assert len(val) % 2 == 1 and not val.game_valid_floats.all()  # rank 1 gets a repeat; the indicators are on
    run_train_py(
        tmp_path,
        "experiment=smoke",
        *overrides_for(sample_store, tmp_path),
        "run_name=ddp",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"data.val_fraction={VAL_FRACTION}",
        "data.batch_size=16",
    )
    run_dir = tmp_path / "runs" / "ddp"
    logged = json.loads((run_dir / METRICS_FILE).read_text())
    module = WorldModelModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.cfg.data.val_fraction == VAL_FRACTION and module.cfg.data.batch_size == 16
    one_process = quiet_trainer(limit_val_batches=1.0).validate(
        module, datamodule=MeleeDataModule(module.cfg.data, module.cfg.encoding), verbose=False
    )[0]
    every_window = score_baselines(val, table=module.table)
    # Logged values are float32 (rel. 6e-8); one repeated window of 51 would move them by about 1e-2.
    for key in KEYS:
        assert logged[f"val/{key}"] == pytest.approx(one_process[f"val/{key}"], rel=1e-5), key
        for name in BASELINES:
            assert logged[f"baseline/{name}/{key}"] == pytest.approx(every_window[name][key], rel=1e-6), (name, key)
