"""Held-out-speaker accuracy of a trained coefficient emotion classifier, scored per clip.

Each test clip's whole expression sequence (normalised with the card's train statistics) is
classified once, as the field scores emotion accuracy per video; accuracy is reported over
all clips, per intensity level and per emotion.

    python benchmarks/emotion_classifier_quality.py --checkpoint runs/.../best.ckpt --root data/synth_small
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from flowvq.data.schema import EMOTIONS
from flowvq.data.shards import open_split
from flowvq.datamodules.base import Normalizer
from flowvq.lightning_modules.emotion_classifier import EmotionClassifier

RESULTS = Path(__file__).resolve().parent / "results"


def evaluate(checkpoint: Path, root: Path, split: str = "test") -> dict:
    model = EmotionClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    shards = open_split(root, split)
    normalizer = Normalizer.from_card(shards.card)
    correct: dict[str, list[bool]] = defaultdict(list)
    confusion = np.zeros((len(EMOTIONS), len(EMOTIONS)), dtype=np.int64)
    speakers = set()
    for index in range(len(shards)):
        record = shards[index]
        if record["emotion"] < 0:
            continue
        exp = torch.from_numpy(normalizer.normalize("exp", record["exp"]))[None]  # (1, T, E)
        predicted = int(model.predict_proba(exp).argmax(-1))
        hit = predicted == record["emotion"]
        confusion[record["emotion"], predicted] += 1
        speakers.add(record["speaker"])
        correct["all"].append(hit)
        correct[f"intensity {record['intensity']}"].append(hit)
        correct[EMOTIONS[record["emotion"]]].append(hit)
    return {
        "checkpoint": str(checkpoint),
        "root": str(root),
        "split": split,
        "speakers": sorted(speakers),
        "clips": len(correct["all"]),
        "accuracy": {key: float(np.mean(hits)) for key, hits in sorted(correct.items())},
        "confusion": confusion.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the newest classifier checkpoint under runs/")
    parser.add_argument("--root", type=Path, default=Path("data/synth_small"))
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    if args.checkpoint is None:
        found = sorted(
            Path("runs").glob("**/*emotion_classifier*/**/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if not found:
            raise SystemExit(
                "no --checkpoint given and no classifier checkpoint under runs/: train one with "
                "`flowvq fit --config configs/tiny/emotion_classifier.yaml --data.init_args.root data/synth_small`"
            )
        args.checkpoint = found[-1]
    result = evaluate(args.checkpoint, args.root, args.split)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "emotion_classifier_quality.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Emotion classifier, per-clip accuracy on {args.root} / {args.split} "
        f"(speakers {', '.join(result['speakers'])}, {result['clips']} clips)",
        "",
        "| subset | accuracy |",
        "|---|---:|",
        *(f"| {key} | {value:.3f} |" for key, value in result["accuracy"].items()),
        "",
        "Trained with `flowvq fit --config configs/tiny/emotion_classifier.yaml --data.init_args.root "
        f"{args.root} --data.init_args.batch_size 32 --trainer.max_epochs 10` (best val checkpoint).",
        f"Command: `python benchmarks/emotion_classifier_quality.py --checkpoint {args.checkpoint} --root {args.root}`",
    ]
    (RESULTS / "emotion_classifier_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
