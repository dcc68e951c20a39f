"""GMTalker's head generator on one SynthTalk speaker, beside a VQIG trained on the same frames.

    python benchmarks/styleunet.py --data /tmp/h15/small64 --speaker M001 --steps 600 \\
        --emn runs/tiny_emotion_mapping/checkpoints/last.ckpt \\
        --codebook runs/faces_vqgan/checkpoints/last.ckpt

Parts (each writes its section of ``benchmarks/results/styleunet.json``; ``--parts`` picks):

- ``decoder``: the coefficient -> landmark decoder's error on the speaker's held-out clips
  (pixels at the frame size);
- ``signal``: how much of the emotion SynthTalk's frames carry beyond the condition maps: on
  the speaker's held-out clips, R^2 of the expression coefficients (and of the wrinkle
  strengths they draw) recovered linearly from the landmarks and pose, and the emotion
  accuracy of a logistic regression on the landmarks and pose against one on ``exp``;
- ``emn``: the Emotion Mapping Network checkpoint on the card's ``test`` speakers: accuracy of
  its emotion classifier on the style encoder's codes of real frames (per frame, per clip,
  per speaker, per emotion), and on EMN codes of each emotion (is a code mapped from e
  classified as e);
- ``quality``: a StyleUNetHead (``configs/tiny/styleunet.yaml``, GAN off, bf16-mixed) and VQIGs
  (``benchmarks/vq_ladder.py``'s, with and without the codebook) trained for the same steps
  and batch size on the speaker's training clips; scored on fixed pairs of its held-out clips
  (``FramePairDataModule`` ``speaker`` split = vq_ladder's): PSNR, SSIM, F-LMD and M-LMD
  (FaceMesh on the output against the record's landmarks, ``vq_quality.Landmarks``), the
  detector on the ground truth (the floor) and the source frame copied (the bar); teeth: the
  share of bright pixels inside the inner lips of open-mouth frames; pictures;
- ``emotion``: the same coefficients rendered under several emotion weightings: mean absolute
  difference to the neutral rendering per face region (mouth, forehead, eye corners,
  nasolabial, background);
- ``speed``: training steps/s in fp32 and bf16-mixed, rendering frames/s at 64/128/256 px.

Writes ``benchmarks/results/styleunet.{json,md}`` and ``styleunet_*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from vq_ladder import evaluation_pairs, to_batch, train_vqig  # noqa: E402
from vq_quality import Landmarks, lmd, mouth_crops, to_uint8  # noqa: E402

TINY = ROOT / "configs/tiny/styleunet.yaml"


def head_config(overrides: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(TINY.read_text())["model"]["init_args"]
    config.update(overrides)
    return config


def datamodule(args: argparse.Namespace, image_size: int | None = None, pairs: int = 4, batch: int | None = None):
    from flowvq.datamodules import FramePairDataModule

    return FramePairDataModule(
        args.data,
        batch_size=batch or args.batch_size,
        pairs_per_clip=pairs,
        speaker=args.speaker,
        image_size=image_size,
        seed=args.seed,
    )


def speaker_records(dm) -> dict[str, list[dict]]:
    from flowvq.data.shards import ClipShards

    shards: dict[str, ClipShards] = {}
    out: dict[str, list[dict]] = {}
    for part in ("train", "val"):
        out[part] = []
        for split, index in dm.speaker_clips()[part]:
            shards.setdefault(split, ClipShards(dm.root, split))
            out[part].append(shards[split][index])
    return out


class StepTimer:
    """Lightning callback: wall time of the training batches after ``skip`` warm-up batches."""

    def __init__(self, skip: int = 3) -> None:
        from lightning.pytorch.callbacks import Callback

        class _Timer(Callback):
            def __init__(inner) -> None:
                inner.times: list[float] = []

            def on_train_batch_end(inner, *a: Any) -> None:
                inner.times.append(time.perf_counter())

        self.callback = _Timer()
        self.skip = skip

    def steps_per_second(self) -> float:
        times = self.callback.times[self.skip :]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def train_head(args: argparse.Namespace, steps: int, precision: str = "bf16-mixed", timer: StepTimer | None = None):
    import lightning as L

    from flowvq.lightning_modules.styleunet import StyleUNetHead

    L.seed_everything(args.seed)
    dm = datamodule(args)
    card = dm.card
    head = StyleUNetHead(
        **head_config(
            {
                "exp_dim": card.exp_dim,
                "pose_dim": card.pose_dim,
                "num_emotions": len(card.emotion_names),
                "resolution": card.frame_size,
                "emn_checkpoint": str(args.emn) if args.emn else None,
                "disc_start": 10**9,  # GAN off, as vq_ladder trains the VQIG
                "lr": args.lr,
                "log_images": 0,
                "log_video_frames": 0,
            }
        )
    )
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer.callback] if timer else [],
    )
    start = time.perf_counter()
    trainer.fit(head, datamodule=dm)
    return head.eval(), time.perf_counter() - start, dm


# ---------------------------------------------------------------- parts


def part_decoder(args: argparse.Namespace) -> dict[str, Any]:
    from flowvq.lightning_modules.styleunet import StyleUNetHead

    dm = datamodule(args)
    dm.setup("fit")
    card = dm.card
    head = StyleUNetHead(exp_dim=card.exp_dim, pose_dim=card.pose_dim, resolution=card.frame_size)
    error = head.fit_decoder(dm)
    kind = head.hparams.landmark_decoder
    return {
        "kind": kind,
        "coefficient_source": card.coefficient_source,
        "speaker": args.speaker,
        "train_clips": len(dm.speaker_clips()["train"]),
        "held_out_clips": len(dm.speaker_clips()["val"]),
        "frame_size": card.frame_size,
        "held_out_error_px": error["all"],
        "held_out_mouth_error_px": error["mouth"],
    }


def part_emn(args: argparse.Namespace) -> dict[str, Any]:
    from flowvq.data.schema import EMOTIONS
    from flowvq.datamodules import FrameDataModule
    from flowvq.lightning_modules.emotion_mapping import EmotionMappingNetwork

    emn = EmotionMappingNetwork.load_from_checkpoint(args.emn, map_location="cpu").eval()
    dm = FrameDataModule(args.data, batch_size=32, frames_per_clip=4, image_size=emn.hparams.resolution)
    dm.setup("test")
    true, probabilities, mapped_true, mapped_predicted, clips, speakers = [], [], [], [], [], []
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            codes = emn.encoder(batch["image"])
            true.append(batch["emotion"])
            probabilities.append(emn.classifier(codes).softmax(-1))
            clips += list(batch["clip_id"])
            speakers += list(batch["speaker"])
            labels = torch.arange(len(EMOTIONS)).repeat(8)  # 8 codes per emotion per batch
            mapped = emn.mapped_codes(labels, generator)
            mapped_true.append(labels)
            mapped_predicted.append(emn.classifier(mapped).argmax(-1))
    true, probabilities = torch.cat(true), torch.cat(probabilities)
    predicted = probabilities.argmax(-1)
    mapped_true, mapped_predicted = torch.cat(mapped_true), torch.cat(mapped_predicted)
    per_emotion = {
        name: float((mapped_predicted[mapped_true == i] == i).float().mean()) for i, name in enumerate(EMOTIONS)
    }
    clip_correct = []  # a clip's emotion: the argmax of its frames' mean probabilities
    for clip in dict.fromkeys(clips):
        rows = torch.tensor([c == clip for c in clips])
        clip_correct.append(float(probabilities[rows].mean(0).argmax() == true[rows][0]))
    speaker_array = np.array(speakers)
    return {
        "checkpoint": str(args.emn),
        "encoder_head": emn.hparams.get("encoder_head", "mean"),
        "test_speakers": dm.card.speakers.get("test", []),
        "frames": int(true.numel()),
        "clips": len(clip_correct),
        "encoder_accuracy": float((true == predicted).float().mean()),
        "encoder_clip_accuracy": float(np.mean(clip_correct)),
        "encoder_accuracy_per_speaker": {
            s: float((true == predicted)[torch.from_numpy(speaker_array == s)].float().mean())
            for s in sorted(set(speakers))
        },
        "encoder_accuracy_per_emotion": {
            name: float((predicted[true == i] == i).float().mean())
            for i, name in enumerate(EMOTIONS)
            if (true == i).any()
        },
        "chance": float(torch.bincount(true).max() / true.numel()),
        "mapped_accuracy": float((mapped_true == mapped_predicted).float().mean()),
        "mapped_accuracy_per_emotion": per_emotion,
    }


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-8
    return [(x - mean) / std for x in (train, *others)]


def ridge(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, alpha: float = 1e-5) -> np.ndarray:
    """Linear least squares with a small ridge on standardised features."""
    a, b = _standardise(train_x, test_x)
    a, b = np.c_[a, np.ones(len(a))], np.c_[b, np.ones(len(b))]
    weights = np.linalg.solve(a.T @ a + alpha * len(a) * np.eye(a.shape[1]), a.T @ train_y)
    return b @ weights


def logistic_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Held-out accuracy of a multinomial logistic regression (L2 1e-3, L-BFGS) on standardised features."""
    a, b = (torch.from_numpy(x).float() for x in _standardise(train_x, test_x))
    labels = torch.from_numpy(train_y).long()
    layer = torch.nn.Linear(a.shape[1], int(max(train_y.max(), test_y.max())) + 1)
    optimiser = torch.optim.LBFGS(layer.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(a), labels) + 1e-3 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return float((layer(b).argmax(-1).numpy() == test_y).mean())


