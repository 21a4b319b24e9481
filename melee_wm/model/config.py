"""`ModelConfig`: the architecture of a world model (the Hydra schema of `conf/model/*.yaml`).

Only plain types, lists and dicts, so `OmegaConf.structured(ModelConfig)` can type-check every YAML key.
Sizes that follow from the data (column counts, vocabularies) are not here: they come from the `Layout`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from melee_wm.schema import load_structured

ARCHS = ("mamba2", "mlp")
BACKENDS = ("torch", "mamba_ssm")
AUTO_BACKEND = "auto"  # mamba_ssm when CUDA and the package are there, else torch (resolved when the model is built)
# Preconditions of the fused kernels (causal_conv1d: widths 2..4, channels a multiple of 8 in channel-last
# layout). The options the weight interchange relies on (no in/out_proj bias, a conv bias, one D per head, the
# norm after the gate, dt_limit (0, inf)) are fixed in `Mamba2` at upstream's defaults, not configurable.
FUSED_CONV_DIM_MULTIPLE = 8
FUSED_D_CONV = (2, 4)
# Keys only one arch reads: any other arch must leave them at their defaults.
ARCH_KEYS: dict[str, tuple[str, ...]] = {
    "mamba2": (
        "n_layers",
        "d_state",
        "d_conv",
        "expand",
        "headdim",
        "ngroups",
        "chunk_size",
        "backend",
        "dt_min",
        "dt_max",
        "layer_dropout",
        "motion_inputs",
    ),
    "mlp": ("mlp_frames", "mlp_hidden"),
}


@dataclass
class ModelConfig:
    """Trunk, embeddings, heads and regularisation of a world model. Defaults are the `mamba2_base` preset.

    Keys one arch reads (`ARCH_KEYS`) must keep their defaults under the other, so no YAML key is ignored.
    """

    arch: str = "mamba2"  # "mamba2" (SSM trunk) or "mlp" (frame-stack baseline)
    d_model: int = 384  # width of the trunk and of the heads' input
    # Mamba-2 trunk.
    n_layers: int = 4
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 15  # SSD chunk length; windows up to chunk_size + 2 * d_state run as one chunk (exact)
    backend: str = "torch"  # "torch" (pure PyTorch, any device), "mamba_ssm" (fused CUDA kernels) or "auto"
    # Each player's last per-frame move and the relative position as fp32 inputs (melee_wm/model/motion.py).
    motion_inputs: bool = True
    dt_min: float = 0.001
    dt_max: float = 0.1
    norm_eps: float = 1e-5
    # Embedding width of every categorical int field (one table per field, shared by both players) ...
    embed_dim: int = 16
    # ... except the fields named here (keys are `Layout.int_fields` names; checked when the model is built).
    embed_dims: dict[str, int] = field(default_factory=lambda: {"action": 64})
    # Hidden width of the residual MLP between the controller injection and the output heads.
    head_hidden: int = 384
    # Regularisation (all off by default). unimix: share of the uniform distribution mixed into every
    # categorical prediction (log-probs then never fall below log(unimix / vocab)).
    dropout: float = 0.0
    layer_dropout: float = 0.0  # stochastic depth: chance that a residual block is skipped, per sample (train)
    unimix: float = 0.0
    # Probability that an untrained model keeps each categorical id (action, jumps, ...) of the current frame:
    # a learnable logit added to the current id (0 disables it).
    copy_prior: float = 0.9
    # One flag per column group a replay format can lack, embedded and added to every frame's features (both
    # archs; melee_wm/model/missing_inputs.py): without it a format's defaults (zero velocity) look like data.
    missing_inputs: bool = True
    # Frame-stack MLP baseline: frames seen per prediction, hidden layer widths.
    mlp_frames: int = 4
    mlp_hidden: list[int] = field(default_factory=lambda: [1024, 1024])

    def __post_init__(self) -> None:
        def fail(key: str, msg: str) -> None:
            raise ValueError(f"ModelConfig.{key}: {msg}")

        self.embed_dims = dict(self.embed_dims)
        self.mlp_hidden = list(self.mlp_hidden)
        if self.arch not in ARCHS:
            fail("arch", f"got {self.arch!r}, expected one of {list(ARCHS)}")
        fields = {f.name: f for f in dataclasses.fields(self)}
        for arch, keys in ARCH_KEYS.items():
            if arch == self.arch:
                continue
            for key in keys:
                f = fields[key]
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                value = getattr(self, key)
                if value != default:
                    fail(
                        key,
                        f"only the {arch} arch uses it, but arch={self.arch!r}; got {value!r} (default {default!r})",
                    )
        if self.backend not in (*BACKENDS, AUTO_BACKEND):
            fail("backend", f"got {self.backend!r}, expected one of {[*BACKENDS, AUTO_BACKEND]}")
        for key in ("d_model", "n_layers", "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size"):
            if getattr(self, key) < 1:
                fail(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("embed_dim", "head_hidden", "mlp_frames"):
            if getattr(self, key) < 1:
                fail(key, f"must be >= 1, got {getattr(self, key)}")
        d_inner = self.d_model * self.expand
        if d_inner % self.headdim:
            fail("headdim", f"d_model * expand = {d_inner} must be divisible by headdim = {self.headdim}")
        nheads = d_inner // self.headdim
        if nheads % self.ngroups:
            fail("ngroups", f"the number of heads ({nheads} = d_model*expand/headdim) must be divisible by it")
        if self.backend != "torch":  # what mamba_ssm's kernels (and causal_conv1d's) accept
            conv_dim = d_inner + 2 * self.ngroups * self.d_state
            if conv_dim % FUSED_CONV_DIM_MULTIPLE:
                fail(
                    "backend",
                    f"{self.backend!r} needs conv_dim = d_model*expand + 2*ngroups*d_state = {conv_dim} to be a "
                    f"multiple of {FUSED_CONV_DIM_MULTIPLE} (causal_conv1d's channel-last layout); use backend=torch",
                )
            if not FUSED_D_CONV[0] <= self.d_conv <= FUSED_D_CONV[1]:
                fail("d_conv", f"backend {self.backend!r} needs {FUSED_D_CONV[0]} <= d_conv <= {FUSED_D_CONV[1]}")
        if not 0 < self.dt_min < self.dt_max:
            fail("dt_min", f"need 0 < dt_min < dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        for key in ("dropout", "layer_dropout", "unimix", "copy_prior"):
            if not 0.0 <= getattr(self, key) < 1.0:
                fail(key, f"must be in [0, 1), got {getattr(self, key)}")
        bad = {k: v for k, v in self.embed_dims.items() if v < 1}
        if bad:
            fail("embed_dims", f"dimensions must be >= 1, got {bad}")
        if self.arch == "mlp" and not self.mlp_hidden:
            fail("mlp_hidden", "the mlp arch needs at least one hidden layer width")
        if any(h < 1 for h in self.mlp_hidden):
            fail("mlp_hidden", f"widths must be >= 1, got {self.mlp_hidden}")

    @property
    def nheads(self) -> int:
        """Number of Mamba-2 heads per layer."""
        return self.d_model * self.expand // self.headdim

    def embed_dim_of(self, field_name: str) -> int:
        """Embedding width of int field `field_name`."""
        return self.embed_dims.get(field_name, self.embed_dim)


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> ModelConfig:
    """ModelConfig from the dataclass defaults, a YAML file (e.g. `conf/model/tiny.yaml`) merged on top, then
    `key=value` overrides; an unknown key, a wrong type or a value `__post_init__` refuses is a ValueError."""
    return load_structured(ModelConfig, path, overrides)
