"""The PCA expression basis of the ``mediapipe-pca`` coefficient source."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ExpressionBasis"]


@dataclass
class ExpressionBasis:
    """PCA basis of pose-normalised landmark offsets from each speaker's neutral shape.

    ``exp = (shape - neutral[speaker] - offset_mean).ravel() @ components.T``.
    """

    reference: np.ndarray  # (N, 3) mean shape, crop units
    offset_mean: np.ndarray  # (N * 3,)
    components: np.ndarray  # (E, N * 3), orthonormal rows
    explained_variance: np.ndarray  # (E,)
    neutral: dict[str, np.ndarray]  # speaker -> (N, 3)

    @property
    def exp_dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, offsets: np.ndarray, reference: np.ndarray, neutral: dict[str, np.ndarray], exp_dim: int = 64):
        """Fit on train offsets ``(F, N, 3)`` (shape minus the speaker's neutral shape)."""
        flat = np.asarray(offsets, dtype=np.float64).reshape(len(offsets), -1)
        if exp_dim > min(flat.shape):
            raise ValueError(
                f"exp_dim={exp_dim} needs at least {exp_dim} train frames and {exp_dim} coordinates; "
                f"the train split has {flat.shape[0]} frames of {flat.shape[1]} coordinates. "
                "Lower --exp_dim or add train clips"
            )
        centre = flat.mean(0)
        _, sv, vt = np.linalg.svd(flat - centre, full_matrices=False)
        variance = sv**2 / max(1, len(flat) - 1)
        return cls(
            reference=np.asarray(reference, dtype=np.float64),
            offset_mean=centre,
            components=vt[:exp_dim],
            explained_variance=variance[:exp_dim],
            neutral={k: np.asarray(v, dtype=np.float64) for k, v in neutral.items()},
        )

    def encode(self, normalised: np.ndarray, speaker: str) -> np.ndarray:
        """Expression coefficients float32 ``(T, E)`` of pose-normalised shapes ``(T, N, 3)``."""
        if speaker not in self.neutral:
            raise KeyError(f"speaker {speaker!r} has no neutral shape in the basis (known: {len(self.neutral)})")
        offsets = (normalised - self.neutral[speaker]).reshape(len(normalised), -1) - self.offset_mean
        return (offsets @ self.components.T).astype(np.float32)

    def decode(self, exp: np.ndarray, speaker: str) -> np.ndarray:
        """Pose-normalised shapes ``(T, N, 3)`` from coefficients (inverse up to the dropped components)."""
        flat = np.asarray(exp, dtype=np.float64) @ self.components + self.offset_mean
        return flat.reshape(len(exp), -1, 3) + self.neutral[speaker]

    def save(self, path) -> None:
        speakers = sorted(self.neutral)
        np.savez(
            path,
            reference=self.reference,
            offset_mean=self.offset_mean,
            components=self.components,
            explained_variance=self.explained_variance,
            speakers=np.array(speakers),
            neutral=np.stack([self.neutral[s] for s in speakers]) if speakers else np.zeros((0, 0, 3)),
        )

    @classmethod
    def load(cls, path) -> ExpressionBasis:
        data = np.load(path)
        neutral = {str(s): data["neutral"][i] for i, s in enumerate(data["speakers"])}
        return cls(data["reference"], data["offset_mean"], data["components"], data["explained_variance"], neutral)
