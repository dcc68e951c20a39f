"""Generation speed of the FlowVQTalker chain: per stage and whole, frames/s against real time (25 fps).

For each resolution (64 and 128 px) the tiny configs' stages (ExpFlow, PoseFlow, VQGAN ->
VQIG) are fitted for a few steps on SynthTalk tiny written at that frame size (speed does not
depend on the weights; the architecture is the tiny configs'), then a held-out speaker's
photo and 10 s of held-out speech go through :class:`flowvq.pipeline.Pipeline`:

- batch 1: ``Pipeline.generate`` (one sample), seconds per stage -> frames/s per stage and for
  the chain (face detection and audio features included), real-time factor;
- streaming: ``Pipeline.stream`` in 1 s chunks: first-frame latency (from the call to the
  first chunk's frames) and real-time factor;

in fp32 and bf16 (the renderer under bf16 autocast; the flows sample in fp32 either way).

    python benchmarks/generate_speed.py                       # writes benchmarks/results/generate_speed.{json,md}
    python benchmarks/generate_speed.py --seconds 4 --sizes 64   # a quick look
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
FAST = {"trainer.max_steps": 3, "trainer.max_epochs": 1, "trainer.limit_val_batches": 0, "trainer.callbacks": []}


def fit_pipeline(data: Path, out: Path, size: int) -> Path:
    """A few steps of each tiny stage on ``data`` (image stages at ``size`` px); the pipeline YAML naming them."""
    from flowvq.pipeline.demo import write_pipeline_yaml
    from flowvq.pipeline.inputs import dataset_framing
    from flowvq.pipeline.train import fit_config

    def fit(name: str, extra: dict | None = None) -> Path:
        return fit_config(TINY / f"{name}.yaml", data, out, name, {**FAST, **(extra or {})}, progress=False).checkpoint

    stages = {"expression": fit("expflow"), "motion": fit("poseflow")}
    resolution = {"model.init_args.resolution": size}
    codebook = fit("vqgan", resolution)
    stages["renderer"] = fit("vqig", {**resolution, "model.init_args.codebook_checkpoint": str(codebook)})
    return write_pipeline_yaml(out / "pipeline.yaml", stages, data, dataset_framing(data).to_dict())


def long_speech(data: Path, seconds: float) -> np.ndarray:
    """Test-split clips' audio joined to ``seconds`` (float32, 16 kHz)."""
    from flowvq.data.shards import open_split

    records = open_split(data, "test")
    parts, total, index = [], 0, 0
    while total < seconds * 16000:
        audio = np.asarray(records[index % len(records)]["audio"], dtype=np.float32) / 32768.0
        parts.append(audio)
        total += len(audio)
        index += 1
    return np.concatenate(parts)[: int(seconds * 16000)]


def measure(pipeline, photo: Path, speech: np.ndarray, repeats: int) -> dict:
    """Best of ``repeats`` batch-1 runs, and one streaming run."""
    from flowvq.pipeline.inputs import speech_from_waveform

    best = None
    for _ in range(repeats):
        result = pipeline.generate(photo, speech, emotion="happy", seed=0)
        if best is None or result.seconds["total"] < best.seconds["total"]:
            best = result
    frames = best.num_frames
    audio_seconds = len(speech) / 16000
    row = {"frames": frames, "audio_s": round(audio_seconds, 2)}
    for stage in ("audio", "face", "expression", "motion", "renderer"):
        seconds = best.seconds.get(stage, 0.0)
        row[f"{stage}_s"] = round(seconds, 3)
        if stage in ("expression", "motion", "renderer"):
            row[f"{stage}_fps"] = round(frames / max(seconds, 1e-9), 1)
    row["chain_fps"] = round(frames / best.seconds["total"], 1)
    row["rtf"] = round(best.seconds["total"] / audio_seconds, 3)
    row["real_time"] = row["chain_fps"] >= 25.0
    speech_from_waveform(speech, pipeline.card)  # warm
    blocks = (speech[i : i + 3200] for i in range(0, len(speech), 3200))  # 0.2 s blocks, as a microphone gives
    start = time.perf_counter()
    first = None
    count = 0
    for chunk in pipeline.stream(photo, blocks, emotion="happy", seed=0):
        if first is None:
            first = time.perf_counter() - start
        count += chunk.frames.shape[1]
    total = time.perf_counter() - start
    row["stream_first_frame_s"] = round(first, 3)
    row["stream_rtf"] = round(total / audio_seconds, 3)
    row["stream_frames"] = count
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the speech")
    parser.add_argument("--repeats", type=int, default=2, help="batch runs per setting (best kept)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT))
    from flowvq.data.synth import synth
    from flowvq.pipeline import Pipeline
    from flowvq.pipeline.demo import held_out_inputs
    from flowvq.pipeline.train import quiet_lightning
    from flowvq.report import write_report

    work = args.work or Path(tempfile.mkdtemp(prefix="generate_speed_"))
    rows = []
    try:
        for size in args.sizes:
            data = work / f"synth_{size}"
            if not (data / "dataset.json").exists():
                with quiet_lightning():
                    synth(out=data, preset="tiny", seed=0, frame_size=size, overwrite=True)
            yaml_path = work / f"stages_{size}" / "pipeline.yaml"
            if not yaml_path.exists():
                fit_pipeline(data, yaml_path.parent, size)
            inputs = held_out_inputs(data, work / f"inputs_{size}")
            speech = long_speech(data, args.seconds)
            for precision in ("32", "bf16"):
                pipeline = Pipeline.from_yaml(yaml_path, precision=precision)
                pipeline.generate(inputs["photo"], speech[:16000], seed=0)  # warm-up (librosa, mediapipe, kernels)
                row = {"size": size, "precision": "fp32" if precision == "32" else "bf16"}
                row.update(measure(pipeline, inputs["photo"], speech, args.repeats))
                print(row, flush=True)
                rows.append(row)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    columns = [
        "size", "precision", "frames", "expression_fps", "motion_fps", "renderer_fps", "chain_fps", "rtf",
        "real_time", "audio_s", "face_s", "stream_first_frame_s", "stream_rtf",
    ]  # fmt: skip
    notes = [
        f"{args.seconds:g} s of held-out SynthTalk speech, one sample, a held-out speaker's photo (256 px, "
        "face found and cropped by mediapipe); the tiny configs' architectures (ExpFlow, PoseFlow: 4 flow "
        "layers, GRU 64; VQIG: 16 channels, codebook 256 x 64) at each frame size.",
        "*_fps: frames per second of that stage alone; chain_fps: frames / all seconds of the call (audio "
        "features, face crop, both flows, rendering); rtf: seconds per second of audio (< 1: faster than "
        "real time); real_time: chain_fps >= 25.",
        "Streaming: 0.2 s audio blocks in, 1 s chunks (25 frames + 2 frames of look-ahead) out; first-frame "
        "latency from the call to the first chunk's frames (includes the face crop).",
        f"Threads: torch {torch.get_num_threads()}; the machine was shared with other jobs, so figures are "
        "lower bounds of what the hardware gives.",
        "bf16 runs the renderer under bf16 autocast; the flows always sample in fp32 (their per-frame "
        "inverse needs it), so the fp32 and bf16 rows run the same flow code: their difference in "
        "expression_fps / motion_fps (up to 3x) is the shared machine's noise, the size of the uncertainty "
        "on every figure here.",
    ]
    write_report("generate_speed", rows, "Generation speed (FlowVQTalker chain)", notes, columns, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
