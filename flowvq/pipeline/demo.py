"""``flowvq demo``: the whole chain at CPU scale on the built-in SynthTalk dataset.

Writes SynthTalk (tiny preset), trains each stage briefly with its ``configs/tiny/`` config
(the coefficient emotion classifier, ExpFlow, PoseFlow, the VQGAN codebook, VQIG), writes
``pipeline.yaml`` naming their checkpoints, generates one video per emotion of a held-out
speaker's photo saying a held-out clip's audio, and scores the pipeline with
``flowvq evaluate`` where it is installed. Everything it writes is under ``--out``;
afterwards ``flowvq generate --pipeline <out>/pipeline.yaml --image any.jpg --audio any.wav``
works.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["config_dir", "demo", "render_grid"]

STAGES = ("flows", "image")


def config_dir() -> Path:
    """The folder of flowvq's YAML configs: ``$FLOWVQ_CONFIGS``, else the checkout's ``configs/``,
    else the copy a wheel installs under ``<prefix>/share/flowvq/configs``."""
    candidates = []
    if os.environ.get("FLOWVQ_CONFIGS"):
        candidates.append(Path(os.environ["FLOWVQ_CONFIGS"]))
    candidates.append(Path(__file__).resolve().parents[2] / "configs")
    candidates += [Path(prefix) / "share" / "flowvq" / "configs" for prefix in (sys.prefix, sys.base_prefix)]
    for folder in candidates:
        if (folder / "tiny").is_dir():
            return folder
    raise FileNotFoundError(
        "flowvq's configs are not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); set FLOWVQ_CONFIGS to the configs/ folder of a flowvq checkout"
    )


def _config(name: str) -> Path:
    return config_dir() / "tiny" / f"{name}.yaml"


def render_grid(checkpoint: Path, data: Path, out: Path, count: int = 8, split: str = "test") -> Path:
    """PNG of VQIG frames: rows are source faces, target frames, and the VQIG's rendering of the
    target's coefficients from the source face (fixed pairs of ``split``)."""
    import numpy as np
    import torch
    from PIL import Image

    from flowvq.datamodules import FramePairDataModule
    from flowvq.lightning_modules.vqig import VQIG

    model = VQIG.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    datamodule = FramePairDataModule(data, batch_size=count, image_size=model.hparams.resolution)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()))
    rendered = [
        model.render(source, exp[None], pose[None])[0]
        for source, exp, pose in zip(batch["source"], batch["target_exp"], batch["target_pose"])
    ]
    rows = [batch["source"], batch["target"], torch.stack(rendered)]
    grid = torch.cat([torch.cat(list(row.float().clamp(-1, 1)), dim=2) for row in rows], dim=1)  # (3, 3H, nW)
    image = ((grid.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(out)
    return out


def _score(stage: dict[str, Any], key: str, name: str, unit: str = "") -> str:
    value = stage["val"].get(key)
    return f"{name} {value:.3f}{unit}" if value is not None else "not validated (too few epochs)"


class _Console:
    """One line per step, numbered."""

    def __init__(self, steps: int) -> None:
        self.steps, self.step = steps, 0

    def __call__(self, message: str, count: bool = True) -> None:
        if count:
            self.step += 1
            print(f"[demo {self.step}/{self.steps}] {message}", flush=True)
        else:
            print(f"[demo] {message}", flush=True)


def held_out_inputs(data: Path, out: Path, size: int = 256) -> dict[str, Any]:
    """A held-out (test) speaker's photo and another held-out clip's audio, written as files.

    The photo is the first frame of the speaker's first test clip, upscaled to ``size`` (a
    user's photo is larger than a 64 px crop); the audio is the first test clip of a different
    test speaker (or a different clip), so neither was seen in training.
    """
    import wave

    import numpy as np
    from PIL import Image

    from flowvq.data.schema import unpack_frame
    from flowvq.data.shards import open_split

    records = open_split(data, "test")
    first = records[0]
    other = next((records[i] for i in range(1, len(records)) if records[i]["speaker"] != first["speaker"]), None)
    other = other if other is not None else records[min(1, len(records) - 1)]
    frame = Image.open(io.BytesIO(unpack_frame(first, 0))).convert("RGB").resize((size, size), Image.BICUBIC)
    out.mkdir(parents=True, exist_ok=True)
    photo = out / "photo.png"
    frame.save(photo)
    speech = out / "speech.wav"
    with wave.open(str(speech), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(np.asarray(other["audio"], dtype=np.int16).tobytes())
    return {
        "photo": photo,
        "photo_speaker": first["speaker"],
        "speech": speech,
        "speech_clip": other["clip_id"],
        "speech_speaker": other["speaker"],
    }


def write_pipeline_yaml(path: Path, checkpoints: dict[str, Path], data: Path, framing: dict | None) -> Path:
    """``pipeline.yaml`` naming the demo's checkpoints and card by paths relative to its folder."""
    import yaml

    def rel(target: Path) -> str:
        return os.path.relpath(Path(target).resolve(), path.parent.resolve())

    kinds = {"expression": "expflow", "motion": "poseflow", "renderer": "vqig"}
    spec = {
        "name": "flowvqtalker-demo",
        "card": rel(data),
        "stages": {role: {"kind": kinds[role], "checkpoint": rel(ckpt)} for role, ckpt in checkpoints.items()},
        "sampling": {"temperature": 0.8},
        "framing": framing,
        "check_datasets": True,
    }
    header = "# Written by `flowvq demo`: FlowVQTalker's tiny stages on SynthTalk. Paths are relative to this file.\n"
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    return path


def _emotion_videos(pipeline: Any, inputs: dict[str, Any], out: Path, seed: int) -> list[Path]:
    """One mp4 per emotion (and one of them all side by side), with the audio muxed."""
    import numpy as np
    from tqdm.auto import tqdm

    from flowvq.pipeline.generate import VideoWriter

    names = list(pipeline.card.emotion_names)
    speech = pipeline.speech(inputs["speech"])
    source = pipeline.source(inputs["photo"])
    tiles, paths = [], []
    with tqdm(total=len(names), desc="videos", unit="emotion", leave=False) as bar:
        for name in names:
            result = pipeline.generate(source, speech, emotion=name, intensity=2, seed=seed)
            frames = np.ascontiguousarray(result.frames[0].transpose(0, 2, 3, 1))
            writer = VideoWriter(out / f"{name}.mp4", frames.shape[2], frames.shape[1], result.fps, result.sample_rate)
            writer.write(frames, result.audio)
            paths.append(writer.close())
            tiles.append(frames)
            bar.update(1)
    columns = 4
    rows = [np.concatenate(tiles[i : i + columns], axis=2) for i in range(0, len(tiles), columns)]
    rows[-1] = np.pad(rows[-1], ((0, 0), (0, 0), (0, rows[0].shape[2] - rows[-1].shape[2]), (0, 0)))
    grid = np.concatenate(rows, axis=1)
    writer = VideoWriter(out / "all_emotions.mp4", grid.shape[2], grid.shape[1], pipeline.fps, speech.sample_rate)
    writer.write(grid, speech.waveform)
    paths.append(writer.close())
    return paths


def _evaluator() -> Any:
    """``flowvq evaluate``'s function where this version has it (None otherwise)."""
    try:
        from flowvq.pipeline.evaluate import evaluate
    except ImportError:
        return None
    return evaluate


def demo(
    out: Path = Path("runs/demo"),
    data: Path | None = None,
    seed: int = 0,
    fresh_data: bool = False,
    stages: list[str] | None = None,
    flow_epochs: int | None = None,
    image_epochs: int = 5,
    evaluate: bool = True,
    eval_epochs: int = 3,
    eval_clips: int | None = 8,
) -> list[dict[str, Any]]:
    """Run the whole chain at CPU scale on SynthTalk: train every stage, generate videos, score them.

    Everything goes under ``out``: the dataset (``data/`` unless ``--data`` names one),
    each stage's checkpoints and TensorBoard run (``<stage>/``), ``pipeline.yaml``, the
    held-out inputs (``inputs/``), one video per emotion (``videos/``), pictures and
    ``demo.json``. Then ``flowvq generate --pipeline <out>/pipeline.yaml --image any.jpg
    --audio any.wav`` works.

    Args:
        out: the folder for everything the demo writes.
        data: a SynthTalk root to use (default ``<out>/data``, written with the tiny preset
            unless a dataset is there).
        seed: seed of the synthetic dataset and of the samples.
        fresh_data: rewrite the dataset even if one is there.
        stages: which groups to run after the emotion classifier (always first: ExpFlow's
            validation scores its samples with it): ``flows`` (ExpFlow, PoseFlow), ``image``
            (VQGAN codebook, then VQIG on it). Videos need both. Default: both.
        flow_epochs: epochs of each flow (default: the tiny configs').
        image_epochs: epochs of each image stage (the demo shows the path works; real
            quality needs a GPU or hours).
        evaluate: score the pipeline with ``flowvq evaluate`` where it is installed: the
            evaluation networks (SyncNet, frame emotion classifier) train for ``eval_epochs``
            epochs first; ``eval_clips`` test clips are scored (None: all).
    """
    stages = list(STAGES if stages is None else stages)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown demo stages {unknown}: expected some of {', '.join(STAGES)}")
    from flowvq.data.card import CARD_NAME
    from flowvq.data.synth import synth
    from flowvq.pipeline.train import fit_config, quiet_lightning

    out = Path(out)
    data = Path(data) if data is not None else out / "data"
    full = set(stages) == set(STAGES)
    scorer = _evaluator() if evaluate and full else None
    steps = 2 + 2 * ("flows" in stages) + 2 * ("image" in stages) + (1 if full else 0) + (3 if scorer else 0)
    console = _Console(steps)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if fresh_data or not (data / CARD_NAME).is_file():
        clock = time.perf_counter()
        with quiet_lightning(), contextlib.redirect_stdout(io.StringIO()):  # one line of our own instead
            synth(out=data, preset="tiny", seed=seed, overwrite=True)
        console(f"SynthTalk tiny (seed {seed}) written to {data} in {time.perf_counter() - clock:.0f} s")
    else:
        console(f"using the SynthTalk dataset at {data} (--fresh_data true rewrites it)")

    summary: list[dict[str, Any]] = []

    def fit(name: str, overrides: dict[str, Any] | None = None, test: bool = False) -> dict[str, Any]:
        result = fit_config(_config(name), data, out, name, overrides)
        metrics: dict[str, float] = {}
        if test:
            with quiet_lightning():
                scores = result.trainer.test(
                    result.model, datamodule=result.datamodule, ckpt_path=str(result.checkpoint), verbose=False
                )
            metrics = {key: float(value) for key, value in (scores[0] if scores else {}).items()}
        entry = {
            "stage": name,
            "checkpoint": str(result.checkpoint),
            "tensorboard": str(out / name / "tensorboard"),
            "test": metrics,
            "val": {k: round(v, 4) for k, v in result.metrics.items() if k.startswith("val/")},
            "seconds": round(result.seconds, 1),
        }
        summary.append(entry)
        return entry

    classifier = fit("emotion_classifier", test=True)
    accuracy = classifier["test"].get("test/accuracy")
    console(
        f"emotion classifier (scores ExpFlow's samples): held-out-speaker accuracy "
        f"{accuracy if accuracy is None else round(accuracy, 3)} (chance 0.125), {classifier['seconds']:.0f} s"
    )
    checkpoints: dict[str, Path] = {}
    if "flows" in stages:
        epochs = {} if flow_epochs is None else {"trainer.max_epochs": flow_epochs}
        expflow = fit("expflow", {"model.init_args.emotion_classifier": classifier["checkpoint"], **epochs})
        console(f"ExpFlow: {_score(expflow, 'val/nll', 'val NLL')}, {expflow['seconds']:.0f} s")
        poseflow = fit("poseflow", epochs)
        console(f"PoseFlow: {_score(poseflow, 'val/nll', 'val NLL')}, {poseflow['seconds']:.0f} s")
        checkpoints.update(expression=Path(expflow["checkpoint"]), motion=Path(poseflow["checkpoint"]))
        from flowvq.pipeline.flow_samples import plot_samples

        with quiet_lightning():
            picture = plot_samples(Path(expflow["checkpoint"]), data, out / "expflow_samples.png", ["happy", "sad"])
        expflow["samples_png"] = str(picture)
        console(f"ExpFlow samples of held-out speech for two emotions: {picture}", count=False)
    if "image" in stages:
        # validate once, at the end (the tiny configs validate every 10 epochs)
        image = {"trainer.max_epochs": image_epochs, "trainer.check_val_every_n_epoch": image_epochs}
        vqgan = fit("vqgan", image)
        console(f"VQGAN codebook: {_score(vqgan, 'val/psnr', 'val PSNR', ' dB')}, {vqgan['seconds']:.0f} s")
        vqig = fit(
            "vqig",
            {"model.init_args.codebook_checkpoint": vqgan["checkpoint"], **image},
        )
        picture = render_grid(Path(vqig["checkpoint"]), data, out / "vqig_frames.png")
        vqig["frames_png"] = str(picture)
        console(
            f"VQIG: {_score(vqig, 'val/psnr', 'val PSNR', ' dB')}, {vqig['seconds']:.0f} s; held-out frames {picture}"
        )
        checkpoints["renderer"] = Path(vqig["checkpoint"])

    if full:
        from flowvq.pipeline.inputs import dataset_framing
        from flowvq.pipeline.pipeline import Pipeline

        pipeline_yaml = write_pipeline_yaml(out / "pipeline.yaml", checkpoints, data, dataset_framing(data).to_dict())
        inputs = held_out_inputs(data, out / "inputs")
        clock = time.perf_counter()
        pipeline = Pipeline.from_yaml(pipeline_yaml)
        videos = _emotion_videos(pipeline, inputs, out / "videos", seed)
        console(
            f"generated {len(videos) - 1} videos (one per emotion) of held-out speaker {inputs['photo_speaker']} "
            f"saying held-out clip {inputs['speech_clip']}: {out / 'videos'} ({time.perf_counter() - clock:.0f} s)"
        )
        summary.append(
            {
                "stage": "generate",
                "pipeline": str(pipeline_yaml),
                "inputs": {k: str(v) for k, v in inputs.items()},
                "videos": [str(v) for v in videos],
                "seconds": round(time.perf_counter() - clock, 1),
            }
        )
        if evaluate and scorer is None:
            console("flowvq evaluate is not in this version: no metric table", count=False)
        if scorer is not None:
            epochs = {"trainer.max_epochs": eval_epochs}
            syncnet = fit("syncnet", epochs)
            console(f"SyncNet (scores lip sync): {syncnet['seconds']:.0f} s")
            frames = fit("frame_emotion_classifier", epochs)
            console(f"frame emotion classifier (scores Acc_emo): {frames['seconds']:.0f} s")
            clock = time.perf_counter()
            from flowvq.pipeline.inputs import native_quiet

            with quiet_lightning(), native_quiet():  # mediapipe's native log lines, per clip
                table = scorer(
                    pipeline=pipeline_yaml,
                    data=data,
                    split="test",
                    out=out / "evaluate",
                    syncnet=syncnet["checkpoint"],
                    emotion_classifier=frames["checkpoint"],
                    coefficient_classifier=classifier["checkpoint"],
                    samples=2,
                    limit=eval_clips,
                    overwrite=True,
                )
            console(f"evaluate on held-out speakers ({time.perf_counter() - clock:.0f} s): {out / 'evaluate'}")
            print(table.to_markdown(), flush=True)
            summary.append(
                {"stage": "evaluate", "out": str(out / "evaluate"), "seconds": round(time.perf_counter() - clock, 1)}
            )

    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    console(f"done in {time.perf_counter() - start:.0f} s; summary {out / 'demo.json'}", count=False)
    if full:
        console(
            f"try: flowvq generate --pipeline {out / 'pipeline.yaml'} --image any.jpg --audio any.wav "
            f"--emotion happy --out {out / 'mine'}",
            count=False,
        )
    console(f"TensorBoard: tensorboard --logdir {out}", count=False)
    return summary
