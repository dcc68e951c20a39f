"""LightningDataModules over the litdata clip shards of a dataset root."""

from flowvq.datamodules.audio_visual import AudioVisualDataModule
from flowvq.datamodules.base import ClipDataModule, Normalizer
from flowvq.datamodules.coefficients import CoefficientDataModule
from flowvq.datamodules.frames import FrameDataModule, FramePairDataModule

__all__ = [
    "AudioVisualDataModule",
    "ClipDataModule",
    "CoefficientDataModule",
    "FrameDataModule",
    "FramePairDataModule",
    "Normalizer",
]
