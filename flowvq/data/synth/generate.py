"""SynthTalk clips: simulate (audio, expression, pose), render, and write the dataset.

:func:`simulate_clip` runs the generative process of one clip without rendering (cheap; the
ground truth comes from it), :func:`make_record` adds frames and landmarks and returns the
clip record, :func:`write_synth` writes a whole preset with the shared shard writer.

Ground truth is stored per split in ``<root>/ground_truth/<split>.npz`` with keys
``"<clip_id>/<name>"`` (read it with :func:`load_ground_truth`); see :data:`GROUND_TRUTH`.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from flowvq.data.audio import frame_envelope, log_mel, to_int16
from flowvq.data.card import AudioFeatures, DatasetCard
from flowvq.data.schema import EMOTIONS, pack_frames
from flowvq.data.shards import write_dataset
from flowvq.data.synth import motion
from flowvq.data.synth.face import eye_closure, gaze_field, keep_in_frame, speaker_shape
from flowvq.data.synth.presets import ClipSpec, SynthPreset, get_preset, plan_clips
from flowvq.data.synth.speech import PROSODY, speak

__all__ = ["GROUND_TRUTH", "ClipSimulation", "load_ground_truth", "make_record", "simulate_clip", "write_synth"]

FPS = 25.0
#: Log-mel settings of every SynthTalk dataset (written to the card, used for every clip).
AUDIO = AudioFeatures()
JPEG_QUALITY = 90
MAX_FRAME_SIZE = 256

#: Ground-truth arrays per clip: exp == speech + emotion_offset + random + blink (in dim "blink").
GROUND_TRUTH: dict[str, str] = {
    "envelope": "float32 [T]: frame_envelope of the clip's stored audio (RMS per video frame)",
    "jaw_drive": f"float32 [T]: speech part of jaw_open = jaw_gain * envelope[t + lead] / {motion.ENVELOPE_REF}",
    "speech": "float32 [T, E]: speech-driven expression (jaw_open, lip_stretch, lip_pucker)",
    "emotion_offset": "float32 [E]: emotion template x intensity scale x expressiveness, jittered per clip",
    "random": "float32 [T, E]: the per-clip smooth random process",
    "blink": "float32 [T]: blink track (exp's blink dim adds the random process to it)",
    "f0": "float32 [T]: F0 of the voiced sound per frame (Hz, 0 where silent)",
    "syllable_onsets": "float32 [n, 2]: onset frame and stress weight of each syllable",
}


@dataclass
class ClipSimulation:
    """The generative process of one clip, before rendering."""

    audio: np.ndarray  # int16 [N]
    exp: np.ndarray  # float32 [T, E]
    pose: np.ndarray  # float32 [T, P]
    truth: dict[str, np.ndarray]


def simulate_clip(spec: ClipSpec) -> ClipSimulation:
    """Audio, expression and pose of a clip (deterministic for ``spec.seed``)."""
    rng = np.random.default_rng(spec.seed)
    speaker = spec.speaker
    emotion = EMOTIONS[spec.emotion]
    scale = motion.intensity_scale(spec.emotion, spec.intensity)
    frames = spec.num_frames
    speech = speak(rng, frames, speaker.voice, emotion, scale, fps=FPS)
    audio = to_int16(speech.waveform)
    envelope = frame_envelope(audio, frames, fps=FPS)
    speech_exp, jaw_drive = motion.speech_expression(envelope, speech.vowel_shape, speaker.jaw_gain)
    jitter = 1.0 + 0.15 * rng.standard_normal(len(motion.EXP_NAMES))
    offset = (motion.EMOTION_TEMPLATES[spec.emotion] * scale * speaker.expressiveness * jitter).astype(np.float32)
    random = motion.random_expression(rng, frames)
    blink = motion.blinks(rng, frames, motion.BLINK_RATE[emotion] * speaker.blink_rate, fps=FPS)
    exp = speech_exp + offset[None, :] + random
    exp[:, motion.EXP_INDEX["blink"]] += blink
    pose = motion.pose_process(rng, frames, speech.word_onsets, emotion, scale, np.asarray(speaker.pose_bias))
    pose = keep_in_frame(speaker_shape(speaker.seed), exp, pose)
    truth = {
        "envelope": envelope,
        "jaw_drive": jaw_drive,
        "speech": speech_exp,
        "emotion_offset": offset,
        "random": random,
        "blink": blink,
        "f0": speech.f0,
        "syllable_onsets": speech.onsets,
    }
    return ClipSimulation(audio=audio, exp=exp.astype(np.float32), pose=pose, truth=truth)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def make_record(spec: ClipSpec) -> dict:
    """The clip record of ``spec``: simulated coefficients and audio, landmarks, JPEG frames."""
    from flowvq.data.synth.render import face_renderer  # PIL drawing only where records are made

    sim = simulate_clip(spec)
    renderer = face_renderer(spec.speaker, spec.frame_size)
    jpegs = [_jpeg(image) for image in renderer.render_clip(sim.exp, sim.pose)] if spec.frames else []
    blob, offsets = pack_frames(jpegs)
    return {
        "clip_id": spec.clip_id,
        "speaker": spec.speaker.speaker_id,
        "split": spec.split,
        "emotion": spec.emotion,
        "intensity": spec.intensity,
        "exp": sim.exp,
        "pose": sim.pose,
        "mel": log_mel(sim.audio, spec.num_frames, AUDIO, fps=FPS),
        "audio": sim.audio,
        "landmarks": renderer.landmarks(sim.exp, sim.pose),
        "frames": blob,
        "frame_offsets": offsets,
        # the optional fields, mirrored from the exp dims blink, gaze_x and gaze_y in the units
        # every source uses (flowvq.data.schema), so models that need them read any dataset alike
        "blink": eye_closure(sim.exp),
        "gaze": gaze_field(speaker_shape(spec.speaker.seed), sim.exp),
    }


def write_ground_truth(root: Path, plan: dict[str, list[ClipSpec]]) -> None:
    """``<root>/ground_truth/<split>.npz``, keys ``"<clip_id>/<name>"`` (see :data:`GROUND_TRUTH`)."""
    folder = root / "ground_truth"
    folder.mkdir(parents=True, exist_ok=True)
    for split, clips in plan.items():
        arrays = {}
        for spec in clips:
            for name, value in simulate_clip(spec).truth.items():
                arrays[f"{spec.clip_id}/{name}"] = value
        tmp = folder / f"{split}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(folder / f"{split}.npz")


def load_ground_truth(root: str | Path, split: str) -> dict[str, dict[str, np.ndarray]]:
    """Ground truth of a split: ``{clip_id: {name: array}}``."""
    path = Path(root) / "ground_truth" / f"{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing: it is written by `flowvq synth --out {root}`")
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            clip_id, _, name = key.rpartition("/")
            out.setdefault(clip_id, {})[name] = data[key]
    return out


def write_synth(
    out: str | Path,
    preset: str | SynthPreset = "tiny",
    seed: int = 0,
    workers: int = 1,
    frame_size: int | None = None,
    frames: bool = True,
) -> DatasetCard:
    """Write a SynthTalk dataset (shards, ground truth, card) to ``out`` (no emptiness check)."""
    spec = get_preset(preset)
    size = int(frame_size or spec.frame_size)
    if not 16 <= size <= MAX_FRAME_SIZE:
        raise ValueError(f"frame_size {size} is out of range: expected 16..{MAX_FRAME_SIZE} pixels")
    root = Path(out)
    started = time.perf_counter()
    plan = plan_clips(spec, seed, size, frames, fps=FPS)
    speakers = {split: sorted({c.speaker.speaker_id for c in clips}) for split, clips in plan.items()}
    all_speakers = [c.speaker for clips in plan.values() for c in clips]
    card = DatasetCard(
        name=f"synthtalk-{spec.name}",
        exp_dim=len(motion.EXP_NAMES),
        pose_dim=6,
        coefficient_source="synthetic",
        fps=FPS,
        audio=replace(AUDIO),  # a copy: the card is the caller's to change
        frame_size=size if frames else 0,
        exp_names=list(motion.EXP_NAMES),
        fields=["blink", "gaze"],
        speakers=speakers,
        extra={"synth": _synth_extra(spec, seed, size, {s.speaker_id: s for s in all_speakers})},
    )
    root.mkdir(parents=True, exist_ok=True)
    write_ground_truth(root, plan)
    # librosa compiles its numba kernels on first use: do it here, once, rather than in each
    # worker that litdata forks per split (seconds each)
    log_mel(np.zeros(4 * 640, dtype=np.int16), 4, AUDIO, fps=FPS)
    card = write_dataset(root, plan, make_record, card, seed=seed, num_workers=workers)
    card.extra["synth"]["write_seconds"] = round(time.perf_counter() - started, 2)
    card.save(root)
    return card


def _synth_extra(preset: SynthPreset, seed: int, size: int, speakers: dict) -> dict:
    """What the card records about the generative process (so metrics can be exact)."""
    return {
        "preset": preset.name,
        "preset_spec": asdict(preset),
        "seed": seed,
        "lead_frames": motion.LEAD_FRAMES,
        "exp_names": list(motion.EXP_NAMES),
        "nuisance_dims": list(motion.NUISANCE_DIMS),
        "emotion_templates": motion.EMOTION_TEMPLATES.tolist(),
        "intensity_scales": list(motion.INTENSITY_SCALES),
        "jaw_open": {
            "driver": "audio envelope (frame_envelope of the stored audio), leading by lead_frames",
            "formula": "jaw_open[t] = jaw_gain * envelope[min(t + lead, T - 1)] / envelope_ref + offset + random",
            "envelope_ref": motion.ENVELOPE_REF,
        },
        "exp_decomposition": "exp = speech + emotion_offset + random; exp[:, blink] += blink",
        "optional_fields": {
            "blink": "clip(exp[:, blink], 0, 1)",
            "gaze": "the rendered iris offset of exp[:, gaze_x], exp[:, gaze_y] in half eye widths "
            "(flowvq.data.synth.face.gaze_field; x right, y up)",
        },
        "landmark_frame_size": size,
        "ground_truth": {"path": "ground_truth/<split>.npz", "key": "<clip_id>/<name>", "arrays": GROUND_TRUTH},
        "prosody": {name: vars(p) for name, p in PROSODY.items()},
        "speakers": {
            sid: {"expressiveness": s.expressiveness, "jaw_gain": s.jaw_gain, "f0": s.voice.f0, "sex": s.sex}
            for sid, s in sorted(speakers.items())
        },
    }
