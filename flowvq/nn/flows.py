"""The conditional coefficient flow shared by ExpFlow and PoseFlow (MoGlow-style).

Each video frame's coefficient vector ``x_t`` (D dims: expression, or pose [+ blink]) is
mapped to a latent ``z_t`` by a conditional Glow-like flow (ActNorm -> invertible linear ->
affine coupling, repeated). The coupling networks see a per-frame context built from

- the audio window around the frame (:class:`~flowvq.nn.audio_encoder.AudioWindowEncoder`),
- the previous K frames ``x_{t-K..t-1}`` and a mask of which of them exist,
- the state of a recurrent network (GRU or LSTM) run over the audio codes and those previous
  frames, which carries longer memory.

Since the context of frame t never contains ``x_t``, the teacher-forced log-likelihood of a
window is computed for all frames at once (one recurrent pass, one batched flow call), while
sampling runs frame by frame (:meth:`CoefficientFlowNet.step`), each step inverting the flow
for the new frame and appending it to the history: coupling transforms make each step a few
small matrix products, never a per-dimension loop.

**Data dropout** (FlowVQTalker; MoGlow's autoregressive dropout): in training, the previous
frames are hidden with probability ``data_dropout``: zeroed, with their "present" mask
cleared, exactly as at the start of a clip. ``data_dropout_mode="frame"`` (default) draws
this independently for every frame's history; ``"sequence"`` hides the history of whole
windows. The recurrent network receives the same (dropped) history; and where one frame's
history is hidden (frame mode), that frame's recurrent state is the one a clip start gives
(the network run on that frame alone), since the running state already holds the earlier
frames and would pass them on.

**Own history** (``self_history=p``, beyond the paper; scheduled sampling): in training, a
fraction p of the windows condition each frame on the network's own free-running sample
near the ground truth instead of the ground truth's history: the window's teacher-forced
latents, moved by Gaussian noise of std ``self_history_spread``, decoded frame by frame from
generated history. Such a sample drifts from the truth the way sampling errors accumulate,
and the likelihood of the true next frame teaches the flow to steer back (exposure bias:
trained on true history only, it continues whatever history it is given).

**Recurrent window** (``recurrent_window=L``, beyond the paper): each frame's recurrent state
is computed over at most L frames (its own and the L-1 before it), from zero, in training and
in sampling alike. Without it the state runs over the training window (32 frames) in training
but over the whole clip, or minutes of audio, in sampling: states never trained on.

Emotion enters only through the prior's component (and intensity through its location):
the flow itself is shared by every emotion, as in the paper.

References:
    FlowVQTalker, https://arxiv.org/abs/2403.06375.
    MoGlow, Henter et al. 2020, https://arxiv.org/abs/1905.06598.
    Glow, Kingma & Dhariwal 2018, https://arxiv.org/abs/1807.03039.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    ActNorm,
    AffineCouplingTransform,
    CompositeTransform,
    LULinear,
    PiecewiseRationalQuadraticCouplingTransform,
    RandomPermutation,
    ReversePermutation,
)
from torch import Tensor, nn

from flowvq.nn.audio_encoder import AudioWindowEncoder
from flowvq.nn.priors import GaussianMixture, LatentPrior, StudentTMixture, make_prior

__all__ = ["CoefficientFlowNet", "ConditionalFrameFlow", "FlowState", "SoftClampAffineCoupling"]


class SoftClampAffineCoupling(AffineCouplingTransform):
    """nflows' affine coupling with a soft-clamped log-scale, ``clamp * tanh(raw / clamp)``.

    nflows' own parametrisation (``sigmoid(raw + 2)``) lets a scale reach 1e-3, so the
    inverse, which generation runs, can amplify by 1000 per layer; fed back as the next
    frame's history, that runs away. Here each coupling changes scale by at most
    ``exp(clamp)`` either way, and a zero output is the identity.
    """

    def __init__(self, mask: Tensor, transform_net_create_fn, clamp: float = 2.0) -> None:
        super().__init__(mask, transform_net_create_fn)
        self.clamp = clamp

    def _scale_and_shift(self, transform_params: Tensor) -> tuple[Tensor, Tensor]:
        raw = transform_params[:, self.num_transform_features :, ...]
        shift = transform_params[:, : self.num_transform_features, ...]
        return torch.exp(self.clamp * torch.tanh(raw / self.clamp)), shift


class ConditionalFrameFlow(nn.Module):
    """A conditional Glow over one frame: ``x [N, D] <-> z [N, D]`` given ``context [N, H]``.

    Arguments:
        features: D (at least 2, so coupling has two halves).
        context_features: H.
        layers: number of (ActNorm, linear, coupling) steps.
        hidden: width of the coupling networks (nflows ``ResidualNet``).
        blocks: residual blocks per coupling network.
        linear: ``"lu"`` (invertible 1x1 as an LU-factorised matrix), ``"permutation"``
            (a fixed random permutation) or ``"reverse"``.
        seed: seeds the random permutations so that two builds of the same config agree.
        scale_clamp: bound of each coupling's log-scale (see :class:`SoftClampAffineCoupling`).
        coupling: ``"affine"`` (Glow's; given the other half, each dim is an affine map of
            its latent, so a frame's conditional is unimodal) or ``"spline"`` (monotone
            rational-quadratic splines, Durkan et al. 2019, on ``[-spline_bound,
            spline_bound]`` with identity tails: multimodal conditionals, such as "the eyes
            stay open, or a blink starts", and a bounded inverse).
        spline_bins: bins of each spline.

    Example:
        >>> flow = ConditionalFrameFlow(4, 3, layers=2, hidden=8).eval()
        >>> x, c = torch.randn(5, 4), torch.randn(5, 3)
        >>> z, logdet = flow(x, c)
        >>> torch.allclose(flow.inverse(z, c)[0], x, atol=1e-5)
        True
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        layers: int = 4,
        hidden: int = 128,
        blocks: int = 2,
        linear: Literal["lu", "permutation", "reverse"] = "lu",
        seed: int = 0,
        scale_clamp: float = 2.0,
        coupling: Literal["affine", "spline"] = "affine",
        spline_bins: int = 8,
        spline_bound: float = 5.0,
    ) -> None:
        super().__init__()
        if coupling not in ("affine", "spline"):
            raise ValueError(f"coupling must be 'affine' or 'spline', got {coupling!r}")
        if features < 2:
            raise ValueError(f"a coupling flow needs at least 2 features, got {features}")
        if linear not in ("lu", "permutation", "reverse"):
            raise ValueError(f"linear must be 'lu', 'permutation' or 'reverse', got {linear!r}")
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        steps = []
        for index in range(layers):
            norm = ActNorm(features)
            # The flows see standardised coefficients, so ActNorm starts at identity instead
            # of its data-dependent initialisation, which would differ between DDP ranks.
            norm.initialized.fill_(True)
            steps.append(norm)
            if linear == "lu":
                steps.append(LULinear(features, identity_init=True))
            elif linear == "permutation":
                steps.append(RandomPermutation(features))
            else:
                steps.append(ReversePermutation(features))
            mask = (torch.arange(features) + index) % 2
            if coupling == "affine":
                steps.append(
                    SoftClampAffineCoupling(
                        mask,
                        lambda inputs, outputs: _coupling_net(inputs, outputs, hidden, context_features, blocks),
                        clamp=scale_clamp,
                    )
                )
            else:
                steps.append(
                    PiecewiseRationalQuadraticCouplingTransform(
                        mask,
                        lambda inputs, outputs: _spline_net(
                            inputs, outputs, hidden, context_features, blocks, spline_bins
                        ),
                        num_bins=spline_bins,
                        tails="linear",
                        tail_bound=spline_bound,
                    )
                )
        torch.random.set_rng_state(generator_state)
        self.transform = CompositeTransform(steps)
        self.features = features

    def forward(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent: ``(z [N, D], log|det dz/dx| [N])``."""
        return self.transform(x, context=context)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to data: ``(x [N, D], log|det dx/dz| [N])``."""
        return self.transform.inverse(z, context=context)


def _coupling_net(inputs: int, outputs: int, hidden: int, context: int, blocks: int) -> nn.Module:
    net = ResidualNet(inputs, outputs, hidden, context_features=context, num_blocks=blocks)
    # Zero last layer: every coupling starts as the identity, so a new flow is linear (ActNorm
    # and the invertible linears) and training starts stable.
    nn.init.zeros_(net.final_layer.weight)
    nn.init.zeros_(net.final_layer.bias)
    return net


def _spline_net(inputs: int, outputs: int, hidden: int, context: int, blocks: int, bins: int) -> nn.Module:
    """A coupling net whose splines start as the identity: equal bins (zero widths and heights)
    and unit slopes at the inner knots (the softplus inverse of 1 - nflows' minimum slope)."""
    net = _coupling_net(inputs, outputs, hidden, context, blocks)
    slope = math.log(math.expm1(1.0 - 1e-3))
    with torch.no_grad():
        net.final_layer.bias.view(-1, 3 * bins - 1)[:, 2 * bins :] = slope
    return net


@dataclass
class FlowState:
    """What streaming generation carries from frame to frame.

    Attributes:
        history: the last K generated frames ``[B, K, D]`` (oldest first).
        present: which of them exist ``[B, K]`` (float 0/1; 0 before the clip starts).
        recurrent: the GRU hidden state, or the LSTM's ``(h, c)``.
        inputs: with a recurrent window, the recurrent network's last inputs ``[B, <=L, F]``.
    """

    history: Tensor
    present: Tensor
    recurrent: Tensor | tuple[Tensor, Tensor] | None
    inputs: Tensor | None = None


class CoefficientFlowNet(nn.Module):
    """ExpFlow / PoseFlow network: audio encoder, recurrent context, per-frame flow, prior.

    Arguments:
        features: D, size of each frame's coefficient vector.
        mel_bins: M of the mel windows.
        num_components: prior components (one per emotion; 1 for a Gaussian prior).
        prior: ``"student_t_mixture"`` (ExpFlow), ``"gaussian_mixture"`` (ablation) or
            ``"gaussian"`` (PoseFlow).
        anchor: the neutral component intensity interpolates from (None: no intensity).
        prev_frames: K, previous frames in the context.
        audio_features, audio_hidden: size of the per-frame audio code, and of the audio
            encoder's channels.
        recurrent: ``"gru"`` or ``"lstm"``; ``recurrent_hidden`` its size.
        recurrent_window: L, frames each recurrent state is computed over (None: all frames
            since the window or clip start).
        self_history: fraction of training windows whose history is the network's own
            free-running sample near the ground truth (0: always the ground truth's);
            ``self_history_spread`` the std of the noise on the latents it decodes.
        flow_layers, coupling_hidden, coupling_blocks, linear, coupling: the frame flow (see
            :class:`ConditionalFrameFlow`).
        data_dropout: probability of hiding the previous frames in training.
        data_dropout_mode: ``"frame"`` (each frame's history on its own) or ``"sequence"``.
        intensity_levels: number of intensity levels (MEAD: 3); each gets a learned factor
            along the neutral -> emotion line, increasing with the level, the top one fixed
            to 1 (so the component location is the strongest level's).
        history_noise: std of Gaussian noise added to the previous frames in training (on
            top of data dropout), so the flow does not trust its own, imperfect, generated
            history as exactly as the ground truth's.
        output_clip: generated frames are clipped to +-output_clip (normalised units, i.e.
            train-set stds) before they are returned and fed back as history: the data
            never go there, and a rare heavy-tailed draw must not derail the frames after it.
            None: no clipping.
        prior_init_spread: std of the random initial component locations: distinct
            components from the start let the flow separate emotions quickly (all at the
            origin, the components stay alike for many steps).
    """

    def __init__(
        self,
        features: int,
        mel_bins: int,
        num_components: int = 8,
        prior: str = "student_t_mixture",
        anchor: int | None = 0,
        prev_frames: int = 4,
        audio_features: int = 64,
        audio_hidden: int = 64,
        recurrent: Literal["gru", "lstm"] = "gru",
        recurrent_hidden: int = 128,
        flow_layers: int = 4,
        coupling_hidden: int = 128,
        coupling_blocks: int = 2,
        linear: Literal["lu", "permutation", "reverse"] = "lu",
        data_dropout: float = 0.0,
        data_dropout_mode: Literal["frame", "sequence"] = "frame",
        intensity_levels: int = 3,
        prior_init_spread: float = 1.0,
        output_clip: float | None = 10.0,
        history_noise: float = 0.0,
        recurrent_window: int | None = None,
        self_history: float = 0.0,
        self_history_spread: float = 0.5,
        coupling: Literal["affine", "spline"] = "affine",
    ) -> None:
        super().__init__()
        if recurrent_window is not None and recurrent_window < 1:
            raise ValueError(f"recurrent_window must be >= 1 frames or None, got {recurrent_window}")
        if not 0.0 <= self_history <= 1.0:
            raise ValueError(f"self_history must be a probability in [0, 1], got {self_history}")
        if not 0.0 <= data_dropout <= 1.0:
            raise ValueError(f"data_dropout must be in [0, 1], got {data_dropout}")
        if data_dropout_mode not in ("frame", "sequence"):
            raise ValueError(f"data_dropout_mode must be 'frame' or 'sequence', got {data_dropout_mode!r}")
        if recurrent not in ("gru", "lstm"):
            raise ValueError(f"recurrent must be 'gru' or 'lstm', got {recurrent!r}")
        if prev_frames < 0:
            raise ValueError(f"prev_frames must be >= 0, got {prev_frames}")
        self.features = features
        self.prev_frames = prev_frames
        self.data_dropout = data_dropout
        self.data_dropout_mode = data_dropout_mode
        self.output_clip = output_clip
        self.history_noise = history_noise
        self.recurrent_kind = recurrent
        self.recurrent_window = recurrent_window
        self.self_history = self_history
        self.self_history_spread = self_history_spread
        self.audio = AudioWindowEncoder(mel_bins, audio_features, hidden=audio_hidden)
        history = prev_frames * (features + 1)  # frames and their present flags
        rnn = nn.GRU if recurrent == "gru" else nn.LSTM
        self.recurrent = rnn(audio_features + history, recurrent_hidden, batch_first=True)
        self.context_features = recurrent_hidden + audio_features + history
        self.flow = ConditionalFrameFlow(
            features, self.context_features, flow_layers, coupling_hidden, coupling_blocks, linear, coupling=coupling
        )
        self.prior: LatentPrior = make_prior(
            prior, features, num_components, anchor=anchor, init_spread=prior_init_spread
        )
        self.intensity_levels = intensity_levels
        # Intensity moves a mixture component along the anchor -> component line; a prior
        # without an anchor (PoseFlow's Gaussian) has no such line, so no factors are built:
        # a parameter no loss reaches would stop a DDP run.
        self.level_logits: nn.Parameter | None = None
        if anchor is not None and prior != "gaussian":
            self.level_logits = nn.Parameter(torch.zeros(max(intensity_levels, 1)))

    # -- conditioning ----------------------------------------------------------------------

    def intensity_factor(self, level: Tensor) -> Tensor:
        """Factor along the neutral -> emotion line per intensity level ``[B]``; -1 gives 1."""
        if self.level_logits is None:  # no intensity in this prior
            return torch.ones(level.shape, device=level.device)
        steps = torch.nn.functional.softplus(self.level_logits)
        factors = torch.cumsum(steps, 0) / steps.sum()  # increasing, the top one exactly 1
        known = level >= 0
        return torch.where(known, factors[level.clamp(0, len(factors) - 1)], torch.ones_like(factors[0]))

    def _history(self, x: Tensor, prev: Tensor | None, prev_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Teacher-forced history of every frame: ``([B, T, K, D], present [B, T, K])``."""
        b, t, d = x.shape
        k = self.prev_frames
        if prev is None:
            prev = x.new_zeros(b, k, d)
            prev_mask = x.new_zeros(b, k)
        if prev.shape[1] < k:
            raise ValueError(
                f"the batch has {prev.shape[1]} previous frames, the flow conditions on {k}: "
                f"set the DataModule's prev_frames >= {k}"
            )
        prev = prev[:, prev.shape[1] - k :]
        present = x.new_ones(b, k) if prev_mask is None else prev_mask[:, prev_mask.shape[1] - k :].to(x.dtype)
        frames = torch.cat([prev, x], 1)  # (B, K + T, D)
        flags = torch.cat([present, x.new_ones(b, t)], 1)  # (B, K + T)
        history = frames.unfold(1, k, 1)[:, :t]  # (B, T, D, K)
        return rearrange(history, "b t d k -> b t k d"), flags.unfold(1, k, 1)[:, :t]

    def _drop(self, history: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Data dropout (training only): hide whole histories as if the clip started there
        (after adding ``history_noise`` to the frames that are there).

        Returns the history, its present flags and, in frame mode, ``restart [B, T]``: the
        frames whose history was hidden, whose recurrent state must then start afresh."""
        if not self.training:
            return history, present, None
        if self.history_noise > 0:
            history = history + self.history_noise * torch.randn_like(history) * present.unsqueeze(-1)
        if self.data_dropout <= 0:
            return history, present, None
        b, t = present.shape[:2]
        shape = (b, t, 1) if self.data_dropout_mode == "frame" else (b, 1, 1)
        keep = (torch.rand(shape, device=present.device) >= self.data_dropout).to(present.dtype)
        restart = (keep[..., 0] == 0).expand(b, t) if self.data_dropout_mode == "frame" else None
        return history * keep.unsqueeze(-1), present * keep, restart

    def _contexts(
        self,
        audio: Tensor,
        history: Tensor,
        present: Tensor,
        recurrent: Tensor | tuple | None = None,
        restart: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | tuple]:
        """Per-frame flow contexts ``[B, T, H]`` of a teacher-forced window, and the recurrent
        state after its last frame. ``restart [B, T]`` marks frames whose state starts afresh."""
        past = torch.cat([rearrange(history, "b t k d -> b t (k d)"), present], -1)  # (B, T, K(D+1))
        inputs = torch.cat([audio, past], -1)  # (B, T, F)
        hidden, recurrent = self.recurrent(inputs, recurrent)  # (B, T, R)
        window, t = self.recurrent_window, inputs.shape[1]
        if window is not None and t > window:
            # frame i >= L-1: the state after running over frames i-L+1..i from zero
            b = inputs.shape[0]
            runs = rearrange(inputs.unfold(1, window, 1), "b n f l -> (b n) l f")  # (B(T-L+1), L, F)
            last, _ = self.recurrent(runs)
            sliding = rearrange(last[:, -1], "(b n) r -> b n r", b=b)  # (B, T-L+1, R)
            hidden = torch.cat([hidden[:, : window - 1], sliding], 1)
        if restart is not None and bool(restart.any()):
            fresh, _ = self.recurrent(rearrange(inputs, "b t f -> (b t) 1 f"))  # each frame alone
            fresh = rearrange(fresh[:, 0], "(b t) r -> b t r", b=inputs.shape[0])
            hidden = torch.where(restart.unsqueeze(-1), fresh, hidden)
        return torch.cat([hidden, audio, past], -1), recurrent

    # -- likelihood and encoding -----------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        mel: Tensor,
        prev: Tensor | None = None,
        prev_mask: Tensor | None = None,
        history: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced latents and log-determinants of a window.

        Einstein notation: ``b`` batch, ``t`` frames, ``k`` previous frames, ``d`` features.

        Arguments:
            x: ``[b, t, d]`` coefficients.
            mel: ``[b, t, c, m]`` mel windows.
            prev, prev_mask: ``[b, k', d]`` frames before the window and which exist
                (``k' >= K``); None: the window starts the clip.
            history: ``[b, t, d]`` the frames whose past conditions each frame (default: ``x``,
                teacher forcing).

        Returns:
            ``z [b, t, d]`` and ``log|det dz/dx| [b, t]``.
        """
        if x.dim() != 3 or x.shape[-1] != self.features:
            raise ValueError(f"x must be [B, T, {self.features}], got {tuple(x.shape)}")
        b, t, _ = x.shape
        source = x if history is None else history
        history, present, restart = self._drop(*self._history(source, prev, prev_mask))
        context, _ = self._contexts(self.audio(mel), history, present, restart=restart)
        z, logdet = self.flow(rearrange(x, "b t d -> (b t) d"), rearrange(context, "b t h -> (b t) h"))
        return rearrange(z, "(b t) d -> b t d", b=b), rearrange(logdet, "(b t) -> b t", b=b)

    def log_prob(
        self,
        x: Tensor,
        mel: Tensor,
        component: Tensor | None = None,
        intensity: Tensor | None = None,
        prev: Tensor | None = None,
        prev_mask: Tensor | None = None,
    ) -> Tensor:
        """Per-frame ``log p(x_t | context_t) [B, T]`` (nats).

        Arguments:
            component: ``[B]`` prior component (emotion; -1 or None: the whole mixture).
            intensity: ``[B]`` intensity level (-1 or None: factor 1).
        """
        history = None
        if self.training and self.self_history > 0:
            history = self._own_history(x, mel, prev, prev_mask)
        z, logdet = self(x, mel, prev, prev_mask, history)
        b, t, _ = z.shape
        comp = None if component is None else component.repeat_interleave(t)
        factor = None if intensity is None else self.intensity_factor(intensity).repeat_interleave(t)
        prior = self.prior.log_prob_given(rearrange(z, "b t d -> (b t) d"), comp, factor)
        return rearrange(prior, "(b t) -> b t", b=b) + logdet

    @torch.no_grad()
    def _own_history(self, x: Tensor, mel: Tensor, prev: Tensor | None, prev_mask: Tensor | None) -> Tensor:
        """``[B, T, D]``: for a fraction ``self_history`` of the rows, the free-running decoding
        of their teacher-forced latents plus noise (each frame from generated history); the
        others ``x``."""
        rows = torch.rand(x.shape[0], device=x.device) < self.self_history
        if not bool(rows.any()):
            return x
        z, _ = self(
            x[rows], mel[rows], None if prev is None else prev[rows], None if prev_mask is None else prev_mask[rows]
        )
        own = self.sample(
            mel[rows],
            z=z + self.self_history_spread * torch.randn_like(z),
            prev=None if prev is None else prev[rows],
            prev_mask=None if prev_mask is None else prev_mask[rows],
        )
        history = x.clone()
        history[rows] = own.to(x.dtype)
        return history

    # -- streaming generation --------------------------------------------------------------

    def init_state(
        self,
        batch: int,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        prev: Tensor | None = None,
        prev_mask: Tensor | None = None,
    ) -> FlowState:
        """The state at the start of a clip (no previous frames), or after ``prev [B, K', D]``.

        The recurrent state always starts at zero, as it does for a training window.
        """
        k = self.prev_frames
        if prev is not None:
            if prev.shape[1] < k:
                raise ValueError(f"prev has {prev.shape[1]} frames, the flow conditions on {k}")
            prev = prev[:, prev.shape[1] - k :].to(device, dtype)
            present = torch.ones(batch, k, device=device, dtype=dtype)
            if prev_mask is not None:
                present = prev_mask[:, prev_mask.shape[1] - k :].to(device, dtype)
            return FlowState(prev * present.unsqueeze(-1), present, None)
        return FlowState(
            torch.zeros(batch, k, self.features, device=device, dtype=dtype),
            torch.zeros(batch, k, device=device, dtype=dtype),
            None,
        )

    def step(self, z: Tensor, audio: Tensor, state: FlowState) -> tuple[Tensor, FlowState]:
        """Generate one frame: ``x_t [B, D]`` from ``z_t [B, D]`` and the audio code ``[B, A]``.

        ``audio`` is :attr:`audio` applied to the frame's mel window (encode a whole clip at
        once with ``self.audio(mel)`` and pass ``codes[:, t]``).
        """
        inputs = None
        if self.recurrent_window is None:
            context, recurrent = self._contexts(
                audio.unsqueeze(1), state.history.unsqueeze(1), state.present.unsqueeze(1), state.recurrent
            )
        else:
            # the state over the last L frames, from zero, as each training frame's
            past = torch.cat([rearrange(state.history, "b k d -> b (k d)"), state.present], -1)
            frame = torch.cat([audio, past], -1).unsqueeze(1)  # (B, 1, F)
            inputs = frame if state.inputs is None else torch.cat([state.inputs, frame], 1)[:, -self.recurrent_window :]
            hidden, recurrent = self.recurrent(inputs)
            context = torch.cat([hidden[:, -1:], audio.unsqueeze(1), past.unsqueeze(1)], -1)
        x, _ = self.flow.inverse(z, context[:, 0])
        if self.output_clip is not None:
            x = x.clamp(-self.output_clip, self.output_clip)
        if self.prev_frames == 0:
            return x, FlowState(state.history, state.present, recurrent, inputs)
        history = torch.cat([state.history[:, 1:], x.unsqueeze(1)], 1)
        present = torch.cat([state.present[:, 1:], torch.ones_like(state.present[:, :1])], 1)
        return x, FlowState(history, present, recurrent, inputs)

    @torch.no_grad()
    def sample(
        self,
        mel: Tensor,
        component: Tensor | None = None,
        intensity: Tensor | None = None,
        temperature: float = 1.0,
        loc: Tensor | None = None,
        z: Tensor | None = None,
        prev: Tensor | None = None,
        prev_mask: Tensor | None = None,
    ) -> Tensor:
        """Generate ``[B, T, D]`` frame by frame for mel windows ``[B, T, C, M]``.

        Arguments:
            component: ``[B]`` emotion per row (-1 or None: drawn from the mixture weights).
            intensity: ``[B]`` intensity levels (-1: factor 1), or a float tensor of factors.
            temperature: spread of the latent draws around the location (0: the location).
            loc: ``[B, D]`` latent location replacing the component's (emotion transfer).
            z: ``[B, T, D]`` latents to decode instead of drawing them.
            prev, prev_mask: ``[B, K', D]`` frames to continue from and which exist
                (``K' >= K``); None: a clip start.
        """
        b, t = mel.shape[:2]
        if z is None:
            z = self.draw_latents(b, t, component, intensity, temperature, loc, device=mel.device)
        audio = self.audio(mel)  # (B, T, A)
        state = self.init_state(b, mel.device, audio.dtype, prev, prev_mask)
        frames = []
        for index in range(t):
            x, state = self.step(z[:, index], audio[:, index], state)
            frames.append(x)
        return torch.stack(frames, 1)

    def draw_latents(
        self,
        batch: int,
        frames: int,
        component: Tensor | None = None,
        intensity: Tensor | None = None,
        temperature: float = 1.0,
        loc: Tensor | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        """Latents ``[B, T, D]``, drawn independently per frame from each row's component."""
        if component is None:
            component = torch.full((batch,), -1, dtype=torch.long, device=device)
        if isinstance(self.prior, (GaussianMixture, StudentTMixture)) and (component < 0).any():
            # one component per sequence, not per frame: an unlabelled clip keeps one emotion
            drawn = torch.multinomial(torch.softmax(self.prior.logits.detach(), -1), batch, replacement=True)
            component = torch.where(component < 0, drawn.to(component.device), component)
        factor = None
        if intensity is not None:
            factor = intensity.float() if intensity.is_floating_point() else self.intensity_factor(intensity)
        rows = component.repeat_interleave(frames)
        z = self.prior.sample_given(
            batch * frames,
            rows,
            temperature,
            None if factor is None else factor.repeat_interleave(frames),
            None if loc is None else loc.repeat_interleave(frames, 0),
        )
        return rearrange(z, "(b t) d -> b t d", b=batch)
