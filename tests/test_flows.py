"""Contract tests of the coefficient flows: every flow and every prior, zuko style."""

from __future__ import annotations

import io

import pytest
import torch
from torch.autograd.functional import jacobian

from flowvq.nn.audio_encoder import AudioWindowEncoder
from flowvq.nn.flows import CoefficientFlowNet, ConditionalFrameFlow

D, M, C = 3, 5, 6  # features, mel bins, mel columns per window

FRAME_FLOWS = {
    "lu": dict(linear="lu"),
    "permutation": dict(linear="permutation"),
    "reverse": dict(linear="reverse"),
    "spline": dict(linear="lu", coupling="spline", spline_bound=3.0),
}
NETS = {
    "student_t_gru": dict(prior="student_t_mixture"),
    "gaussian_mixture_lstm": dict(prior="gaussian_mixture", recurrent="lstm"),
    "gaussian_permutation": dict(prior="gaussian", num_components=1, linear="permutation"),
    "no_history": dict(prior="student_t_mixture", prev_frames=0),
    "recurrent_window_gru": dict(prior="student_t_mixture", recurrent_window=2),
    "recurrent_window_lstm": dict(prior="gaussian_mixture", recurrent="lstm", recurrent_window=3),
    "gaussian_spline": dict(prior="gaussian", num_components=1, coupling="spline"),
}


def _perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its (often zero or identity) initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return module


def _frame_flow(name: str) -> ConditionalFrameFlow:
    torch.manual_seed(0)
    return _perturb(ConditionalFrameFlow(D, 4, layers=3, hidden=16, blocks=1, **FRAME_FLOWS[name])).double()


def _net(name: str, **extra) -> CoefficientFlowNet:
    torch.manual_seed(0)
    options = dict(num_components=4, prev_frames=2, audio_features=8, recurrent_hidden=8, flow_layers=2)
    options.update(coupling_hidden=16, coupling_blocks=1)
    options.update(NETS[name])
    options.update(extra)
    return _perturb(CoefficientFlowNet(D, M, **options)).double()


def _window(b: int = 2, t: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, t, D, generator=g, dtype=torch.float64),
        "mel": torch.randn(b, t, C, M, generator=g, dtype=torch.float64),
        "prev": torch.randn(b, 3, D, generator=g, dtype=torch.float64),
        "prev_mask": torch.tensor([[True, True, True], [False, True, True]][:b]),
    }


# -- the per-frame flow ------------------------------------------------------------------------


@pytest.mark.parametrize("name", FRAME_FLOWS)
def test_frame_flow_is_invertible(name):
    flow = _frame_flow(name).eval()
    x, c = torch.randn(6, D, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    z, logdet = flow(x, c)
    back, inverse_logdet = flow.inverse(z, c)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inverse_logdet, -logdet)


@pytest.mark.parametrize("name", FRAME_FLOWS)
def test_frame_flow_logdet_matches_autograd(name):
    flow = _frame_flow(name).eval()
    x, c = torch.randn(4, D, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    _, logdet = flow(x, c)
    for i in range(len(x)):
        jac = jacobian(lambda row, i=i: flow(row.unsqueeze(0), c[i : i + 1])[0][0], x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac).logabsdet)


# -- the sequence network (all priors) ---------------------------------------------------------


@pytest.mark.parametrize("name", NETS)
def test_streaming_generation_inverts_teacher_forcing(name):
    """Decoding a window's latents frame by frame gives the window back (from a clip start)."""
    net = _net(name).eval()
    w = _window()
    z, _ = net(w["x"], w["mel"])  # no previous frames: the clip starts here, as in sampling
    torch.testing.assert_close(net.sample(w["mel"], z=z), w["x"])


@pytest.mark.parametrize("name", NETS)
def test_sequence_logdet_matches_autograd(name):
    """z_t depends on x_t and earlier frames only, so the window's Jacobian is block
    triangular and its log-determinant is the sum of the per-frame ones."""
    net = _net(name).eval()
    w = _window(b=1, t=3)
    _, logdet = net(w["x"], w["mel"], w["prev"], w["prev_mask"])

    def window_map(flat):
        return net(flat.reshape(1, 3, D), w["mel"], w["prev"], w["prev_mask"])[0].reshape(-1)

    jac = jacobian(window_map, w["x"].reshape(-1))
    torch.testing.assert_close(logdet.sum(), torch.linalg.slogdet(jac).logabsdet)
    # and z_t does not depend on later frames
    blocks = jac.reshape(3, D, 3, D)
    assert blocks[0, :, 1:].abs().max() == 0 and blocks[1, :, 2].abs().max() == 0


