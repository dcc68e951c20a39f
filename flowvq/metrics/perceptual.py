"""LPIPS and FID from local weights only (never downloaded).

Both come from torchmetrics, which needs torchvision (LPIPS) and torch-fidelity (FID): the
``eval`` extra (``pip install 'flowvq[eval]'`` with a torch/torchvision pair that match).
They are imported here lazily, so the rest of flowvq never needs them.

``weights`` is a torch hub folder (the layout of ``$TORCH_HOME``, e.g. ``~/.cache/torch``) that
holds, under ``hub/checkpoints/``:

- ``alexnet-owt-7be5be79.pth``: torchvision's ImageNet AlexNet, LPIPS's backbone (the LPIPS
  linear layers ship inside torchmetrics);
- ``pt_inception-2015-12-05-6726825d.pth``: torch-fidelity's FID InceptionV3.

Where a file or a package is missing, :func:`perceptual_metrics` gives the reason instead of a
metric, and the evaluation table prints "not computed: ..." - never a number from other weights.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["FID_WEIGHTS", "LPIPS_WEIGHTS", "perceptual_metrics"]

LPIPS_WEIGHTS = "alexnet-owt-7be5be79.pth"
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


@contextmanager
def _torch_home(folder: Path):
    """Point torch hub at ``folder`` (so torchvision finds its weights there) for a while."""
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = previous


def _lpips(folder: Path) -> Any:
    path = folder / "hub" / "checkpoints" / LPIPS_WEIGHTS
    if not path.is_file():
        return f"not computed: no weights at {path}"
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except (ImportError, RuntimeError, OSError) as error:
        return f"not computed: LPIPS needs torchvision (pip install 'flowvq[eval]'): {error}"
    try:
        with _torch_home(folder):
            return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    except (ImportError, ModuleNotFoundError, RuntimeError, OSError) as error:
        return f"not computed: LPIPS could not load {path}: {error}"


def _fid(folder: Path) -> Any:
    path = folder / "hub" / "checkpoints" / FID_WEIGHTS
    if not path.is_file():
        return f"not computed: no weights at {path}"
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))
    except (ImportError, ModuleNotFoundError, RuntimeError, OSError) as error:
        return f"not computed: FID needs torch-fidelity (pip install 'flowvq[eval]') and {path}: {error}"


def perceptual_metrics(weights: str | Path | None) -> dict[str, Any]:
    """``{"lpips": metric or reason, "fid": metric or reason}`` from a torch hub folder.

    A metric takes float frames ``[N, 3, H, W]`` in [0, 1]: LPIPS ``update(generated, real)``,
    FID ``update(real, real=True)`` and ``update(generated, real=False)``.
    """
    if weights is None:
        reason = "not computed: no weights given (--weights DIR, a torch hub folder with hub/checkpoints/)"
        return {"lpips": reason, "fid": reason}
    folder = Path(weights).expanduser()
    return {"lpips": _lpips(folder), "fid": _fid(folder)}
