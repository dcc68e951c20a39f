"""LSE-D and LSE-C: lip-sync error from SyncNet distances, as the field defines them.

For one clip, SyncNet gives the distance between each video window's embedding and the audio
windows shifted by ``-S..S`` frames: a table ``[W, 2S + 1]`` (windows x offsets). Following
syncnet_python (Chung & Zisserman 2016; the evaluation used by Wav2Lip and its successors):

- the distances are averaged over the windows, one mean per offset;
- **LSE-D** is the smallest of those means (lower is better);
- **LSE-C** (confidence) is their median minus that minimum (higher is better);
- the AV offset is the offset at the minimum.

Our SyncNet is trained here (no public weights are used) and its embeddings are unit vectors,
so distances lie in ``[0, 2]``: the figures are comparable between rows of one table, not
with the papers' SyncNet numbers.

References:
    Chung, Zisserman. Out of time: automated lip sync in the wild. ACCV workshops 2016.
    Prajwal et al. A lip sync expert is all you need (Wav2Lip). ACM MM 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["LipSyncScores", "sync_scores"]


def sync_scores(distances: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(lse_d, lse_c, offset)`` of one clip's distance table ``[W, O]`` (O = 2S + 1 offsets, centre = 0).

    Example:
        >>> d = torch.tensor([[3.0, 1.0, 2.0, 4.0, 5.0]])
        >>> [round(float(v), 3) for v in sync_scores(d)]
        [1.0, 2.0, -1.0]
    """
    if distances.dim() != 2 or distances.shape[1] % 2 == 0 or distances.shape[0] < 1:
        raise ValueError(f"distances must be [windows >= 1, odd number of offsets], got {tuple(distances.shape)}")
    mean = distances.double().mean(0)  # (O,)
    lse_d, index = mean.min(0)
    # torch.median returns the lower middle value for an even count; O is odd, so it is the median
    lse_c = mean.median() - lse_d
    offset = index - distances.shape[1] // 2
    return lse_d, lse_c, offset


class LipSyncScores(Metric):
    """Mean over clips of LSE-D and LSE-C (and the fraction of clips whose offset is within
    ``tolerance`` frames of 0).

    ``update`` takes one clip's distance table ``[W, O]`` or a batch ``[B, W, O]``.

    Example:
        >>> metric = LipSyncScores()
        >>> metric.update(torch.tensor([[3.0, 1.0, 2.0, 4.0, 5.0]]))
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'lse_d': 1.0, 'lse_c': 2.0, 'in_sync': 1.0}
    """

    full_state_update = False

    def __init__(self, tolerance: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tolerance = int(tolerance)
        for name in ("lse_d", "lse_c", "in_sync", "clips"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, distances: Tensor) -> None:
        for table in distances if distances.dim() == 3 else [distances]:
            lse_d, lse_c, offset = sync_scores(table)
            self.lse_d += lse_d
            self.lse_c += lse_c
            self.in_sync += float(abs(int(offset)) <= self.tolerance)
            self.clips += 1

    def compute(self) -> dict[str, Tensor]:
        clips = self.clips.clamp(min=1)
        nan = torch.tensor(float("nan"))
        if self.clips == 0:
            return {"lse_d": nan, "lse_c": nan, "in_sync": nan}
        return {
            "lse_d": (self.lse_d / clips).float(),
            "lse_c": (self.lse_c / clips).float(),
            "in_sync": (self.in_sync / clips).float(),
        }
