"""A look at a dataset's frames: a PNG grid, one row per emotion, columns from mouth closed to open."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flowvq.data.card import DatasetCard, DatasetError
from flowvq.data.schema import EMOTIONS, unpack_frame
from flowvq.data.shards import open_split

__all__ = ["write_preview"]


def write_preview(
    root: str | Path,
    path: str | Path,
    split: str = "test",
    speaker: str | None = None,
    columns: int = 4,
    zoom: int = 1,
) -> Path:
    """Write a PNG grid of frames of one speaker: rows = emotions (highest intensity recorded),
    columns = frames ordered from the most closed to the most open mouth (``jaw_open``).

    Arguments:
        root: dataset root (with frames).
        path: the PNG to write.
        split: the split to take clips from.
        speaker: speaker id; the split's first speaker by default.
        columns: frames per row.
        zoom: integer upscaling of the grid (nearest neighbour), for small frames.
    """
    card = DatasetCard.load(root)
    if not card.has_frames:
        raise DatasetError(f"{str(root)!r} has no frames (written with --frames false): nothing to preview")
    speakers = card.speakers.get(split) or []
    speaker = speaker or (speakers[0] if speakers else None)
    if speaker not in speakers:
        raise ValueError(
            f"speaker {speaker!r} is not in the {split!r} split of {str(root)!r}: expected one of {speakers}"
        )
    jaw = card.exp_names.index("jaw_open") if "jaw_open" in card.exp_names else 0
    best: dict[int, dict] = {}
    for record in open_split(root, split):
        if record["speaker"] != speaker:
            continue
        emotion = int(record["emotion"])
        if emotion not in best or record["intensity"] > best[emotion]["intensity"]:
            best[emotion] = record
    size = card.frame_size
    label = 90
    grid = Image.new("RGB", (label + columns * size * zoom, len(best) * size * zoom), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for row, emotion in enumerate(sorted(best)):
        record = best[emotion]
        order = np.argsort(record["exp"][:, jaw], kind="stable")
        picks = order[np.linspace(0, len(order) - 1, columns).round().astype(int)]
        for column, index in enumerate(picks):
            frame = Image.open(io.BytesIO(unpack_frame(record, int(index)))).convert("RGB")
            frame = frame.resize((size * zoom, size * zoom), Image.NEAREST)
            grid.paste(frame, (label + column * size * zoom, row * size * zoom))
        text = f"{EMOTIONS[emotion]}\nlevel {record['intensity'] + 1}"
        draw.text((4, row * size * zoom + 4), text, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
