"""The first rung of the image side's sanity ladder: one fixed SynthTalk pair.

A codebook trained on one face reconstructs it; a VQIG on that codebook, trained on one
(source, target) pair, must then render the target as well as the codebook itself can: the
right code at every grid position, and a PSNR far above copying the source frame. If it cannot,
something between the coefficients and the codes is broken. The later rungs (one speaker, all
training speakers, held-out speakers) are training runs: ``benchmarks/vq_ladder.py``.
"""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from flowvq.data.synth.generate import simulate_clip
from flowvq.data.synth.presets import get_preset, plan_clips
from flowvq.data.synth.render import face_renderer
from flowvq.lightning_modules.vqgan import VQGAN, psnr
from flowvq.lightning_modules.vqig import VQIG

RES = 32
AE = dict(resolution=RES, channels=16, ch_mult=(1, 2, 2), num_res_blocks=1, codebook_size=32, codebook_dim=16)


def one_pair() -> dict[str, torch.Tensor]:
    """A closed-mouth source and an open-mouth target of one SynthTalk clip, as a batch of one."""
    spec = plan_clips(get_preset("tiny"), seed=0, frame_size=RES, frames=True)["train"][3]
    sim = simulate_clip(replace(spec, num_frames=40))
    images = face_renderer(spec.speaker, RES).render_clip(sim.exp, sim.pose)
    jaw = sim.truth["jaw_drive"]
    source, target = int(np.argmin(jaw)), int(np.argmax(jaw))

    def tensor(i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(images[i], dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1

    return {
        "source": tensor(source),
        "target": tensor(target),
        "image": tensor(target),
        "target_exp": torch.from_numpy(sim.exp[target])[None],
        "target_pose": torch.from_numpy(sim.pose[target])[None],
    }


def fit(model: L.LightningModule, items: list[dict], steps: int) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(items * (4 // len(items)), batch_size=4))


def test_vqig_reaches_the_codebook_bound_on_one_pair() -> None:
    torch.manual_seed(0)
    batch = one_pair()
    copy = psnr(batch["source"], batch["target"]).item()
    codebook = VQGAN(**AE, disc_start=10**6, lr=2e-3, log_images=0, kmeans_init=True)
    fit(codebook, [{"image": batch["target"][0]}, {"image": batch["source"][0]}], 150)
    codebook.eval()
    with torch.no_grad():
        bound = psnr(codebook(batch["target"])[0], batch["target"]).item()
    assert bound > copy + 5, f"the codebook reconstructs the target at {bound:.2f} dB, source copy {copy:.2f} dB"

    vqig = VQIG(
        exp_dim=16,
        pose_dim=6,
        codebook_config=AE,  # the stage-1 hyperparameters, as a checkpoint gives them
        channels=16,
        ch_mult=(1, 2, 2),
        feature_dim=32,
        motion_dim=32,
        num_heads=2,
        disc_start=10**6,
        lr=2e-3,
        log_images=0,
    )
    vqig.net.autoencoder.load_state_dict(codebook.autoencoder.state_dict())  # as load_codebook does from a file
    vqig.net.autoencoder.requires_grad_(False)
    vqig.codebook_loaded.fill_(True)
    fit(vqig, [{k: batch[k][0] for k in ("source", "target", "target_exp", "target_pose")}], 150)
    vqig.eval()
    with torch.no_grad():
        rendered = psnr(
            vqig(batch["source"], batch["target_exp"], batch["target_pose"])["image"], batch["target"]
        ).item()
    # the target's codes decode to the codebook's own reconstruction: that is the bound
    assert rendered > bound - 1.5, f"VQIG {rendered:.2f} dB, its codebook's bound {bound:.2f} dB"
    assert rendered > copy + 5, f"VQIG {rendered:.2f} dB, source copy {copy:.2f} dB"
