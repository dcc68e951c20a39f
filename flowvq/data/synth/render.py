"""SynthTalk rasteriser: face crops from the deformed 68-point template under a head pose.

Drawn with PIL at twice the crop size and reduced (antialiasing): background, shoulders,
neck, hair, ears, a textured and shaded skin (a per-speaker skin image in face coordinates,
warped by the head pose), expression wrinkles, eyes with iris and lids, brows, nose, lips and
a mouth interior whose teeth and tongue show as the jaw opens. All geometry of a clip is
built and projected at once (numpy); the per-frame work is PIL drawing only.

Wrinkles follow the expressions that cause them (and deepen with the speaker's age):
forehead lines with ``brow_raise``, glabella lines with ``brow_lower`` / ``frown``,
nasolabial folds with ``smile`` / ``cheek_raise`` (the image-right one also with
``lip_asym``), crow's feet with ``squint`` / ``smile``, nose lines with ``nose_wrinkle``.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw

from flowvq.data.synth.face import FACE_SCALE, deform, project, speaker_shape
from flowvq.data.synth.geometry import WRINKLE_GROUPS, clip_geometry, skin_image
from flowvq.data.synth.motion import EXP_INDEX
from flowvq.data.synth.presets import SpeakerSpec

__all__ = ["SUPERSAMPLE", "FaceRenderer", "face_renderer", "wrinkle_strengths"]

SUPERSAMPLE = 2


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(v * factor, 0, 255)) for v in rgb)  # type: ignore[return-value]


def wrinkle_strengths(exp: np.ndarray, age: float) -> np.ndarray:
    """Opacity in 0..0.9 of each of ``WRINKLE_GROUPS`` for expressions [..., E] -> [..., G]."""
    e = {name: np.asarray(exp)[..., index] for name, index in EXP_INDEX.items()}
    values = {
        "forehead": 0.2 * age + 1.1 * e["brow_raise"],
        "glabella": 0.1 * age + 1.1 * np.maximum(e["brow_lower"], 0.7 * e["frown"]),
        "nasolabial_left": 0.25 * age + np.maximum(e["smile"], e["cheek_raise"]),
        "nasolabial_right": 0.25 * age + np.maximum(np.maximum(e["smile"], e["cheek_raise"]), e["lip_asym"]),
        "crows_feet": 0.15 * age + np.maximum(np.maximum(e["squint"], 0.8 * e["smile"]), 0.6 * e["cheek_raise"]),
        "nose": 1.2 * e["nose_wrinkle"],
    }
    return np.clip(np.stack([values[name] for name in WRINKLE_GROUPS], -1) - 0.05, 0.0, 0.9)


class FaceRenderer:
    """Renders one speaker's face at ``size`` x ``size`` pixels (see the module docstring)."""

    def __init__(self, speaker: SpeakerSpec, size: int) -> None:
        self.speaker = speaker
        self.size = size
        self.canvas = size * SUPERSAMPLE
        self.unit = self.canvas / 128.0  # line width unit
        self.shape = speaker_shape(speaker.seed)
        self.skin_image, self.skin_origin, self.skin_res = skin_image(speaker, self.canvas * FACE_SCALE)
        c = self.canvas
        ramp = np.linspace(1.1, 0.8, c)[:, None, None] * np.asarray(speaker.background, dtype=np.float64)
        self.background = Image.fromarray(np.clip(np.broadcast_to(ramp, (c, c, 3)), 0, 255).astype(np.uint8))
        self.dark = Image.new("RGB", (c, c), _shade(speaker.skin, 0.5))
        self.light = Image.new("RGB", (c, c), _shade(speaker.skin, 1.12))
        self.sclera = Image.new("RGB", (c, c), (236, 232, 226))
        self.mouth = Image.new("RGB", (c, c), (55, 18, 22))
        self.colours = {
            "hair": speaker.hair,
            "brow": _shade(speaker.hair, 0.8),
            "neck": _shade(speaker.skin, 0.78),
            "ear": _shade(speaker.skin, 0.88),
            "nostril": _shade(speaker.skin, 0.42),
            "fold": _shade(speaker.skin, 0.7),
            "crease": _shade(speaker.skin, 0.72),
            "lower_lid": _shade(speaker.skin, 0.6),
            "lash": _shade(speaker.hair, 0.5) if sum(speaker.hair) < 300 else (40, 30, 28),
            "upper_lip": _shade(speaker.lips, 0.85),
            "lip_line": _shade(speaker.lips, 0.45),
        }

    def landmarks(self, exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Projected 68 landmarks in crop pixels, [T, 68, 2] for exp [T, E], pose [T, 6]."""
        return project(deform(self.shape, exp), pose, self.size).astype(np.float32)

    def render(self, exp: np.ndarray, pose: np.ndarray, wrinkles: bool = True) -> Image.Image:
        """One frame (RGB) for expression [E] and pose [6]."""
        return self.render_clip(np.asarray(exp)[None], np.asarray(pose)[None], wrinkles)[0]

    def render_clip(self, exp: np.ndarray, pose: np.ndarray, wrinkles: bool = True) -> list[Image.Image]:
        """Frames (RGB, ``size`` x ``size``) for expressions [T, E] and poses [T, 6]."""
        exp = np.asarray(exp, dtype=np.float64)
        pose = np.asarray(pose, dtype=np.float64)
        head, body, slices = clip_geometry(self.shape, self.speaker, exp)
        flat = project(head, pose, self.canvas).reshape(len(exp), -1)  # (T, 2 * points)
        body_pose = pose * [0, 0, 0, 0.5, 0.5, 0] + [0, 0, 0, 0, 0, 1]
        body_flat = project(body, body_pose, self.canvas).reshape(len(exp), -1)
        alpha = wrinkle_strengths(exp, self.speaker.age) if wrinkles else np.zeros((len(exp), len(WRINKLE_GROUPS)))
        # skin texture: per frame, the affine map canvas -> skin image that best fits the rigid anchors
        start, stop = slices["anchors"]
        uv = flat[:, 2 * start : 2 * stop].reshape(len(exp), -1, 2)
        design = np.concatenate([uv, np.ones(uv.shape[:2] + (1,))], -1)  # (T, n, 3)
        target = (self._anchor_xy - self.skin_origin) * self.skin_res  # (n, 2) skin-image pixels
        gram = np.einsum("tni,tnj->tij", design, design)
        skin_maps = np.linalg.solve(gram, np.einsum("tni,nj->tij", design, target))  # (T, 3, 2)
        return [
            self._frame(flat[t].tolist(), body_flat[t].tolist(), slices, alpha[t], skin_maps[t])
            for t in range(len(exp))
        ]

    def _frame(self, row: list, body: list, slices: dict, alpha: np.ndarray, skin_map: np.ndarray) -> Image.Image:
        def xy(name: str) -> list[float]:
            start, stop = slices[name]
            return row[2 * start : 2 * stop]

        c, w, col = self.canvas, self.unit, self.colours
        line = max(1, int(round(w)))
        image = self.background.copy()
        draw = ImageDraw.Draw(image)
        draw.polygon(body[: len(body) // 2], fill=self.speaker.clothes)
        draw.polygon(body[len(body) // 2 :], fill=col["neck"])
        draw.polygon(xy("hair_back"), fill=col["hair"])
        draw.polygon(xy("ear_left"), fill=col["ear"])
        draw.polygon(xy("ear_right"), fill=col["ear"])
        # skin: the speaker's skin image warped by the head pose, inside the face outline
        mask = Image.new("L", (c, c), 0)
        ImageDraw.Draw(mask).polygon(xy("outline"), fill=255)
        box = mask.getbbox()
        if box:
            image.paste(self._warped_skin(skin_map, box), box, mask.crop(box))
        if alpha.max() > 0.02:
            self._wrinkles(image, xy, alpha)
        draw = ImageDraw.Draw(image)
        draw.polygon(xy("hair_front"), fill=col["hair"])
        # eyes: sclera, iris, pupil and glint inside the lids
        mask = Image.new("L", (c, c), 0)
        draw_mask = ImageDraw.Draw(mask)
        draw_mask.polygon(xy("eye_left"), fill=255)
        draw_mask.polygon(xy("eye_right"), fill=255)
        box = mask.getbbox()
        if box:
            layer = self.sclera.crop(box)
            draw_layer = ImageDraw.Draw(layer)
            shift = lambda points: [v - box[k % 2] for k, v in enumerate(points)]  # noqa: E731
            for side in ("left", "right"):
                draw_layer.polygon(shift(xy(f"iris_{side}")), fill=self.speaker.iris)
                draw_layer.polygon(shift(xy(f"pupil_{side}")), fill=(12, 10, 10))
                draw_layer.polygon(shift(xy(f"glint_{side}")), fill=(250, 250, 250))
            image.paste(layer, box, mask.crop(box))
        for side in ("left", "right"):
            draw.line(xy(f"crease_{side}"), fill=col["crease"], width=line, joint="curve")
            draw.line(xy(f"lower_lid_{side}"), fill=col["lower_lid"], width=line, joint="curve")
            draw.line(xy(f"upper_lid_{side}"), fill=col["lash"], width=max(1, int(round(1.8 * w))), joint="curve")
            draw.polygon(xy(f"brow_{side}"), fill=col["brow"])
            draw.polygon(xy(f"nostril_{side}"), fill=col["nostril"])
            draw.line(xy(f"wing_{side}"), fill=col["fold"], width=line, joint="curve")
        # lips, then the mouth interior (tongue and teeth) inside the inner lip contour
        draw.polygon(xy("lower_lip"), fill=self.speaker.lips)
        draw.polygon(xy("upper_lip"), fill=col["upper_lip"])
        mask = Image.new("L", (c, c), 0)
        ImageDraw.Draw(mask).polygon(xy("inner_mouth"), fill=255)
        box = mask.getbbox()
        if box and box[3] - box[1] > 1:  # a closed mouth shows no interior
            layer = self.mouth.crop(box)
            draw_layer = ImageDraw.Draw(layer)
            shift = lambda points: [v - box[k % 2] for k, v in enumerate(points)]  # noqa: E731
            draw_layer.polygon(shift(xy("tongue")), fill=(150, 60, 65))
            for teeth in ("lower_teeth", "upper_teeth"):
                draw_layer.polygon(shift(xy(teeth)), fill=(238, 234, 222))
                gaps = shift(xy(f"{teeth}_gaps"))
                for k in range(0, len(gaps), 4):
                    draw_layer.line(gaps[k : k + 4], fill=(200, 192, 180), width=max(1, int(0.6 * w)))
            image.paste(layer, box, mask.crop(box))
        draw.line(xy("lip_line"), fill=col["lip_line"], width=line, joint="curve")
        return image.reduce(SUPERSAMPLE)

    def _warped_skin(self, coef: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
        """The skin image under the frame's affine map ``coef`` (3, 2), cut to ``box`` of the canvas."""
        shift = coef[2] + box[0] * coef[0] + box[1] * coef[1]
        data = (coef[0, 0], coef[1, 0], shift[0], coef[0, 1], coef[1, 1], shift[1])
        size = (box[2] - box[0], box[3] - box[1])
        # nearest is ten times faster than bilinear here, and the 2x reduction smooths it anyway
        return self.skin_image.transform(size, Image.AFFINE, data, Image.NEAREST)

    @functools.cached_property
    def _anchor_xy(self) -> np.ndarray:
        head, _, slices = clip_geometry(self.shape, self.speaker, np.zeros((1, len(EXP_INDEX))))
        start, stop = slices["anchors"]
        return head[0, start:stop, :2]

    def _wrinkles(self, image: Image.Image, xy, alpha: np.ndarray) -> None:
        c = self.canvas
        dark, light = Image.new("L", (c, c), 0), Image.new("L", (c, c), 0)
        draw_dark, draw_light = ImageDraw.Draw(dark), ImageDraw.Draw(light)
        width = max(1, int(round(1.3 * self.unit)))
        offset = 1.2 * self.unit
        for group, value in zip(WRINKLE_GROUPS, alpha.tolist()):
            if value <= 0.02:
                continue
            k = 0
            while f"wrinkle_{group}_{k}" in self._names:
                points = xy(f"wrinkle_{group}_{k}")
                below = [v + offset * (i % 2) for i, v in enumerate(points)]  # a lit lip under each fold
                draw_light.line(below, fill=int(110 * value), width=width)
                draw_dark.line(points, fill=int(255 * value), width=width)
                k += 1
        box = dark.getbbox()
        if box:
            image.paste(self.light.crop(box), box, light.crop(box))
            image.paste(self.dark.crop(box), box, dark.crop(box))

    @functools.cached_property
    def _names(self) -> set[str]:
        return set(clip_geometry(self.shape, self.speaker, np.zeros((1, len(EXP_INDEX))))[2])


@functools.lru_cache(maxsize=32)
def face_renderer(speaker: SpeakerSpec, size: int) -> FaceRenderer:
    """The (cached) renderer of a speaker at a crop size."""
    return FaceRenderer(speaker, size)
