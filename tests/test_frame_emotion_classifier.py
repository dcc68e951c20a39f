"""The frame emotion classifier: per-clip accuracy, video probabilities, learning, one-batch fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from flowvq.datamodules import FrameDataModule
from flowvq.lightning_modules.frame_emotion_classifier import FrameEmotionClassifier, clip_accuracy


def test_clip_accuracy_takes_the_argmax_of_the_mean_probabilities():
    probabilities = torch.tensor(
        [
            [0.6, 0.4],  # clip a: frames vote 0, 1, 1 but the mean is (0.4, 0.6) -> 1
            [0.3, 0.7],
            [0.3, 0.7],
            [0.9, 0.1],  # clip b: label 1, predicted 0
            [0.5, 0.5],  # clip c: unknown emotion, left out
        ]
    )
    labels = torch.tensor([1, 1, 1, 1, -1])
    correct = clip_accuracy(probabilities, labels, ["a", "a", "a", "b", "c"])
    assert correct.tolist() == [1.0, 0.0]


def coloured_frames(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames whose emotion is the colour of a patch, on random backgrounds."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (size,), generator=generator)
    images = torch.rand(size, 3, 32, 32, generator=generator) * 0.6 - 0.3
    images[torch.arange(size), labels, 8:24, 8:24] = 1.0
    return images, labels


def test_learns_a_separable_task_and_scores_videos():
    torch.manual_seed(0)
    model = FrameEmotionClassifier(num_emotions=3, input_size=32, channels=(8, 16), dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        images, labels = coloured_frames(32, step)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    images, labels = coloured_frames(64, 999)
    assert (model.predict_proba(images).argmax(-1) == labels).float().mean() > 0.9
    # a video of label-2 frames as uint8 (T, H, W, 3)
    video = images[labels == 2][:6]
    frames = ((video.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    probabilities = model.video_probabilities(frames)
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5) and int(probabilities.argmax()) == 2
    with pytest.raises(ValueError, match="uint8"):
        model.video_probabilities(np.zeros((2, 8, 8, 3), dtype=np.float32))


def test_one_batch_fit_on_frames(random_dataset, tmp_path):
    data = FrameDataModule(random_dataset, batch_size=4, frames_per_clip=2)
    model = FrameEmotionClassifier(num_emotions=8, input_size=32, channels=(8, 16))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(model, datamodule=data)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters())), "every parameter is trained"
    assert "val/clip_accuracy" in trainer.logged_metrics


def test_needs_the_number_of_emotions():
    with pytest.raises(ValueError, match="fills it from the dataset card"):
        FrameEmotionClassifier()