@pytest.mark.parametrize("name", NETS)
def test_gradients_reach_every_parameter(name):
    net = _net(name).train()
    w = _window(b=6)
    components = torch.tensor([0, 1, 2, 3, -1, 1])
    levels = torch.tensor([0, 1, 2, -1, 0, 1])
    lp = net.log_prob(w["x"], w["mel"], components, levels, torch.randn(6, 3, D).double(), None)
    lp.mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    zero = [n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
    assert not no_grad and not zero, (no_grad, zero)


@pytest.mark.parametrize("name", NETS)
def test_state_dict_round_trip(name):
    net = _net(name).eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a differently seeded build, then the saved weights
    fresh = CoefficientFlowNet(D, M, **{**_net_options(name)}).double().eval()
    fresh.load_state_dict(torch.load(buffer))
    w = _window()
    args = (w["x"], w["mel"], torch.tensor([1, 2]), torch.tensor([0, 2]), w["prev"], w["prev_mask"])
    torch.testing.assert_close(fresh.log_prob(*args), net.log_prob(*args))
    torch.manual_seed(5)
    a = net.sample(w["mel"], torch.tensor([1, 3]), temperature=0.7)
    torch.manual_seed(5)
    b = fresh.sample(w["mel"], torch.tensor([1, 3]), temperature=0.7)
    torch.testing.assert_close(a, b)


def _net_options(name: str) -> dict:
    options = dict(num_components=4, prev_frames=2, audio_features=8, recurrent_hidden=8, flow_layers=2)
    options.update(coupling_hidden=16, coupling_blocks=1)
    options.update(NETS[name])
    return options


@pytest.mark.parametrize("name", NETS)
def test_log_prob_is_prior_plus_logdet(name):
    net = _net(name).eval()
    w = _window()
    z, logdet = net(w["x"], w["mel"], w["prev"], w["prev_mask"])
    component = torch.tensor([1, 0])
    lp = net.log_prob(w["x"], w["mel"], component, None, w["prev"], w["prev_mask"])
    prior = net.prior.log_prob_given(z.reshape(-1, D), component.repeat_interleave(4)).reshape(2, 4)
    torch.testing.assert_close(lp, prior + logdet)


# -- data dropout ------------------------------------------------------------------------------


def _dependence_on_first_frame(net: CoefficientFlowNet) -> torch.Tensor:
    """How much z_1.. move when x_0 changes, per later frame (train mode, fixed seed)."""
    w = _window(b=1, t=4)
    moved = w["x"].clone()
    moved[:, 0] += 1.0
    torch.manual_seed(0)
    z, _ = net(w["x"], w["mel"])
    torch.manual_seed(0)
    z_moved, _ = net(moved, w["mel"])
    return (z - z_moved).abs().amax(-1)[0, 1:]


def test_data_dropout_hides_the_previous_frames():
    assert (_dependence_on_first_frame(_net("student_t_gru", data_dropout=0.0).train()) > 0).all()
    assert (_dependence_on_first_frame(_net("student_t_gru", data_dropout=1.0).train()) == 0).all()
    # evaluation never drops
    assert (_dependence_on_first_frame(_net("student_t_gru", data_dropout=1.0).eval()) > 0).all()


@pytest.mark.parametrize("mode", ["frame", "sequence"])
def test_data_dropout_rate_and_mode(mode):
    net = _net("student_t_gru", data_dropout=0.3, data_dropout_mode=mode).train()
    history, present = torch.ones(400, 50, 2, D), torch.ones(400, 50, 2)
    torch.manual_seed(0)
    dropped_history, dropped_present, restart = net._drop(history, present)
    hidden = dropped_present[..., 0] == 0  # (B, T)
    assert abs(hidden.float().mean().item() - 0.3) < 0.02
    assert (dropped_history[hidden] == 0).all() and (dropped_history[~hidden] == 1).all()
    per_window = hidden.float().mean(1)
    if mode == "sequence":
        assert ((per_window == 0) | (per_window == 1)).all()
        assert restart is None  # a hidden window's inputs hold no coefficients at all
    else:
        assert ((per_window > 0) & (per_window < 1)).float().mean() > 0.9
        assert torch.equal(restart, hidden)  # these frames' recurrent state starts afresh


# -- misuse ------------------------------------------------------------------------------------


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="at least 2 features"):
        ConditionalFrameFlow(1, 4)
    with pytest.raises(ValueError, match="data_dropout"):
        CoefficientFlowNet(D, M, data_dropout=1.5)
    net = _net("student_t_gru")
    w = _window()
    with pytest.raises(ValueError, match="prev_frames"):
        net(w["x"], w["mel"], w["prev"][:, :1], w["prev_mask"][:, :1])
    with pytest.raises(ValueError, match=r"x must be \[B, T, 3\]"):
        net(w["x"][..., :2], w["mel"])
    with pytest.raises(ValueError, match="bins"):
        AudioWindowEncoder(M, 8)(torch.randn(2, 4, C, M + 1))


