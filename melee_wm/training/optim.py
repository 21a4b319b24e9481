"""AdamW parameter groups and the warmup + cosine learning-rate schedule (stepped per optimizer step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from melee_wm.training.config import OptimConfig


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters that get no weight decay: norms, biases, embeddings (every parameter with < 2 dims or owned
    by an `nn.Embedding`) and every parameter the model flags `_no_weight_decay` (Mamba-2's dt_bias, A_log, D)."""
    names = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if p.ndim < 2 or isinstance(module, nn.Embedding) or getattr(p, "_no_weight_decay", False):
                names.add(full)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights and the no-decay set; every trainable parameter is in exactly one."""
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear from ~0 to 1 over `warmup_steps`, then cosine from 1 to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, total_steps: int, fused: bool = True
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups` and a per-step `warmup_cosine` schedule ending at `total_steps`. fused: use the
    fused kernel (Lightning refuses it with gradient clipping under mixed precision, which unscales inside it)."""
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    return optimizer, scheduler
