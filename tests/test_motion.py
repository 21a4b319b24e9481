"""Motion inputs (fp32 moves and relative positions) and the invariants decoding holds whatever a model outputs."""

from __future__ import annotations

import pytest
import torch

from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.layout import Layout
from melee_wm.frames.frame import positions_with_previous, previous_frame, robust_displacement, select_positions
from melee_wm.frames.reconstruct import keep_standing
from melee_wm.frames.targets import RESIDUAL, TargetCodec, target_statistics
from melee_wm.game.stages import GROUND_MARGIN, STAGES
from melee_wm.model.config import ModelConfig
from melee_wm.model.motion import MOVE_SCALE, MotionFeatures
from melee_wm.model.world_model import WorldModel

LAYOUT = Layout(EncodingConfig())
SCALE = LAYOUT.cfg.position_scale


def two_frames(x0: float, x1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 2, F) floats and ints: player 0 moving from x0 to x1 game units, player 1 at (30, 10)."""
    floats = torch.zeros(1, 2, LAYOUT.num_floats)
    floats[0, :, LAYOUT.float_index("p0.x")] = torch.tensor([x0, x1]) * SCALE
    floats[0, :, LAYOUT.float_index("p1.x")] = 30 * SCALE
    floats[0, :, LAYOUT.float_index("p1.y")] = 10 * SCALE
    return floats, torch.zeros(1, 2, LAYOUT.num_ints, dtype=torch.int16)


def test_motion_features_by_hand_and_under_bf16_autocast():
    motion = MotionFeatures(LAYOUT)
    floats, ints = two_frames(200.0, 200.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = motion(floats, ints)
        # The same positions stored in bf16 cannot tell the two frames apart (steps of ~1 game unit at 200).
        assert floats[..., LAYOUT.float_index("p0.x")].bfloat16().unique().numel() == 1
    assert out.dtype == torch.float32
    move, known = out[0, :, MotionFeatures.part("move")], out[0, :, MotionFeatures.part("known")]
    assert abs(move[1, 0].item() - 0.1 * MOVE_SCALE) < 1e-4 and known[1, 0].item() == 1.0  # player 0's x move
    assert known[0, 0].item() == 0.0  # no frame before the first: the move is unknown
    relative = out[0, 1, MotionFeatures.part("relative")]  # player 0 sees player 1 at (-x, +y); player 1 the reverse
    torch.testing.assert_close(relative, torch.tensor([-170.1, 10.0, 170.1, -10.0]) * SCALE, atol=1e-6, rtol=0)
    jumped = motion(*two_frames(0.0, 150.0))  # farther than any character moves: a jump, reported as 0
    assert jumped[0, 1, MotionFeatures.part("move")][0].item() == 0.0
    assert jumped[0, 1, MotionFeatures.part("known")][0].item() == 0.0


def test_stage_distances_on_battlefield():
    """Ground below, ledge and blast-zone distances on Battlefield (id 31; DESIGN.md's blast zones)."""
    floats, ints = two_frames(0.0, 0.0)
    floats[0, :, LAYOUT.float_index("p0.y")] = 30.0 * SCALE  # at x = 0, between the side platforms
    floats[0, :, LAYOUT.float_index("p1.x")] = 40.0 * SCALE  # over the right platform (20..57.6 at y 27.2)
    floats[0, :, LAYOUT.float_index("p1.y")] = 27.2 * SCALE  # standing on it
    ints[0, :, LAYOUT.int_index("stage")] = 31
    stage = MotionFeatures(LAYOUT)(floats, ints)[0, 1, MotionFeatures.part("stage")].reshape(2, 6) / SCALE
    ground, ledge, left, right, top, bottom = stage[0].tolist()
    assert ground == pytest.approx(30.0, abs=1e-3)  # the main stage; the top platform (y 54.4) is above
    assert ledge == pytest.approx(-68.4, abs=1e-3) and left == pytest.approx(224.0) and right == pytest.approx(224.0)
    assert top == pytest.approx(170.0) and bottom == pytest.approx(138.8)
    assert stage[1, 0].item() == pytest.approx(0.0, abs=1e-3)  # on the platform
    unknown = ints.clone()
    unknown[0, :, LAYOUT.int_index("stage")] = 5  # no geometry for this id
    out = MotionFeatures(LAYOUT)(floats, unknown)[0, 1]
    assert out[MotionFeatures.part("stage")].abs().sum() == 0 and out[MotionFeatures.part("stage_known")] == 0


def test_forward_continues_from_a_carried_state():
    """A window split in two gives the same predictions as one forward: the state carries the previous frame."""
    torch.manual_seed(0)
    model = WorldModel(ModelConfig(d_model=32, n_layers=1, d_state=16, headdim=16, embed_dims={}), LAYOUT).double()
    floats = torch.randn(2, 10, LAYOUT.num_floats, dtype=torch.float64) * 0.1
    ints = torch.zeros(2, 10, LAYOUT.num_ints, dtype=torch.int16)
    ctrl = floats[..., LAYOUT.float_slice("controller")]
    whole, _ = model(floats, ints, ctrl)
    _, state = model(floats[:, :4], ints[:, :4], ctrl[:, :4])
    second, _ = model(floats[:, 4:], ints[:, 4:], ctrl[:, 4:], state)
    torch.testing.assert_close(second.floats["continuous"], whole.floats["continuous"][:, 4:], rtol=1e-9, atol=1e-9)


def test_decoding_holds_the_invariants_of_an_untrained_model(sample_store):
    """Random heads (not zero-initialised) still never predict a negative percent or a stock gained."""
    data = DataConfig(context_len=30)
    windows = MeleeDataset.from_store(sample_store, "all", data)
    codec = TargetCodec(LAYOUT, target_statistics(windows, RESIDUAL), RESIDUAL)
    torch.manual_seed(0)
    model = WorldModel(ModelConfig(d_model=32, n_layers=1, d_state=16, headdim=16), LAYOUT)
    for p in model.heads.parameters():
        torch.nn.init.normal_(p, std=2.0)
    batch = windows.get_batch(torch.arange(0, len(windows), 97))
    with torch.no_grad():
        pred, _ = model(batch.floats, batch.ints, batch.next_ctrl)
    positions = positions_with_previous(batch)
    targets = select_positions(batch.targets, positions)
    k, p = batch.floats.shape[1], batch.num_positions
    cut = pred.at(slice(k - p + positions.start, k - p + positions.stop))
    previous = previous_frame(batch, LAYOUT, positions)
    prior = robust_displacement(
        targets.current_floats["continuous"], previous, targets.current_categorical["action"], LAYOUT
    )
    frame = codec.decode(cut, targets, prior)
    start = LAYOUT.float_slice("continuous").start
    percent = frame.floats["continuous"][..., [LAYOUT.player_float_index(q, "percent") - start for q in (0, 1)]]
    dyn = LAYOUT.float_slice("dynamics").start
    stocks = [LAYOUT.player_float_index(q, "stocks") - dyn for q in (0, 1)]
    raw = codec.destandardize("dynamics", cut.floats["dynamics"].float())[..., stocks]
    assert (raw > targets.current_floats["dynamics"][..., stocks]).any()  # the heads do predict gains ...
    assert (percent >= 0).all()  # ... but decoding never lets one through, nor a negative percent
    assert (frame.floats["dynamics"][..., stocks] <= targets.current_floats["dynamics"][..., stocks]).all()


def test_a_grounded_character_stands_on_a_level_main_stage():
    floats_t = torch.zeros(4, LAYOUT.num_floats)
    ints_t = torch.zeros(4, LAYOUT.num_ints, dtype=torch.int16)
    # Final Destination (level, ledge 85.6) three times, then Yoshi's Story (slopes).
    ints_t[:, LAYOUT.int_index("stage")] = torch.tensor([32, 32, 32, 8])
    nxt = floats_t.clone()
    nxt[:, LAYOUT.float_index("p0.on_ground")] = 1.0
    nxt[:, LAYOUT.float_index("p0.x")] = torch.tensor([10.0, 100.0, 10.0, 10.0]) * SCALE
    nxt[:, LAYOUT.float_index("p0.y")] = torch.tensor([-1.5, -1.5, -20.0, -1.5]) * SCALE  # a model's errors
    keep_standing(LAYOUT, floats_t, ints_t, nxt)
    y = (nxt[:, LAYOUT.float_index("p0.y")] / SCALE).tolist()
    assert y[0] == 0.0  # on the stage: stands on its top
    assert y[1:] == pytest.approx([-1.5, -20.0, -1.5])  # past the ledge, far below it, or on a sloped stage
    assert nxt[:, LAYOUT.float_index("p1.y")].eq(0).all()  # player 1 is airborne: untouched (it was 0)
    # 20 units below Final Destination's top nothing holds a character: the on-ground flag goes; at -1.5 past
    # the ledge (within SINK_DEPTH) and on Yoshi's Story's slopes it stays.
    assert nxt[:, LAYOUT.float_index("p0.on_ground")].tolist() == [1.0, 1.0, 0.0, 1.0]


def test_a_grounded_character_high_above_every_surface_is_airborne():
    floats_t = torch.zeros(3, LAYOUT.num_floats)
    ints_t = torch.zeros(3, LAYOUT.num_ints, dtype=torch.int16)
    ints_t[:, LAYOUT.int_index("stage")] = torch.tensor([31, 31, 8])  # Battlefield twice, Yoshi's Story
    nxt = floats_t.clone()
    nxt[:, LAYOUT.float_index("p1.on_ground")] = 1.0
    top = STAGES[31].top_ground
    heights = [top + GROUND_MARGIN + 1.0, top, STAGES[8].top_ground + GROUND_MARGIN + 5.0]
    nxt[:, LAYOUT.float_index("p1.y")] = torch.tensor(heights) * SCALE
    keep_standing(LAYOUT, floats_t, ints_t, nxt)
    assert nxt[:, LAYOUT.float_index("p1.on_ground")].tolist() == [0.0, 1.0, 0.0]  # the top platform holds it
    assert (nxt[:, LAYOUT.float_index("p1.y")] / SCALE).tolist() == pytest.approx(heights)  # heights untouched
