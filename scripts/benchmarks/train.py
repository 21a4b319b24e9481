"""Training-loop overhead: samples/s of `Trainer.fit` vs a bare PyTorch loop, same model, loss, optimizer,
gradient clipping and batches, measured side by side in one process (mamba2_base, CPU, fp32).

Both run `WorldModelModule.forward_loss` on batches of the sample store's train split from the same
DataLoader. The Lightning side includes everything our module does per step (train metrics, logging,
the non-finite check); rounds alternate between the two so a busy neighbour hits both alike.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from melee_wm.data.datamodule import MeleeDataModule
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import EncodingConfig
from melee_wm.frames.table import TableBaseline
from melee_wm.frames.targets import target_statistics
from melee_wm.samples import sample_dir
from melee_wm.training.callbacks import StopOnNonFiniteLoss
from melee_wm.training.compose import compose_train_config, to_container, train_config_from_dict
from melee_wm.training.module import WorldModelModule
from melee_wm.training.optim import build_optimizer
from melee_wm.training.run import trainer_kwargs

from ._common import record, summary

TARGET = 0.9
WARMUP = 3  # steps of each round not timed (allocator and thread-pool warm-up)


class StepTimer(Callback):
    """Wall time from the start of batch WARMUP to the end of the last batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == WARMUP:
            self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning_round(module: WorldModelModule, datamodule: MeleeDataModule, cfg, steps: int) -> float:
    """Seconds for steps - WARMUP optimizer steps inside `Trainer.fit`."""
    timer = StepTimer()
    kwargs = trainer_kwargs(cfg) | {
        "max_epochs": 1,
        "limit_train_batches": steps,
        "limit_val_batches": 0,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
    }
    trainer = L.Trainer(
        **kwargs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[StopOnNonFiniteLoss(), timer],
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.seconds


def bare_round(module: WorldModelModule, datamodule: MeleeDataModule, cfg, steps: int) -> float:
    """Seconds for steps - WARMUP steps of a plain loop: forward_loss, backward, clip, AdamW, schedule."""
    optimizer, scheduler = build_optimizer(module.net, cfg.optim, steps)
    module.train()
    start = 0.0
    for i, batch in enumerate(datamodule.train_dataloader()):
        if i == steps:
            break
        if i == WARMUP:
            start = time.perf_counter()
        loss = module.forward_loss(batch).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.net.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


def run(quick: bool) -> Iterator[dict]:
    torch.manual_seed(0)
    batch, steps, rounds = (32, 8, 2) if quick else (64, 20, 3)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store([sample_dir(fetch=True)], Path(tmp) / "store", EncodingConfig(), progress=False)
        cfg = train_config_from_dict(
            compose_train_config(
                ["experiment=smoke", "model=mamba2_base", f"data.store={store.path}", f"data.batch_size={batch}"]
            )
        )
        train_set = MeleeDataset.from_store(store, "train", cfg.data)
        stats = target_statistics(train_set, cfg.objective.position_parameterization)
        module = WorldModelModule(to_container(cfg), stats.to_dict(), TableBaseline.fit(train_set))
        datamodule = MeleeDataModule(cfg.data, cfg.encoding)
        datamodule.setup("fit")
        timed = (steps - WARMUP) * batch
        best = {"lightning": float("inf"), "bare": float("inf")}
        for r in range(rounds):
            for side, fn in (("lightning", lightning_round), ("bare", bare_round)):
                seconds = fn(module, datamodule, cfg, steps)
                best[side] = min(best[side], seconds)
                yield record(f"{side}_round", round=r, samples_per_s=timed / seconds, seconds=seconds)
    ratio = best["bare"] / best["lightning"]  # = lightning samples/s / bare samples/s
    yield summary(
        ratio,
        TARGET,
        ratio >= TARGET,
        lightning_samples_per_s=timed / best["lightning"],
        bare_samples_per_s=timed / best["bare"],
        batch=batch,
        model="mamba2_base",
        params=module.net.num_parameters(),
    )
