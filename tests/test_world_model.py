"""World model and MLP baseline: layout-driven shapes, forward == step, causality, presets, regularisers."""

from __future__ import annotations

import dataclasses
import inspect
import itertools

import pytest
import torch

from melee_wm.encoding import NUM_PLAYERS, EncodingConfig, Layout
from melee_wm.encoding.missing import MISSING_FIELD_COLUMNS, invalid_columns, missing_groups
from melee_wm.model.build import build_model
from melee_wm.model.config import ARCH_KEYS, ModelConfig, load_model_config
from melee_wm.model.heads import Prediction
from melee_wm.model.interface import WorldModelInterface
from melee_wm.model.mlp import FrameStackMLP, FrameStackState
from melee_wm.model.motion import MotionFeatures
from melee_wm.model.world_model import WorldModel, drop_path
from melee_wm.paths import config_dir

CONF = config_dir() / "model"
CONTEXT = 12
ARCHS = ("mamba2", "mlp")


# Two float64 evaluations that should agree up to round-off: MKL/oneDNN pick their kernels by CPU and memory
# alignment, so even the same weights in a different tensor may round differently (~1e-15), never by more.
ROUNDOFF64 = {"rtol": 0, "atol": 1e-12}

# What the tiny MLP sets beyond the keys it shares with the (Mamba-2) `tiny` preset.
TINY_MLP = {"mlp_frames": 3, "mlp_hidden": [64]}


def preset(name: str, **overrides) -> ModelConfig:
    """A `conf/model` YAML through `load_model_config`, then `overrides` (validated again)."""
    return dataclasses.replace(load_model_config(CONF / f"{name}.yaml"), **overrides)


def tiny(arch: str, **overrides) -> ModelConfig:
    """The `tiny` preset; for the MLP its shared keys (widths, embeddings, heads) plus `TINY_MLP`."""
    cfg = preset("tiny")
    if arch == "mlp":
        shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ARCH_KEYS["mamba2"]}
        cfg = ModelConfig(**{**shared, "arch": "mlp", **TINY_MLP})
    return dataclasses.replace(cfg, **overrides)


def batch(layout: Layout, b: int = 3, seqlen: int = CONTEXT, dtype=torch.float64, seed: int = 0):
    """Random frames in the layout's shapes: floats (b, seqlen, F), int16 ids within each vocab, next_ctrl."""
    g = torch.Generator().manual_seed(seed)
    floats = torch.randn(b, seqlen + 1, layout.num_floats, generator=g, dtype=dtype)
    vocabs = torch.tensor(layout.int_vocabs)
    ints = (torch.rand(b, seqlen + 1, layout.num_ints, generator=g) * vocabs).long().to(torch.int16)
    next_ctrl = floats[:, 1:, layout.float_slice("controller")]
    return floats[:, :-1], ints[:, :-1], next_ctrl


def old_format_first(layout: Layout, b: int = 3) -> dict[str, torch.Tensor]:
    """`forward`'s validity keywords for `b` windows, the first lacking every field a replay format can lack."""
    invalid_f, invalid_i = invalid_columns(layout, MISSING_FIELD_COLUMNS)
    first = torch.arange(b)[:, None] == 0
    return {"valid": ~(first & invalid_f), "valid_ints": ~(first & invalid_i)}


def make(arch: str, layout: Layout, dtype=torch.float64, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny(arch, **overrides), layout, CONTEXT).to(dtype).eval()


def flat(pred: Prediction) -> torch.Tensor:
    """Every output of a prediction as one tensor (..., total), for comparisons."""
    parts = [pred.floats[g] for g in sorted(pred.floats)]
    parts += [pred.categorical[f].flatten(-2) for f in sorted(pred.categorical)]
    return torch.cat(parts, dim=-1)


def flat_state(state) -> torch.Tensor:
    if isinstance(state, FrameStackState):
        return state.frames.flatten()
    return torch.cat([t.flatten() for s in state.layers for t in (s.conv, s.resolved().ssm)])