def part_signal(args: argparse.Namespace) -> dict[str, Any]:
    """How much of a frame's emotion the condition maps already carry, on one SynthTalk speaker.

    SynthTalk renders a frame from the speaker, ``exp`` and ``pose`` only, wrinkles included
    (``wrinkle_strengths(exp, age)``); the head's condition maps are drawn from landmarks
    decoded from the same ``exp`` and ``pose``. Whatever of ``exp`` a linear map recovers from
    the landmarks and pose is therefore in the condition maps, and the emotion label can add
    to the frame only what is not. Fitted on the speaker's training clips, scored on its
    held-out clips (the head's split), every frame.
    """
    from flowvq.data.schema import EMOTIONS
    from flowvq.data.synth.geometry import WRINKLE_GROUPS
    from flowvq.data.synth.render import wrinkle_strengths

    dm = datamodule(args)
    dm.setup("fit")
    records = speaker_records(dm)
    names = dm.card.exp_names

    def arrays(part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = records[part]
        points = np.concatenate([r["landmarks"].reshape(len(r["exp"]), -1) for r in rows])
        pose = np.concatenate([r["pose"] for r in rows])
        # the rotation mixes coordinates: landmarks, pose and their products with the angles
        geometry = np.concatenate([points, pose, (points[:, :, None] * pose[:, None, :3]).reshape(len(points), -1)], 1)
        exp = np.concatenate([r["exp"] for r in rows])
        emotion = np.concatenate([np.full(len(r["exp"]), int(r["emotion"])) for r in rows])
        return geometry.astype(np.float64), exp.astype(np.float64), emotion

    (g_fit, e_fit, y_fit), (g_held, e_held, y_held) = arrays("train"), arrays("val")

    def r2(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
        return 1 - ((prediction - truth) ** 2).mean(0) / np.maximum(truth.var(0), 1e-12)

    exp_hat = ridge(g_fit, e_fit, g_held)
    wrinkles, wrinkles_hat = wrinkle_strengths(e_held, 0.0), wrinkle_strengths(exp_hat, 0.0)
    return {
        "speaker": args.speaker,
        "frames_fit": int(len(e_fit)),
        "frames_held_out": int(len(e_held)),
        "exp_r2_from_landmarks": dict(zip(names, map(float, r2(exp_hat, e_held)))),
        "wrinkle_r2_from_landmarks": dict(zip(WRINKLE_GROUPS, map(float, r2(wrinkles_hat, wrinkles)))),
        "emotion_accuracy_from_landmarks": logistic_accuracy(g_fit, y_fit, g_held, y_held),
        "emotion_accuracy_from_exp": logistic_accuracy(e_fit, y_fit, e_held, y_held),
        "held_out_emotions": [EMOTIONS[i] for i in sorted(set(y_held.tolist()))],
        "majority": float(np.bincount(y_held).max() / len(y_held)),
    }


def teeth_share(images: torch.Tensor, landmarks: np.ndarray, open_mask: np.ndarray) -> float:
    """Share of bright (luma > 170) pixels inside the inner lips' box, over open-mouth frames."""
    from matplotlib.path import Path as Polygon

    pixels = to_uint8(images).astype(np.float32)
    luma = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (B, H, W)
    size = luma.shape[1]
    ys, xs = np.mgrid[0:size, 0:size]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], -1)
    shares = []
    for frame, points, is_open in zip(luma, landmarks, open_mask):
        if not is_open:
            continue
        inside = Polygon(points[60:68]).contains_points(centres).reshape(size, size)
        if inside.sum() >= 4:
            shares.append(float((frame[inside] > 170).mean()))
    return float(np.mean(shares)) if shares else float("nan")


