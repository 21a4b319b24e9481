"""A short text summary of a model (sizes, per-module parameter counts, heads) for logs."""

from __future__ import annotations

from torch import nn

from melee_wm.model.config import ModelConfig


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level child module, plus `total`."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def model_summary(model: nn.Module, cfg: ModelConfig) -> str:
    """Multi-line summary: architecture and sizes, parameters per module, every head and its output width."""
    if cfg.arch == "mamba2":
        trunk = (
            f"mamba2: d_model={cfg.d_model} n_layers={cfg.n_layers} d_state={cfg.d_state} expand={cfg.expand} "
            f"headdim={cfg.headdim} nheads={cfg.nheads} chunk_size={cfg.chunk_size} backend={cfg.backend}"
        )
    else:
        trunk = f"mlp: frames={cfg.mlp_frames} hidden={cfg.mlp_hidden} d_model={cfg.d_model}"
    counts = parameter_counts(model)
    lines = [trunk, f"frame features: {model.embed.out_dim}"]
    lines += [f"  params {name}: {n:,}" for name, n in counts.items() if name != "total" and n]
    lines.append(f"  params total: {counts['total']:,}")
    lines += [f"  head {line}" for line in model.heads.describe()]
    return "\n".join(lines)


class Summarized:
    """`num_parameters` and `summary` of `WorldModelInterface`, written once for every model (a module with a
    `cfg: ModelConfig`, an `embed` and `heads`)."""

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """Human-readable description: config, head shapes and parameter counts."""
        return model_summary(self, self.cfg)