@pytest.mark.parametrize(("arch", "cls"), [("mamba2", WorldModel), ("mlp", FrameStackMLP)])
def test_every_arch_satisfies_the_model_interface(arch, cls):
    """build_model returns each arch's class, which has the interface's methods with its parameter names."""
    model = make(arch, Layout(EncodingConfig()))
    assert type(model) is cls and isinstance(model, WorldModelInterface)
    for name in ("forward", "step", "init_state", "num_parameters", "summary"):
        expected = list(inspect.signature(getattr(WorldModelInterface, name)).parameters)[1:]  # without self
        assert list(inspect.signature(getattr(model, name)).parameters) == expected, name
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) and model.summary()


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes_follow_layout(arch):
    layout = Layout(EncodingConfig())
    model = make(arch, layout)
    floats, ints, next_ctrl = batch(layout)
    pred, _ = model(floats, ints, next_ctrl)
    b, seqlen = floats.shape[:2]
    assert set(pred.floats) == set(layout.target_float_groups)
    for g in layout.target_float_groups:
        s = layout.float_slice(g)
        assert pred.floats[g].shape == (b, seqlen, s.stop - s.start), g
    assert set(pred.categorical) == set(layout.categorical_targets)
    for f in layout.categorical_targets:
        assert pred.categorical[f].shape == (b, seqlen, 2, layout.int_vocab(f)), f
        assert pred.log_probs(f).shape == (b, seqlen, 2, layout.int_vocab(f))
    assert torch.isfinite(flat(pred)).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_equals_repeated_step(arch):
    layout = Layout(EncodingConfig())
    model = make(arch, layout)
    floats, ints, next_ctrl = batch(layout)
    with torch.no_grad():
        pred, state = model(floats, ints, next_ctrl)
        step_state = model.init_state(floats.shape[0])
        for t in range(floats.shape[1]):
            step_pred, step_state = model.step(floats[:, t], ints[:, t], next_ctrl[:, t], step_state)
            torch.testing.assert_close(flat(step_pred), flat(pred)[:, t], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(flat_state(step_state), flat_state(state), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_inplace_step_equals_pure_step(arch):
    """`step(..., inplace=True)` (rollouts) gives the pure step's predictions and states; the pure step leaves
    the state it was given untouched."""
    layout = Layout(EncodingConfig())
    model = make(arch, layout)
    floats, ints, next_ctrl = batch(layout)
    with torch.no_grad():
        _, start = model(floats[:, :10], ints[:, :10], next_ctrl[:, :10])
        before = flat_state(start).clone()
        pure, reused = start, model(floats[:, :10], ints[:, :10], next_ctrl[:, :10])[1]
        for t in range(10, floats.shape[1]):
            pure_pred, pure = model.step(floats[:, t], ints[:, t], next_ctrl[:, t], pure)
            reused_pred, reused = model.step(floats[:, t], ints[:, t], next_ctrl[:, t], reused, inplace=True)
            torch.testing.assert_close(flat(reused_pred), flat(pure_pred), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(flat_state(reused), flat_state(pure), rtol=1e-12, atol=1e-12)
        assert torch.equal(flat_state(start), before)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_float32_last_position_matches_step(arch):
    layout = Layout(EncodingConfig())
    model = make(arch, layout, dtype=torch.float32)
    floats, ints, next_ctrl = batch(layout, dtype=torch.float32)
    with torch.no_grad():
        pred, _ = model(floats, ints, next_ctrl)
        state = model.init_state(floats.shape[0])
        for t in range(floats.shape[1]):
            step_pred, state = model.step(floats[:, t], ints[:, t], next_ctrl[:, t], state)
    torch.testing.assert_close(flat(step_pred), flat(pred)[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_resumes_from_state(arch):
    """Two forwards over halves of a window, the second starting from the first's state, equal one forward."""
    layout = Layout(EncodingConfig())
    model = make(arch, layout)
    floats, ints, next_ctrl = batch(layout)
    cut = 5
    with torch.no_grad():
        whole, whole_state = model(floats, ints, next_ctrl)
        first, state = model(floats[:, :cut], ints[:, :cut], next_ctrl[:, :cut])
        second, state = model(floats[:, cut:], ints[:, cut:], next_ctrl[:, cut:], state)
    torch.testing.assert_close(torch.cat([flat(first), flat(second)], 1), flat(whole), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(flat_state(state), flat_state(whole_state), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_causal(arch):
    """Changing frames after t (and their controller rows) leaves predictions at <= t unchanged (within float64
    round-off) and moves the prediction at t + 1 by far more."""
    layout = Layout(EncodingConfig())
    model = make(arch, layout)
    floats, ints, next_ctrl = batch(layout)
    t = 6
    floats2, ints2, ctrl2 = floats.clone(), ints.clone(), next_ctrl.clone()
    floats2[:, t + 1 :] += 1.0
    ints2[:, t + 1 :] = 1
    ctrl2[:, t + 1 :] -= 1.0
    with torch.no_grad():
        a = flat(model(floats, ints, next_ctrl)[0])
        b = flat(model(floats2, ints2, ctrl2)[0])
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], **ROUNDOFF64)
    assert (a[:, t + 1] - b[:, t + 1]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_next_controller_reaches_its_position_only(arch):
    layout = Layout(EncodingConfig())
    model = make(arch, layout)
    floats, ints, next_ctrl = batch(layout)
    t = 4
    ctrl2 = next_ctrl.clone()
    ctrl2[:, t] += 1.0
    with torch.no_grad():
        a = flat(model(floats, ints, next_ctrl)[0])
        b = flat(model(floats, ints, ctrl2)[0])
    changed = (a - b).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.tolist() == [i == t for i in range(a.shape[1])]


@pytest.mark.parametrize("arch", ARCHS)
def test_encoding_change_resizes_model(arch):
    """More buttons, state flags and actions change input and head sizes; nothing else needs to change."""
    base = Layout(EncodingConfig())
    cfg = EncodingConfig()
    bigger = Layout(
        dataclasses.replace(
            cfg,
            buttons=[*cfg.buttons, "start"],
            state_flags=[*cfg.state_flags, "dead"],
            action_vocab=cfg.action_vocab + 50,
        )
    )
    m0, m1 = make(arch, base), make(arch, bigger)
    assert m1.embed.out_dim == m0.embed.out_dim + 2 * 2  # one button and one flag column per player
    floats, ints, next_ctrl = batch(bigger)
    pred, _ = m1(floats, ints, next_ctrl)
    assert pred.floats["binary"].shape[-1] == base.float_slice("binary").stop - base.float_slice("binary").start + 2
    assert pred.categorical["action"].shape[-2:] == (2, cfg.action_vocab + 50)
    assert m1.embed.tables["action"].num_embeddings == cfg.action_vocab + 50
    assert m1.heads.ctrl_proj.in_features == m0.heads.ctrl_proj.in_features + 2
    with pytest.raises(ValueError, match="controller"):
        m0(*batch(base)[:2], next_ctrl)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip(arch, tmp_path):
    layout = Layout(EncodingConfig())
    model = make(arch, layout, seed=1)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    other = make(arch, layout, seed=2)
    floats, ints, next_ctrl = batch(layout)
    with torch.no_grad():
        assert not torch.allclose(flat(other(floats, ints, next_ctrl)[0]), flat(model(floats, ints, next_ctrl)[0]))
        other.load_state_dict(torch.load(path, weights_only=True))
        weights = zip(other.state_dict().values(), model.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in weights)
        torch.testing.assert_close(
            flat(other(floats, ints, next_ctrl)[0]), flat(model(floats, ints, next_ctrl)[0]), **ROUNDOFF64
        )


@pytest.mark.parametrize(("name", "low", "high"), [("mamba2_base", 4.0e6, 5.0e6), ("mamba2_large", 15.0e6, 16.5e6)])
def test_preset_parameter_counts(name, low, high):
    layout = Layout(EncodingConfig())
    model = build_model(preset(name), layout, context_len=30)
    assert low <= model.num_parameters() <= high
    summary = model.summary()
    assert f"{model.num_parameters():,}" in summary
    assert "categorical action: 2 x 400" in summary


def expected_parameters(cfg: ModelConfig, layout: Layout) -> int:
    """Parameter count of `build_model(cfg, layout, ...)` worked out from the config and layout alone."""
    d, h = cfg.d_model, cfg.head_hidden
    embed = sum(layout.int_vocab(f) * cfg.embed_dim_of(f) for f in layout.int_fields)
    frame_dim = layout.num_floats + sum(
        (layout.int_slice(f).stop - layout.int_slice(f).start) * cfg.embed_dim_of(f) for f in layout.int_fields
    )
    ctrl = layout.float_slice("controller")
    outputs = sum(layout.float_slice(g).stop - layout.float_slice(g).start for g in layout.target_float_groups)
    outputs += NUM_PLAYERS * sum(layout.int_vocab(f) for f in layout.categorical_targets)
    # ctrl_proj, norm, fc1, fc2, out_norm, out (all linears with bias).
    heads = (ctrl.stop - ctrl.start + 1) * d + d + (d + 1) * h + (h + 1) * d + d + (d + 1) * outputs
    heads += len(layout.categorical_targets) if cfg.copy_prior > 0 else 0  # one copy logit per field
    # Missing-field indicators: one bias-free linear from the flags to the width they are added at.
    flags = len(missing_groups(layout)) if cfg.missing_inputs else 0
    if cfg.arch == "mlp":
        widths = [cfg.mlp_frames * frame_dim, *cfg.mlp_hidden, d]
        trunk = sum((a + 1) * b for a, b in itertools.pairwise(widths)) + d  # linears + final norm
        return embed + trunk + heads + flags * widths[1]
    d_inner, nheads = cfg.expand * d, cfg.nheads
    conv_dim = d_inner + 2 * cfg.ngroups * cfg.d_state
    # Block: pre-norm; mixer in_proj (z, xBC, dt; no bias), depthwise conv (+bias), dt_bias/A_log/D, gated
    # norm, out_proj (no bias).
    mixer = d * (d_inner + conv_dim + nheads) + conv_dim * (cfg.d_conv + 1) + 3 * nheads + d_inner + d_inner * d
    motion = MotionFeatures.width if cfg.motion_inputs else 0  # fp32 motion inputs beside the embedded frame
    trunk = (frame_dim + motion + 1) * d + cfg.n_layers * (d + mixer) + d  # in_proj, blocks, final norm
    return embed + trunk + heads + flags * d


def test_presets_build_to_their_configs_and_reject_unknown_keys(tmp_path):
    layout = Layout(EncodingConfig())
    paths = sorted(CONF.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"mamba2_base", "mamba2_large", "mlp", "tiny"}
    for path in paths:
        cfg = preset(path.stem)
        model = build_model(cfg, layout, context_len=30)
        assert isinstance(model, torch.nn.Module)
        assert model.num_parameters() == expected_parameters(cfg, layout), path.stem
        assert model.heads.float_widths == {
            g: layout.float_slice(g).stop - layout.float_slice(g).start for g in layout.target_float_groups
        }
        assert model.heads.vocabs == {f: layout.int_vocab(f) for f in layout.categorical_targets}
        assert model.heads.out.in_features == cfg.d_model
        for f in layout.int_fields:
            table = model.embed.tables[f]
            assert (table.num_embeddings, table.embedding_dim) == (layout.int_vocab(f), cfg.embed_dim_of(f)), f
        if cfg.arch == "mamba2":
            assert len(model.blocks) == cfg.n_layers
            assert model.blocks[0].mixer.nheads == cfg.nheads
    assert preset("mlp").arch == "mlp"
    bad = tmp_path / "bad.yaml"
    bad.write_text("d_modle: 64\n")
    with pytest.raises(ValueError, match="d_modle"):
        load_model_config(bad)


def test_load_model_config_overrides_and_errors(tmp_path):
    cfg = load_model_config(CONF / "tiny.yaml", ["d_model=64", "embed_dims.action=12"])
    assert (cfg.d_model, cfg.embed_dim_of("action"), cfg.n_layers) == (64, 12, preset("tiny").n_layers)
    with pytest.raises(ValueError, match="d_model"):
        load_model_config(CONF / "tiny.yaml", ["d_model=wide"])
    with pytest.raises(ValueError, match=r"ModelConfig\.headdim"):
        load_model_config(CONF / "tiny.yaml", ["headdim=7"])
    with pytest.raises(ValueError, match="not found"):
        load_model_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("arch", "key", "value"),
    [
        ("mlp", "n_layers", 2),
        ("mlp", "d_state", 8),
        ("mlp", "layer_dropout", 0.1),
        ("mlp", "backend", "mamba_ssm"),
        ("mamba2", "mlp_frames", 3),
        ("mamba2", "mlp_hidden", [64]),
    ],
)
def test_keys_of_the_other_arch_are_refused(arch, key, value, tmp_path):
    """A key only the other arch reads may not be set to a non-default value (it would be silently ignored)."""
    other = next(a for a in ARCH_KEYS if a != arch)
    assert key in ARCH_KEYS[other]
    with pytest.raises(ValueError, match=rf"ModelConfig\.{key}: only the {other} arch uses it, but arch='{arch}'"):
        ModelConfig(arch=arch, **{key: value})
    path = tmp_path / "cfg.yaml"
    path.write_text(f"arch: {arch}\n")
    with pytest.raises(ValueError, match=rf"ModelConfig\.{key}"):
        load_model_config(path, [f"{key}={value}"])
    default = getattr(ModelConfig(), key)
    assert getattr(ModelConfig(arch=arch, **{key: default}), key) == default  # the default is accepted


def test_arch_keys_are_config_fields():
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    keys = [k for ks in ARCH_KEYS.values() for k in ks]
    assert set(keys) <= names
    assert len(keys) == len(set(keys))  # no key claimed by two archs


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"headdim": 100}, "headdim"),
        ({"arch": "transformer"}, "arch"),
        ({"unimix": 1.0}, "unimix"),
        ({"dt_min": 0.5}, "dt_min"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_config_validation_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=f"ModelConfig.{key}"):
        ModelConfig(**overrides)


def test_unknown_embedding_field_is_rejected():
    with pytest.raises(ValueError, match=r"embed_dims.*actoin"):
        WorldModel(tiny("mamba2", embed_dims={"actoin": 8}), Layout(EncodingConfig()))


def test_mlp_frames_cannot_exceed_context():
    with pytest.raises(ValueError, match="mlp_frames"):
        build_model(tiny("mlp", mlp_frames=CONTEXT + 1), Layout(EncodingConfig()), CONTEXT)


@pytest.mark.parametrize("arch", ARCHS)
def test_unimix_log_probs_are_valid(arch):
    layout = Layout(EncodingConfig())
    unimix = 0.1
    model = make(arch, layout, unimix=unimix)
    floats, ints, next_ctrl = batch(layout)
    with torch.no_grad():
        pred, _ = model(floats, ints, next_ctrl)
        # Sharpen the logits so that, without mixing, some probabilities would fall far below unimix/vocab.
        pred.categorical = {f: 50 * v for f, v in pred.categorical.items()}
    for f in layout.categorical_targets:
        logp = pred.log_probs(f)
        vocab = layout.int_vocab(f)
        torch.testing.assert_close(logp.logsumexp(-1), torch.zeros_like(logp[..., 0]), rtol=0, atol=1e-12)
        assert logp.exp().min() >= unimix / vocab * (1 - 1e-9)
        plain = Prediction(pred.floats, pred.categorical, unimix=0.0).log_probs(f)
        assert plain.exp().min() < unimix / vocab


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_and_layer_dropout_only_in_training(arch):
    layout = Layout(EncodingConfig())
    layer_dropout = {"layer_dropout": 0.5} if arch == "mamba2" else {}  # stochastic depth: Mamba-2 blocks only
    regular = make(arch, layout, dropout=0.2, seed=3, **layer_dropout)
    plain = make(arch, layout, seed=4)
    plain.load_state_dict(regular.state_dict())
    floats, ints, next_ctrl = batch(layout)
    with torch.no_grad():
        expected = flat(plain(floats, ints, next_ctrl)[0])
        torch.testing.assert_close(flat(regular(floats, ints, next_ctrl)[0]), expected, **ROUNDOFF64)
        regular.train()
        torch.manual_seed(0)
        assert not torch.allclose(flat(regular(floats, ints, next_ctrl)[0]), expected)


def test_drop_path_drops_whole_samples():
    """Stochastic depth zeroes a sample's whole branch or keeps it scaled by 1/(1-p); identity in eval."""
    x = torch.ones(256, 5, 3, dtype=torch.float64)
    torch.manual_seed(0)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    assert (per_sample == per_sample[:, :1]).all()
    assert set(per_sample[:, 0].tolist()) == {0.0, 1 / 0.75}
    assert abs(per_sample[:, 0].eq(0).double().mean().item() - 0.25) < 0.1
    assert torch.equal(drop_path(x, 0.25, training=False), x)


def test_gradients_reach_every_parameter():
    """Every parameter gets a gradient, the missing-field indicators' too (one window lacks every field a replay
    format can lack)."""
    layout = Layout(EncodingConfig())
    for arch in ARCHS:
        model = make(arch, layout).train()
        floats, ints, next_ctrl = batch(layout)
        pred, _ = model(floats, ints, next_ctrl, **old_format_first(layout))
        flat(pred).square().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{arch}: no gradient for {missing}"


@pytest.mark.parametrize("arch", ARCHS)
def test_real_replay_windows(arch, replay_dir):
    """Windows of real encoded games run through forward and step alike, with finite, valid outputs."""
    from melee_wm.encoding.encoder import encode_game
    from melee_wm.replay.parse import parse_replay

    cfg = EncodingConfig()
    layout = Layout(cfg)
    windows = []
    for name in ("peppi-py-0.8.1__Game_20230702T014451.slp", "peppi-py-0.8.6__tests_data_game.slp"):
        game = encode_game(parse_replay(replay_dir / name), cfg, layout)
        for start in (0, 1000, 3000):
            sl = slice(start, start + CONTEXT + 1)
            windows.append((torch.from_numpy(game.floats[sl]), torch.from_numpy(game.ints[sl])))
    floats = torch.stack([w[0] for w in windows]).double()
    ints = torch.stack([w[1] for w in windows])
    assert ints.dtype == torch.int16
    next_ctrl = floats[:, 1:, layout.float_slice("controller")]
    floats, ints = floats[:, :-1], ints[:, :-1]
    assert next_ctrl.abs().sum() > 0  # real stick/button activity reaches the heads
    model = make(arch, layout, unimix=0.01)
    with torch.no_grad():
        pred, _ = model(floats, ints, next_ctrl)
        state = model.init_state(floats.shape[0])
        for t in range(CONTEXT):
            step_pred, state = model.step(floats[:, t], ints[:, t], next_ctrl[:, t], state)
    assert torch.isfinite(flat(pred)).all()
    torch.testing.assert_close(flat(step_pred), flat(pred)[:, -1], rtol=1e-9, atol=1e-9)
    for f in layout.categorical_targets:
        torch.testing.assert_close(
            pred.log_probs(f).logsumexp(-1), torch.zeros((*floats.shape[:2], 2), dtype=floats.dtype)
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_without_state_gives_the_same_predictions(arch):
    """need_state=False (what training uses) skips the final state and changes no prediction or gradient."""
    layout = Layout(EncodingConfig())
    model = make(arch, layout)
    floats, ints, next_ctrl = batch(layout)
    valid = old_format_first(layout)
    with_state, state = model(floats, ints, next_ctrl, **valid)
    without, none = model(floats, ints, next_ctrl, need_state=False, **valid)
    assert state is not None and none is None
    torch.testing.assert_close(flat(without), flat(with_state), **ROUNDOFF64)
    grads = [torch.autograd.grad(flat(p).sum(), list(model.parameters())) for p in (with_state, without)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
