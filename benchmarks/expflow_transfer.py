"""ExpFlow emotion transfer, measured on SynthTalk's held-out speakers.

    flowvq fit --config configs/tiny/expflow.yaml --data.init_args.root data/synth_small
    flowvq fit --config configs/tiny/emotion_classifier.yaml --data.init_args.root data/synth_small
    python benchmarks/expflow_transfer.py --checkpoint checkpoints/tiny_expflow/last.ckpt \\
        --classifier <emotion classifier checkpoint> --data data/synth_small

For every test window (the reference) the reference's expression is mapped through the flow
to its latent code (:meth:`CoefficientFlow.encode`, with the reference's own audio), and
``--samples`` sequences are generated from that code for the audio of *another* test window
(another clip, usually another emotion). The emotion classifier then scores:

- ``transfer``: how often the generated sequences show the reference's emotion;
- ``label_free``: the same for sequences sampled for the same audio with no emotion label
  (a component drawn from the mixture weights): what chance gives;
- ``labelled``: sequences sampled with the reference's emotion label, for comparison;
- ``audio_clip``: how often the transferred sequences show the emotion of the clip whose
  audio drives them (the audio carries emotion in SynthTalk, as in MEAD).

Writes ``benchmarks/results/expflow_transfer.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="ExpFlow checkpoint")
    parser.add_argument("--classifier", type=Path, required=True, help="EmotionClassifier checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="SynthTalk root the models were trained on")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from flowvq.datamodules import CoefficientDataModule
    from flowvq.lightning_modules.coefficient_flow import CoefficientFlow
    from flowvq.lightning_modules.emotion_classifier import EmotionClassifier
    from flowvq.pipeline.flow_samples import check_module_against_data_card

    model = CoefficientFlow.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=False).eval()
    classifier = EmotionClassifier.load_from_checkpoint(args.classifier, map_location="cpu", weights_only=False)
    data = CoefficientDataModule(args.data, window=32, prev_frames=model.hparams.prev_frames, batch_size=64)
    check_module_against_data_card(model, data.card, args.data)
    data.setup("test")
    batches = list(data.test_dataloader())
    exp = torch.cat([b["exp"] for b in batches])
    mel = torch.cat([b["mel"] for b in batches])
    mask = torch.cat([b["mask"] for b in batches])
    emotion = torch.cat([b["emotion"] for b in batches])
    n = len(exp)
    counts = {"transfer": 0, "label_free": 0, "labelled": 0, "audio_clip": 0}
    scored = 0
    for i in range(n):
        j = (i + n // 2) % n  # another clip's audio
        valid = int(mask[i].sum())
        target = int(mask[j].sum())
        code = model.encode(exp[i, :valid], mel[i, :valid])
        audio = mel[j, :target]
        outputs = {
            "transfer": model.sample(audio, code=code, num_samples=args.samples, temperature=args.temperature, seed=i),
            "label_free": model.sample(audio, None, num_samples=args.samples, temperature=args.temperature, seed=i),
            "labelled": model.sample(
                audio, int(emotion[i]), num_samples=args.samples, temperature=args.temperature, seed=i
            ),
        }
        for name, x in outputs.items():
            predicted = classifier.predict_proba(x).argmax(-1)
            counts[name] += int((predicted == emotion[i]).sum())
            if name == "transfer":
                counts["audio_clip"] += int((predicted == emotion[j]).sum())
        scored += args.samples
    rates = {name: count / scored for name, count in counts.items()}
    command = "python benchmarks/expflow_transfer.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "references": n, "samples_per_reference": args.samples, **rates}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "expflow_transfer.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# ExpFlow emotion transfer (SynthTalk, held-out test speakers)",
        "",
        f"`{command}`: {n} reference windows x {args.samples} samples at temperature {args.temperature}, "
        "each generated for another test clip's audio; share of samples the emotion classifier puts in",
        "",
        "| the reference's emotion (transfer) | the reference's emotion (label-free samples) "
        "| the reference's emotion (labelled samples) | the audio clip's emotion (transfer) |",
        "|---|---|---|---|",
        f"| {rates['transfer']:.3f} | {rates['label_free']:.3f} | {rates['labelled']:.3f} | {rates['audio_clip']:.3f} |",
    ]
    (RESULTS / "expflow_transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
