"""The evaluation networks on held-out speakers: does SyncNet tell aligned audio from shifted
audio, and how accurate is the frame emotion classifier?

    python benchmarks/eval_networks.py --data DIR --syncnet runs/.../last.ckpt \
        --classifier runs/.../last.ckpt [--split test] [--shifts 3 6 10]

SyncNet: every clip of the split (its real frames, mouth crops from the record's landmarks)
is scored with its own audio, with the audio delayed or advanced by each shift, and with
another clip's audio (a different sentence of the same split). A SyncNet that works gives
the aligned audio a higher LSE-C and a lower LSE-D than the shifted or foreign audio, and
finds the shift as the AV offset.

Frame emotion classifier: per-frame accuracy and per-video accuracy (argmax of the mean
probabilities over all frames, as ``flowvq evaluate`` scores Acc_emo) on the split.
Writes ``benchmarks/results/eval_networks.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from flowvq.data.card import DatasetCard
from flowvq.data.mouth import mouth_crops
from flowvq.data.schema import num_frames
from flowvq.data.shards import ClipShards
from flowvq.datamodules.base import SILENCE_LOG_MEL, decode_frame
from flowvq.metrics.sync import sync_scores
from flowvq.report import write_report


def shifted(mel: np.ndarray, shift: int) -> np.ndarray:
    """The mel delayed by ``shift`` frames (advanced when negative), silence where nothing is left."""
    out = np.full_like(mel, SILENCE_LOG_MEL)
    if shift >= 0:
        out[shift:] = mel[: len(mel) - shift]
    else:
        out[:shift] = mel[-shift:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--syncnet", type=Path)
    parser.add_argument("--classifier", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--shifts", type=int, nargs="+", default=[3, 6, 10])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--name", default="eval_networks")
    args = parser.parse_args()

    card = DatasetCard.load(args.data)
    shards = ClipShards(args.data, args.split)
    records = sorted((shards[i] for i in range(len(shards))), key=lambda r: r["clip_id"])[: args.limit]
    size = card.frame_size
    rows, notes = [], []
    extra: dict = {"data": str(args.data), "split": args.split, "clips": len(records)}
    start = time.perf_counter()

    if args.syncnet:
        from flowvq.lightning_modules.syncnet import SyncNet

        net = SyncNet.load_from_checkpoint(args.syncnet, map_location="cpu").eval()
        conditions = ["aligned"] + [f"delayed {s}" for s in args.shifts] + [f"advanced {s}" for s in args.shifts]
        conditions.append("another clip's audio")
        results: dict[str, list[tuple[float, float, int]]] = {c: [] for c in conditions}
        for index, record in enumerate(records):
            t = num_frames(record)
            frames = np.stack([decode_frame(record, i, size, size) for i in range(t)])
            crops = mouth_crops(frames, record["landmarks"], net.hparams.crop_size, net.hparams.mouth_scale)
            other = records[(index + len(records) // 2) % len(records)]["mel"]
            other = np.concatenate([other] * (t // len(other) + 1))[:t]
            audio = {"aligned": record["mel"], "another clip's audio": other}
            for s in args.shifts:
                audio[f"delayed {s}"] = shifted(record["mel"], s)
                audio[f"advanced {s}"] = shifted(record["mel"], -s)
            for condition, mel in audio.items():
                table = net.offset_distances(crops, mel)  # (windows, offsets)
                lse_d, lse_c, offset = sync_scores(table)
                mean = table.double().mean(0)
                at_zero = mean[len(mean) // 2]  # the hypothesis that the audio is aligned as given
                results[condition].append(
                    (float(lse_d), float(lse_c), int(offset), float(at_zero), float(mean.median() - at_zero))
                )
        for condition in conditions:
            values = np.array(results[condition], dtype=np.float64)
            expected = 0
            if condition.startswith("delayed"):
                expected = int(condition.split()[1])
            elif condition.startswith("advanced"):
                expected = -int(condition.split()[1])
            row = {
                "network": "SyncNet",
                "condition": condition,
                "clips": len(values),
                "LSE-D": float(values[:, 0].mean()),
                "LSE-C": float(values[:, 1].mean()),
                "offset found (median)": float(np.median(values[:, 2])),
                "distance at offset 0": float(values[:, 3].mean()),
                "confidence at offset 0": float(values[:, 4].mean()),
            }
            if condition != "another clip's audio":
                row["offset within 1 frame"] = float((np.abs(values[:, 2] - expected) <= 1).mean())
            rows.append(row)
        aligned = np.array(results["aligned"])
        for s in args.shifts:
            delayed = np.array(results[f"delayed {s}"])
            notes.append(
                f"Delayed by {s} frames, paired with the same video: confidence at offset 0 lower than the aligned "
                f"audio's on {(aligned[:, 4] > delayed[:, 4]).mean():.0%} of clips, LSE-C (best offset) lower on "
                f"{(aligned[:, 1] > delayed[:, 1]).mean():.0%}."
            )
        notes.append(
            "LSE-C searches the best offset (as syncnet_python), so a shift inside the search range moves the "
            "offset found rather than LSE-C; the confidence at offset 0 (median minus the distance at offset 0) "
            "scores the audio as given."
        )
        extra["syncnet"] = {"checkpoint": str(args.syncnet), "hparams": dict(net.hparams)}
        notes.append(
            "SyncNet rows: the real frames of each clip, mouth crops from the record's landmarks, LSE over "
            f"offsets -{net.hparams.eval_offsets}..{net.hparams.eval_offsets}; distances between unit embeddings "
            "(range 0-2), so LSE-D/LSE-C are on this SyncNet's scale, not syncnet_python's."
        )

    if args.classifier:
        from flowvq.lightning_modules.frame_emotion_classifier import FrameEmotionClassifier

        classifier = FrameEmotionClassifier.load_from_checkpoint(args.classifier, map_location="cpu").eval()
        frame_correct = frame_total = video_correct = videos = 0
        for record in records:
            if record["emotion"] < 0:
                continue
            frames = np.stack([decode_frame(record, i, size, size) for i in range(num_frames(record))])
            images = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            probabilities = classifier.predict_proba(images)
            frame_correct += int((probabilities.argmax(-1) == record["emotion"]).sum())
            frame_total += len(frames)
            video_correct += int(int(probabilities.mean(0).argmax()) == record["emotion"])
            videos += 1
        rows.append(
            {
                "network": "frame emotion classifier",
                "condition": f"{args.split} split (held-out speakers)",
                "clips": videos,
                "frame accuracy": frame_correct / max(frame_total, 1),
                "video accuracy": video_correct / max(videos, 1),
            }
        )
        extra["classifier"] = {"checkpoint": str(args.classifier), "hparams": dict(classifier.hparams)}
        notes.append(f"Chance is 1/{classifier.hparams.num_emotions} = {1 / classifier.hparams.num_emotions:.3f}.")
    notes.append(
        f"{len(records)} clips of the {args.split!r} split of {card.name!r} ({args.data}); "
        f"{time.perf_counter() - start:.0f} s."
    )
    write_report(args.name, rows, title="Evaluation networks on held-out speakers", notes=notes, extra=extra, digits=3)


if __name__ == "__main__":
    main()