def score_row(s: dict[str, list]) -> dict[str, Any]:
    """Summary of one model's per-batch scores (``f``, ``m`` landmark distances per frame, ``teeth``,
    and ``psnr`` / ``ssim`` tensors, empty for the ground-truth row): means over the frames."""
    f, m = np.concatenate(s["f"]), np.concatenate(s["m"])
    row = {
        "pairs": int(f.size),
        "detected": float(np.isfinite(f).mean()),
        "f_lmd": float(np.nanmean(f)),
        "m_lmd": float(np.nanmean(m)),
        "teeth_share_open_mouths": float(np.nanmean(s["teeth"])),
    }
    if s["psnr"]:
        row |= {"psnr": float(torch.cat(s["psnr"]).mean()), "ssim": float(torch.cat(s["ssim"]).mean())}
    return row


def part_quality(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    from flowvq.lightning_modules.vqgan import image_grid, psnr
    from flowvq.nn.condition_maps import contour_colours
    from flowvq.nn.perceptual import ssim

    head, head_seconds, dm = train_head(args, args.steps)
    torch.save(head.state_dict(), args.work / "styleunet_head.pt")
    records = speaker_records(dm)
    vqigs = {}
    seconds = {"styleunet": head_seconds}
    for name, model_args in (("vqig", []), ("vqig no codebook", ["use_codebook=false"])):
        if args.codebook is None:
            break
        vqigs[name], seconds[name] = train_vqig(
            args.data, args.codebook, records["train"], args.steps, args.batch_size, 5e-4, 0.0, args.seed, model_args
        )
    eval_dm = datamodule(args, pairs=args.eval_pairs)
    pairs = evaluation_pairs(records["val"], eval_dm.make_sampler("test"))
    detector = Landmarks()
    names = ["styleunet", *vqigs, "source copy", "ground truth"]
    scores: dict[str, dict[str, list]] = {n: {"psnr": [], "ssim": [], "f": [], "m": [], "teeth": []} for n in names}
    examples = None
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for start in range(0, len(pairs), 32):
            chunk = pairs[start : start + 32]
            batch = to_batch(chunk)
            emotion = torch.tensor([int(p["emotion"]) for p in chunk])
            truth = np.stack([p["target_landmarks"] for p in chunk])
            z = torch.randn(len(chunk), head.hparams.latent_dim, generator=generator)
            out = head(batch["target_exp"], batch["target_pose"], head.emotion_weights(emotion), z)
            outputs = {"styleunet": out["image"].float().clamp(-1, 1)}
            for name, vqig in vqigs.items():
                outputs[name] = vqig(batch["source"], batch["target_exp"], batch["target_pose"])["image"].clamp(-1, 1)
            outputs["source copy"] = batch["source"]
            outputs["ground truth"] = batch["target"]
            height = truth[:, 66, 1] - truth[:, 62, 1]
            open_mouth = height > 0.05 * batch["target"].shape[-1]  # inner lips apart by 5 % of the frame
            for name, image in outputs.items():
                if name != "ground truth":
                    scores[name]["psnr"].append(psnr(image, batch["target"]))
                    scores[name]["ssim"].append(ssim(image.float(), batch["target"]))
                f, m = lmd(detector(to_uint8(image)), truth)
                scores[name]["f"].append(f)
                scores[name]["m"].append(m)
                scores[name]["teeth"].append(teeth_share(image, truth, open_mouth))
            if examples is None:
                examples = (batch, outputs, out["condition"], torch.from_numpy(truth), open_mouth)
    rows = []
    if args.codebook is None:
        # no codebook, no VQIG rows trained here: keep the previous run's (marked with its command)
        previous = results.get("quality", {})
        for row in previous.get("rows", []):
            if row["model"].startswith("vqig"):
                rows.append({**row, "from_run": row.get("from_run", previous.get("command"))})
    for name, s in scores.items():
        row = {"model": name, **score_row(s)}
        if name in seconds:
            row["train_seconds"] = round(seconds[name], 1)
        rows.append(row)
    batch, outputs, condition, truth, open_mouth = examples
    count = 8
    order = np.argsort(-(truth[:, 66, 1] - truth[:, 62, 1]).numpy())[:count]  # widest-open mouths first
    pick = torch.from_numpy(order.copy())
    frame_rows = [contour_colours(condition)[pick], batch["target"][pick], outputs["styleunet"][pick]]
    frame_rows += [outputs[n][pick] for n in vqigs] + [batch["source"][pick]]
    labels = ["condition maps", "target", "StyleUNet", *vqigs, "source"]
    save_png(image_grid(frame_rows, count), args.out / "styleunet_frames.png", labels)
    mouth_rows = [mouth_crops(batch["target"][pick], truth[pick])]
    mouth_rows += [mouth_crops(outputs[n][pick], truth[pick]) for n in ["styleunet", *vqigs]]
    save_png(image_grid(mouth_rows, count), args.out / "styleunet_mouths.png", ["target", "StyleUNet", *vqigs])
    return {
        "speaker": args.speaker,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_clips": len(records["train"]),
        "held_out_clips": len(records["val"]),
        "eval_pairs_per_clip": args.eval_pairs,
        "emn_checkpoint": str(args.emn) if args.emn else None,
        "codebook": str(args.codebook) if args.codebook else None,
        "rows": rows,
    }


def part_emotion(args: argparse.Namespace) -> dict[str, Any]:
    """Same coefficients under several emotion weightings; per-region mean |difference| to neutral."""
    from flowvq.data.schema import EMOTIONS
    from flowvq.lightning_modules.styleunet import StyleUNetHead
    from flowvq.lightning_modules.vqgan import image_grid

    state_path = args.work / "styleunet_head.pt"
    if not state_path.is_file():
        raise SystemExit(f"{state_path} is missing: run --parts quality first (it trains the head)")
    dm = datamodule(args)
    dm.setup("fit")
    card = dm.card
    head = StyleUNetHead(
        **head_config(
            {
                "exp_dim": card.exp_dim,
                "pose_dim": card.pose_dim,
                "num_emotions": len(card.emotion_names),
                "resolution": card.frame_size,
            }
        )
    )
    head.load_state_dict(torch.load(state_path, map_location="cpu"))
    head.eval()
    records = speaker_records(dm)["val"]
    norm = dm.normalizer
    renders: dict[str, list[torch.Tensor]] = {}
    landmarks = []
    emotions = ["neutral", "happy", "angry", "surprised", "sad"]
    for record in records:
        exp = torch.as_tensor(norm.normalize("exp", record["exp"]), dtype=torch.float32)
        pose = torch.as_tensor(norm.normalize("pose", record["pose"]), dtype=torch.float32)
        for emotion in emotions:
            renders.setdefault(emotion, []).append(head.render(exp, pose, emotion, seed=0))
        landmarks.append(record["landmarks"] * (head.hparams.resolution / card.frame_size))
    frames = {k: torch.cat(v) for k, v in renders.items()}
    points = np.concatenate(landmarks)
    masks = region_masks(points, head.hparams.resolution)
    result: dict[str, Any] = {"frames": int(len(points)), "regions": {}, "emotions": emotions}
    base = to_uint8(frames["neutral"]).astype(np.float32)
    for emotion in emotions[1:]:
        diff = np.abs(to_uint8(frames[emotion]).astype(np.float32) - base).mean(-1)  # (T, H, W)
        result["regions"][emotion] = {
            region: float(diff[mask].mean()) if mask.any() else float("nan") for region, mask in masks.items()
        }
    # the same z, emotion weights from the EMN's code space: also how far the codes themselves are
    with torch.no_grad():
        z = torch.randn(1, head.hparams.latent_dim, generator=torch.Generator().manual_seed(0))
        codes = {e: head.style(head._weights(e, 1), z) for e in emotions}  # what the StyleUNet sees
    result["style_code_distance_to_neutral"] = {
        e: float((codes[e] - codes["neutral"]).norm()) for e in emotions[1:]
    } | {"neutral_norm": float(codes["neutral"].norm())}
    picks = np.linspace(0, len(points) - 1, 8).round().astype(int)
    rows = [frames[e][picks] for e in emotions]
    diff_row = ((frames["happy"][picks] - frames["neutral"][picks]).abs() * 4 - 1).clamp(-1, 1)
    save_png(
        image_grid([*rows, diff_row], 8),
        args.out / "styleunet_emotions.png",
        [*emotions, "|happy - neutral| x 4"],
    )
    result["names"] = list(EMOTIONS)
    return result


def region_masks(points: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Boolean masks ``(T, H, W)`` of face regions from ground-truth landmarks ``(T, 68, 2)``."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    masks: dict[str, list[np.ndarray]] = {
        k: [] for k in ("mouth", "forehead", "eye corners", "nasolabial", "background")
    }
    for p in points:
        box = lambda x0, x1, y0, y1: (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)  # noqa: E731
        inner = p[60:68]
        masks["mouth"].append(box(inner[:, 0].min(), inner[:, 0].max(), inner[:, 1].min(), inner[:, 1].max()))
        brows = p[17:27]
        eye_to_brow = p[36:48, 1].mean() - brows[:, 1].mean()
        masks["forehead"].append(
            box(brows[:, 0].min(), brows[:, 0].max(), brows[:, 1].min() - 1.5 * eye_to_brow, brows[:, 1].min() - 1)
        )
        r = 0.06 * size
        masks["eye corners"].append(
            box(p[36, 0] - 2 * r, p[36, 0], p[36, 1] - r, p[36, 1] + r)
            | box(p[45, 0], p[45, 0] + 2 * r, p[45, 1] - r, p[45, 1] + r)
        )
        masks["nasolabial"].append(
            box(p[48, 0] - r, p[31, 0], p[31, 1], p[48, 1]) | box(p[35, 0], p[54, 0] + r, p[35, 1], p[54, 1])
        )
        face = box(p[:, 0].min(), p[:, 0].max(), p[:, 1].min() - 0.3 * size, p[:, 1].max())
        masks["background"].append(~face & (ys < 0.25 * size))
    return {k: np.stack(v) for k, v in masks.items()}


def part_speed(args: argparse.Namespace) -> dict[str, Any]:
    from flowvq.lightning_modules.styleunet import StyleUNetHead

    out: dict[str, Any] = {"threads": torch.get_num_threads(), "train_steps_per_second": {}, "render": []}
    for precision in ("32-true", "bf16-mixed"):
        timer = StepTimer(skip=3)
        train_head(args, args.speed_steps, precision, timer)
        out["train_steps_per_second"][precision] = timer.steps_per_second()
    paper = yaml.safe_load((ROOT / "configs/styleunet.yaml").read_text())["model"]["init_args"]
    architectures = {
        "tiny": {k: head_config({})[k] for k in ("channels", "ch_mult", "max_channels")},
        "paper": {k: paper[k] for k in ("channels", "ch_mult", "max_channels")},
    }
    for name, arch in architectures.items():
        for size in (64, 128, 256):
            dm = datamodule(args, image_size=size)
            dm.setup("fit")
            card = dm.card
            head = StyleUNetHead(
                exp_dim=card.exp_dim, pose_dim=card.pose_dim, resolution=size, **arch, **emn_arch(), log_video_frames=0
            )
            head.fit_decoder(dm)
            record = speaker_records(dm)["val"][0]
            exp = torch.as_tensor(dm.normalizer.normalize("exp", record["exp"]), dtype=torch.float32)
            pose = torch.as_tensor(dm.normalizer.normalize("pose", record["pose"]), dtype=torch.float32)
            exp, pose = exp.repeat(2, 1)[:100], pose.repeat(2, 1)[:100]
            head.render(exp[:16], pose[:16], "neutral")  # warm-up
            start = time.perf_counter()
            head.render(exp, pose, "neutral", batch_size=16)
            fps = len(exp) / (time.perf_counter() - start)
            out["render"].append(
                {
                    "architecture": name,
                    "resolution": size,
                    "parameters": sum(p.numel() for p in head.net.parameters()),
                    "frames_per_second": fps,
                    "real_time_factor": fps / 25.0,
                }
            )
            print(out["render"][-1], flush=True)
    return out


def emn_arch() -> dict[str, Any]:
    config = head_config({})
    return {k: config[k] for k in ("latent_dim", "style_dim", "hidden_dim", "shared_layers", "branch_layers")}


def save_png(grid: torch.Tensor, path: Path, labels: list[str]) -> None:
    image = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(path)
    path.with_suffix(".txt").write_text("rows, top to bottom: " + ", ".join(labels) + "\n")


# ---------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    lines = ["# StyleUNet head generator (GMTalker) on one SynthTalk speaker", ""]
    for part, entry in result.items():
        if isinstance(entry, dict) and "command" in entry:
            lines.append(f"- {part}: `{entry['command']}`")
    lines.append("")
    if "decoder" in result:
        d = result["decoder"]
        lines += [
            "## Coefficient -> landmark decoder",
            "",
            f"{d['kind']} decoder ({d['coefficient_source']}), speaker {d['speaker']}: fitted on {d['train_clips']} clips, "
            f"held-out error {d['held_out_error_px']:.2f} px over all 68 points, {d['held_out_mouth_error_px']:.2f} px "
            f"on the mouth ({d['held_out_clips']} held-out clips, {d['frame_size']} px frames).",
            "",
        ]
    if "signal" in result:
        g = result["signal"]
        low = {k: v for k, v in g["exp_r2_from_landmarks"].items() if v < 0.95}
        lines += [
            "## What the condition maps already carry",
            "",
            f"Speaker {g['speaker']}, every frame ({g['frames_fit']} fitted, {g['frames_held_out']} held out). "
            "SynthTalk draws a frame from the speaker, `exp` and `pose` only (wrinkles included); the condition "
            "maps are drawn from landmarks decoded from the same `exp` and `pose`. A linear map of the landmarks "
            "and pose recovers each `exp` dimension with held-out R^2 >= 0.95 except "
            + ", ".join(f"{k} {v:.2f}" for k, v in low.items())
            + ". Wrinkle strengths recomputed from the recovered `exp`: "
            + ", ".join(f"{k} {v:.2f}" for k, v in g["wrinkle_r2_from_landmarks"].items())
            + f". Emotion per frame from landmarks and pose {g['emotion_accuracy_from_landmarks']:.3f}, from `exp` "
            f"{g['emotion_accuracy_from_exp']:.3f} (majority {g['majority']:.3f}; logistic regressions). "
            "`gaze_x`/`gaze_y` move the irises, which have no landmark and draw no wrinkle. So the condition maps "
            "already fix every wrinkle but part of the crow's feet: on this data the emotion label has little to "
            "add to a frame beyond its geometry.",
            "",
        ]
    if "emn" in result:
        e = result["emn"]
        per = ", ".join(f"{k} {v:.2f}" for k, v in e["mapped_accuracy_per_emotion"].items())
        lines += [
            "## Emotion Mapping Network (test speakers)",
            "",
            f"Style encoder head: {e.get('encoder_head', 'mean')}. Classifier on the style encoder's codes of "
            f"{e['frames']} real frames of the test speakers {', '.join(e['test_speakers'])}: accuracy "
            f"{e['encoder_accuracy']:.3f} (majority class {e['chance']:.3f})",
        ]
        if "encoder_clip_accuracy" in e:
            lines[-1] += (
                f"; per clip (mean of its {e['frames'] // e['clips']} frames' probabilities) "
                f"{e['encoder_clip_accuracy']:.3f}; per speaker "
                + ", ".join(f"{k} {v:.2f}" for k, v in e["encoder_accuracy_per_speaker"].items())
                + "; per emotion "
                + ", ".join(f"{k} {v:.2f}" for k, v in e["encoder_accuracy_per_emotion"].items())
            )
        lines += [lines.pop() + f". EMN codes of emotion e classified as e: {e['mapped_accuracy']:.3f} ({per}).", ""]
        if "trained_with" in e:
            lines += [f"The EMN checkpoint: `{e['trained_with']}`.", ""]
    if "quality" in result:
        q = result["quality"]
        lines += [
            "## Quality on the speaker's held-out clips",
            "",
            f"Speaker {q['speaker']}: {q['train_clips']} training clips, {q['held_out_clips']} held-out clips x "
            f"{q['eval_pairs_per_clip']} fixed pairs; every model trained {q['steps']} steps at batch "
            f"{q['batch_size']} (GAN off, bf16-mixed). F-LMD / M-LMD: FaceMesh on the output vs the record's "
            "landmarks (px at 64); the ground-truth row is the detector's own error (the floor). Teeth: share of "
            "bright pixels (luma > 170) inside the true inner-lip polygon of open-mouth frames.",
            "",
            "| model | PSNR dB | SSIM | F-LMD | M-LMD | detected | teeth share | train s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in q["rows"]:
            psnr = f"{r['psnr']:.2f}" if "psnr" in r else "-"
            ssim = f"{r['ssim']:.3f}" if "ssim" in r else "-"
            model = r["model"] + (" (earlier run, see below)" if "from_run" in r else "")
            lines.append(
                f"| {model} | {psnr} | {ssim} | {r['f_lmd']:.2f} | {r['m_lmd']:.2f} | {r['detected']:.2f} | "
                f"{r['teeth_share_open_mouths']:.3f} | {r.get('train_seconds', '-')} |"
            )
        lines.append("")
        carried = {r["from_run"] for r in q["rows"] if "from_run" in r}
        for command in carried:
            lines += [
                "Rows marked 'earlier run' were not retrained with this head (no `--codebook`): same data, "
                f"speaker, steps, batch, seed and pairs, from `{command}`.",
                "",
            ]
    if "emotion" in result:
        em = result["emotion"]
        regions = list(next(iter(em["regions"].values())))
        lines += [
            "## Emotion-specific detail",
            "",
            f"The held-out clips' coefficients ({em['frames']} frames) rendered under each emotion (one-hot weights, "
            "same EMN noise): mean |difference| to the neutral rendering (0..255) per region.",
            "",
            "| emotion | " + " | ".join(regions) + " | style code distance (unit-RMS codes) |",
            "|---|" + "---|" * (len(regions) + 1),
        ]
        for emotion, values in em["regions"].items():
            lines.append(
                f"| {emotion} | "
                + " | ".join(f"{values[r]:.2f}" for r in regions)
                + f" | {em['style_code_distance_to_neutral'][emotion]:.2f} |"
            )
        lines.append("")
    if "speed" in result:
        s = result["speed"]
        lines += [
            "## Speed (CPU)",
            "",
            "Training steps/s (tiny config, batch "
            f"{result.get('quality', {}).get('batch_size', '-')}, {s['threads']} threads): "
            + ", ".join(f"{k} {v:.2f}" for k, v in s["train_steps_per_second"].items()),
            "",
            "| architecture | px | parameters | frames/s | x real time (25 fps) |",
            "|---|---|---|---|---|",
        ]
        for r in s["render"]:
            lines.append(
                f"| {r['architecture']} | {r['resolution']} | {r['parameters'] / 1e6:.2f} M | "
                f"{r['frames_per_second']:.1f} | {r['real_time_factor']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a SynthTalk root with frames (64 px)")
    parser.add_argument("--speaker", default="M001")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--emn", type=Path, help="EmotionMappingNetwork checkpoint (tiny architecture)")
    parser.add_argument("--codebook", type=Path, help="VQGAN checkpoint for the VQIG rows (vq_ladder's)")
    parser.add_argument("--eval-pairs", type=int, default=16, help="fixed pairs per held-out clip")
    parser.add_argument("--speed-steps", type=int, default=25)
    parser.add_argument("--parts", nargs="*", default=["decoder", "signal", "emn", "quality", "emotion", "speed"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/styleunet_bench"), help="scratch (the trained head)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.out / "styleunet.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    command = "python benchmarks/styleunet.py " + " ".join(sys.argv[1:])
    parts = {
        "decoder": part_decoder,
        "signal": part_signal,
        "emn": part_emn,
        "quality": None,
        "emotion": part_emotion,
        "speed": part_speed,
    }
    for part in args.parts:
        if part not in parts:
            raise SystemExit(f"--parts {part!r}: expected some of {list(parts)}")
        start = time.perf_counter()
        entry = part_quality(args, result) if part == "quality" else parts[part](args)
        entry["command"] = command
        entry["seconds"] = round(time.perf_counter() - start, 1)
        entry["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result[part] = entry
        path.write_text(json.dumps(result, indent=2))
        (args.out / "styleunet.md").write_text(markdown(result))
        print(f"{part} done in {entry['seconds']} s", flush=True)
    print(markdown(result))


if __name__ == "__main__":
    main()