def test_audio_encoder_accepts_any_window_length():
    encoder = AudioWindowEncoder(M, 8)
    assert encoder(torch.randn(2, 4, 20, M)).shape == (2, 4, 8)
    assert encoder(torch.randn(2, 4, 3, M)).shape == (2, 4, 8)
    assert encoder(torch.randn(2, 20, M)).shape == (2, 8)


def test_coupling_scale_is_bounded_both_ways():
    """However large the coupling network's output, one coupling scales by at most e^clamp."""
    flow = ConditionalFrameFlow(4, 2, layers=1, hidden=8, linear="reverse", scale_clamp=1.5)
    coupling = flow.transform._transforms[2]
    params = torch.cat([torch.zeros(3, 2), torch.tensor([[1e6, 1e6], [-1e6, -1e6], [0.0, 0.0]])], 1)
    scale, _ = coupling._scale_and_shift(params)
    torch.testing.assert_close(scale[0], torch.full((2,), torch.e**1.5))
    torch.testing.assert_close(scale[1], torch.full((2,), torch.e**-1.5))
    torch.testing.assert_close(scale[2], torch.ones(2))


def test_history_noise_perturbs_only_present_frames_in_training():
    net = _net("student_t_gru", history_noise=0.5).train()
    history, present = torch.zeros(8, 5, 2, D), torch.ones(8, 5, 2)
    present[:, :, 0] = 0
    noisy, _, _ = net._drop(history, present)
    assert (noisy[:, :, 0] == 0).all() and noisy[:, :, 1].std() > 0.3
    clean, _, _ = net.eval()._drop(history, present)
    assert (clean == 0).all()


def test_frame_dropout_hides_the_past_from_the_recurrent_state_too():
    """A frame whose history is dropped sees no earlier frame, not even through the recurrent state
    that ran over the earlier frames' (kept) histories."""
    net = _net("student_t_gru", data_dropout=0.5, data_dropout_mode="frame").train()
    w = _window(b=1, t=6)
    seed = next(
        s
        for s in range(100)
        if (mask := _dropped(net, s))[5] and not mask[:5].all()  # frame 5 dropped, some earlier kept
    )
    torch.manual_seed(seed)
    z, _ = net(w["x"], w["mel"])
    moved = w["x"].clone()
    moved[:, :5] += 3.0  # every frame before the last
    torch.manual_seed(seed)
    z_moved, _ = net(moved, w["mel"])
    torch.testing.assert_close(z_moved[:, 5], z[:, 5])


def _dropped(net: CoefficientFlowNet, seed: int) -> torch.Tensor:
    """Which of 6 frames the seeded frame dropout hides ``[6]`` (the draw a forward pass makes)."""
    torch.manual_seed(seed)
    _, _, restart = net._drop(torch.zeros(1, 6, 2, D), torch.ones(1, 6, 2))
    return restart[0]


def test_recurrent_window_forgets_frames_beyond_it():
    """With a window of L frames (K previous frames each), frames older than L+K do not reach z_t."""
    net = _net("recurrent_window_gru").eval()  # L=2, K=2: frame 5 sees frames 2..5
    w = _window(b=1, t=6)
    z, _ = net(w["x"], w["mel"])
    moved, mel = w["x"].clone(), w["mel"].clone()
    moved[:, :2] += 3.0
    mel[:, :4] += 3.0  # audio of frames before the window too
    z_moved, _ = net(moved, mel)
    torch.testing.assert_close(z_moved[:, 5], z[:, 5])
    moved[:, 2] += 3.0  # the oldest frame inside it does
    assert not torch.allclose(net(moved, mel)[0][:, 5], z[:, 5])


def test_own_history_starts_from_the_truth_and_then_runs_free():
    """Scheduled sampling: the history is a free-running sample near the window (its own latents
    plus noise, decoded from generated history); without the noise it is the window itself."""
    net = _net("student_t_gru", self_history=1.0).train()
    w = _window(b=2, t=5)
    own = net._own_history(w["x"], w["mel"], w["prev"], w["prev_mask"])
    assert not torch.allclose(own, w["x"])
    net.self_history_spread = 0.0  # an invertible flow decodes its own latents back exactly
    torch.testing.assert_close(net._own_history(w["x"], w["mel"], w["prev"], w["prev_mask"]), w["x"])
    net.self_history_spread = 0.5
    lp = net.log_prob(w["x"], w["mel"], torch.tensor([0, 1]), None, w["prev"], w["prev_mask"])
    teacher = (
        _net("student_t_gru").train().log_prob(w["x"], w["mel"], torch.tensor([0, 1]), None, w["prev"], w["prev_mask"])
    )
    assert torch.allclose(lp[:, 0], teacher[:, 0]) and not torch.allclose(lp[:, 1:], teacher[:, 1:])
