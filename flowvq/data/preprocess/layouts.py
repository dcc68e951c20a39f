"""Where the clips of each dataset are: MEAD, LRS3, HDTF and a plain folder of videos.

Each scanner returns :class:`ClipSpec` items (one per clip: id, speaker, labels, split and
where its video and audio are), sorted by clip id so that every machine of a sharded run
sees the same list. Splits are always by speaker.
"""

from __future__ import annotations

import csv
import io
import random
import re
import tarfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flowvq.data.schema import EMOTIONS, INTENSITY_LEVELS, emotion_index

__all__ = [
    "MEAD_TEST_SPEAKERS",
    "VIDEO_SUFFIXES",
    "ClipSpec",
    "LayoutError",
    "MediaRef",
    "assign_splits",
    "check_unique_ids",
    "scan_folder",
    "scan_hdtf",
    "scan_lrs3",
    "scan_mead",
]

#: The MEAD test speakers of EAT and EDTalk.
MEAD_TEST_SPEAKERS: tuple[str, ...] = ("M003", "M030", "W009", "W015")
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv")


class LayoutError(ValueError):
    """A dataset root that does not look like the layout asked for."""


@dataclass(frozen=True)
class MediaRef:
    """A media file on disk, or a member of an uncompressed tar archive (``offset``/``size`` of its data)."""

    path: str
    offset: int | None = None
    size: int | None = None
    member: str | None = None

    def open(self) -> str | io.BytesIO:
        """A path, or the member's bytes as a named in-memory file."""
        if self.offset is None:
            return self.path
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = io.BytesIO(handle.read(self.size))
        data.name = f"{self.path}:{self.member}"
        return data

    def __str__(self) -> str:
        return self.path if self.member is None else f"{self.path}:{self.member}"


@dataclass(frozen=True)
class ClipSpec:
    """One clip to extract."""

    clip_id: str
    speaker: str
    split: str
    video: MediaRef
    audio: MediaRef | None = None  # None: the video's own sound track
    emotion: int = -1
    intensity: int = -1


def check_unique_ids(specs: Iterable[ClipSpec], hint: str = "rename one of them") -> list[ClipSpec]:
    """Refuse two clips with one id (one would overwrite the other in the cache and the shards).

    Raises:
        LayoutError: naming the id and both files, and what to do (``hint``).
    """
    specs = list(specs)
    seen: dict[str, ClipSpec] = {}
    for spec in specs:
        other = seen.setdefault(spec.clip_id, spec)
        if other is not spec:
            raise LayoutError(
                f"two videos get the clip id {spec.clip_id!r}: {str(other.video)!r} and {str(spec.video)!r}; "
                f"clip ids must be unique (each is a cache file and a record): {hint}"
            )
    return specs


def _warn_empty(split: str, fraction: float, speakers: Sequence[str], how: str) -> None:
    warnings.warn(
        f"no {split} split: {split}_fraction={fraction} of {len(speakers)} speaker(s) "
        f"({', '.join(speakers[:5]) or 'none'}{', ...' if len(speakers) > 5 else ''}) rounds to none "
        f"(one is drawn from 3 speakers up); name the {split} speakers with {how}",
        UserWarning,
        stacklevel=3,
    )


def assign_splits(
    speakers: Iterable[str],
    test_speakers: Sequence[str] = (),
    val_speakers: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, str]:
    """Split speakers into train / val / test (never clips of one speaker across splits).

    Arguments:
        test_speakers: always test.
        val_speakers: always val; ``None`` draws ``val_fraction`` of the remaining speakers
            (at least one when three or more remain, none when the fraction is 0) with ``seed``;
            a fraction above 0 that draws nobody is warned about.
        test_fraction: when ``test_speakers`` is empty, this fraction of speakers is drawn
            for test the same way.
    """
    speakers = sorted(set(speakers))
    test = set(test_speakers)
    rest = [s for s in speakers if s not in test]
    rng = random.Random(seed)
    if not test and test_fraction > 0:
        count = max(1 if len(rest) >= 3 else 0, int(round(test_fraction * len(rest))))
        test = set(rng.sample(rest, count))
        rest = [s for s in rest if s not in test]
        if not test:
            _warn_empty("test", test_fraction, rest, "--test_speakers (MEAD) or a split column in the labels CSV")
    if val_speakers is None:
        count = max(1 if len(rest) >= 3 else 0, int(round(val_fraction * len(rest)))) if val_fraction > 0 else 0
        val = set(rng.sample(rest, count))
        if val_fraction > 0 and not val:
            _warn_empty("val", val_fraction, rest, "--val_speakers (MEAD) or a split column in the labels CSV")
    else:
        val = set(val_speakers)
    return {s: "test" if s in test else "val" if s in val else "train" for s in speakers}


def _tar_members(path: Path, suffixes: tuple[str, ...]) -> list[tuple[str, MediaRef]]:
    try:
        with tarfile.open(path, "r:") as archive:  # uncompressed only: members are read by offset
            return [
                (info.name.removeprefix("./"), MediaRef(str(path), info.offset_data, info.size, info.name))
                for info in archive.getmembers()
                if info.isfile() and info.name.lower().endswith(suffixes)
            ]
    except tarfile.TarError as error:
        raise LayoutError(
            f"{str(path)!r} is not an uncompressed tar archive ({error}); extract it, or re-download it"
        ) from error


_MEAD_VIDEO = re.compile(r"(?:^|/)(?P<view>[^/]+)/(?P<emotion>[^/]+)/level_(?P<level>\d+)/(?P<name>[^/]+)\.mp4$", re.I)
_MEAD_AUDIO = re.compile(r"(?:^|/)(?P<emotion>[^/]+)/level_(?P<level>\d+)/(?P<name>[^/]+)\.m4a$", re.I)


def _mead_files(speaker_dir: Path, kind: str, suffix: str) -> list[tuple[str, MediaRef]]:
    """(path relative to <speaker>/<kind>/, ref) of every file, from the folder or from <kind>.tar."""
    folder = speaker_dir / kind
    if folder.is_dir():
        return [(p.relative_to(folder).as_posix(), MediaRef(str(p))) for p in sorted(folder.rglob(f"*{suffix}"))]
    archive = speaker_dir / f"{kind}.tar"
    if archive.is_file():
        return [(name.removeprefix(f"{kind}/"), ref) for name, ref in _tar_members(archive, (suffix,))]
    return []


def scan_mead(
    root: str | Path,
    view: str = "front",
    test_speakers: Sequence[str] = MEAD_TEST_SPEAKERS,
    val_speakers: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    speakers: Sequence[str] | None = None,
    emotions: Sequence[str] | None = None,
    seed: int = 0,
) -> list[ClipSpec]:
    """MEAD as released: ``<speaker>/video/<view>/<emotion>/level_<n>/<NNN>.mp4`` and
    ``<speaker>/audio/<emotion>/level_<n>/<NNN>.m4a``, each folder also accepted as the
    unextracted ``video.tar`` / ``audio.tar``. Labels come from the path (level_1..3 ->
    intensity 0..2); a clip without its ``.m4a`` uses the video's sound.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"MEAD root {str(root)!r} does not exist")
    speaker_dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and ((d / "video").is_dir() or (d / "video.tar").is_file())
    )
    if speakers is not None:
        speaker_dirs = [d for d in speaker_dirs if d.name in set(speakers)]
    if not speaker_dirs:
        raise LayoutError(
            f"no MEAD speakers under {str(root)!r}: expected folders such as M003/ holding video/ or video.tar "
            "(<speaker>/video/<view>/<emotion>/level_<n>/<NNN>.mp4)"
        )
    wanted = {emotion_index(e) for e in emotions} if emotions is not None else None
    split_of = assign_splits([d.name for d in speaker_dirs], test_speakers, val_speakers, val_fraction, seed=seed)
    specs = []
    views_seen: set[str] = set()
    for speaker_dir in speaker_dirs:
        speaker = speaker_dir.name
        audio = {}
        for rel, ref in _mead_files(speaker_dir, "audio", ".m4a"):
            match = _MEAD_AUDIO.search(rel)
            if match:
                audio[(match["emotion"].lower(), int(match["level"]), match["name"])] = ref
        for rel, ref in _mead_files(speaker_dir, "video", ".mp4"):
            match = _MEAD_VIDEO.search(rel)
            if not match:
                continue
            views_seen.add(match["view"])
            if match["view"] != view:
                continue
            name, level = match["emotion"].lower(), int(match["level"])
            try:
                emotion = emotion_index(name)
            except ValueError as error:
                raise LayoutError(f"{ref}: {error} (MEAD emotion folders are {', '.join(EMOTIONS)})") from error
            if wanted is not None and emotion not in wanted:
                continue
            if not 1 <= level <= INTENSITY_LEVELS:
                raise LayoutError(f"{ref}: level_{level} is not one of level_1..level_{INTENSITY_LEVELS}")
            clip_id = f"{speaker}_{view}_{EMOTIONS[emotion]}_{level}_{match['name']}"
            specs.append(
                ClipSpec(
                    clip_id=clip_id,
                    speaker=speaker,
                    split=split_of[speaker],
                    video=ref,
                    audio=audio.get((name, level, match["name"])),
                    emotion=emotion,
                    intensity=level - 1,
                )
            )
    if not specs:
        raise LayoutError(
            f"no MEAD clips of view {view!r} under {str(root)!r} (views found: {sorted(views_seen) or 'none'})"
        )
    return sorted(check_unique_ids(specs, "keep one copy of the clip"), key=lambda s: s.clip_id)


def scan_lrs3(
    root: str | Path,
    subsets: Sequence[str] = ("pretrain", "trainval", "test"),
    val_fraction: float = 0.02,
    seed: int = 0,
) -> list[ClipSpec]:
    """LRS3: ``{pretrain,trainval,test}/<id>/<NNNNN>.mp4``; the id is the speaker, emotion unknown.

    ``test`` clips form the test split; ``pretrain`` and ``trainval`` are split into train
    and val by id (the ``.txt`` transcripts are not used).
    """
    root = Path(root)
    specs = []
    for subset in subsets:
        folder = root / subset
        if not folder.is_dir():
            raise LayoutError(
                f"LRS3 subset folder {str(folder)!r} does not exist (expected {root}/{{pretrain,trainval,test}}/<id>/"
                "<clip>.mp4); pass --subsets with the ones you have"
            )
        for path in sorted(folder.glob("*/*.mp4")):
            speaker = path.parent.name
            specs.append((subset, speaker, path))
    if not specs:
        raise LayoutError(f"no LRS3 clips under {str(root)!r} in subsets {list(subsets)}")
    test_ids = {speaker for subset, speaker, _ in specs if subset == "test"}
    split_of = assign_splits(
        [speaker for subset, speaker, _ in specs if subset != "test"], (), None, val_fraction, seed=seed
    )
    out = []
    for subset, speaker, path in specs:
        split = "test" if subset == "test" else split_of[speaker]
        if split != "test" and speaker in test_ids:
            continue  # an id in both test and trainval would leak a speaker across splits
        out.append(ClipSpec(f"{subset}_{speaker}_{path.stem}", speaker, split, MediaRef(str(path))))
    return sorted(check_unique_ids(out, "keep one copy of the clip"), key=lambda s: s.clip_id)


def _video_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


#: HDTF video names: ``<source>_<Name>_<NNN>`` (WDA_BarackObama_000, RD_Radio11_001, WRA_...).
_HDTF_NAME = re.compile(r"^(?P<speaker>[A-Za-z0-9]+_[^/]+?)_(?P<index>\d+)$")


def scan_hdtf(root: str | Path, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> list[ClipSpec]:
    """HDTF: videos such as ``WDA_BarackObama_000.mp4`` anywhere under ``root``; the speaker is
    the name without its trailing ``_NNN`` index; emotion unknown; speakers split at random.

    Raises:
        LayoutError: if a video is not named ``<source>_<Name>_<NNN>`` (a MEAD tree or a plain
            folder given to the HDTF reader would otherwise spread one "speaker" over every split).
    """
    root = Path(root)
    files = _video_files(root) if root.is_dir() else []
    if not files:
        raise LayoutError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {str(root)!r}")
    odd = [p for p in files if not _HDTF_NAME.match(p.stem)]
    if odd:
        mead = any((d / "video").is_dir() or (d / "video.tar").is_file() for d in root.iterdir() if d.is_dir())
        raise LayoutError(
            f"{len(odd)} of {len(files)} videos under {str(root)!r} are not named like HDTF's "
            f"<source>_<Name>_<NNN> (e.g. WDA_BarackObama_000.mp4), e.g. {str(odd[0].relative_to(root))!r}. "
            + (
                "This looks like a MEAD tree: use `flowvq preprocess mead`"
                if mead
                else "For other videos use `flowvq preprocess folder` (speaker = folder name, or a labels CSV)"
            )
        )
    speaker_of = {p: _HDTF_NAME.match(p.stem)["speaker"] for p in files}
    split_of = assign_splits(speaker_of.values(), (), None, val_fraction, test_fraction, seed)
    specs = [
        ClipSpec(p.relative_to(root).with_suffix("").as_posix().replace("/", "_"), s, split_of[s], MediaRef(str(p)))
        for p, s in speaker_of.items()
    ]
    return sorted(check_unique_ids(specs, "rename or move one of them"), key=lambda s: s.clip_id)


def scan_folder(
    root: str | Path,
    labels: str | Path | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    unlabelled: list[str] | None = None,
) -> list[ClipSpec]:
    """Every video under ``root``, labelled by an optional CSV.

    The CSV has a header with ``path`` (relative to ``root``) and any of ``speaker``,
    ``emotion`` (a name or index), ``intensity`` (0..2), ``split``, ``audio`` (a separate
    audio file, relative to ``root``). Without a speaker the clip's folder name is used (its
    file name for videos directly in ``root``); videos missing from a given CSV are skipped,
    with a warning, and appended to ``unlabelled`` (paths relative to ``root``) when given.
    The clip id is the relative path without suffix, ``/`` replaced by ``_``; two videos
    that give one id are refused (:func:`check_unique_ids`).
    """
    root = Path(root)
    files = _video_files(root) if root.is_dir() else []
    if not files:
        raise LayoutError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {str(root)!r}")
    rows: dict[str, dict[str, str]] | None = None
    if labels is not None:
        with open(labels, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise LayoutError(
                    f"labels file {str(labels)!r} needs a header with a 'path' column "
                    f"(got {reader.fieldnames}); optional columns: speaker, emotion, intensity, split, audio"
                )
            rows = {Path(row["path"]).as_posix(): row for row in reader}
        missing = sorted(set(rows) - {p.relative_to(root).as_posix() for p in files})
        if missing:
            raise LayoutError(
                f"{len(missing)} paths of {str(labels)!r} are not under {str(root)!r}, e.g. {missing[0]!r}"
            )
        skipped = [p.relative_to(root).as_posix() for p in files if p.relative_to(root).as_posix() not in rows]
        if skipped:
            warnings.warn(
                f"{len(skipped)} of {len(files)} videos under {str(root)!r} have no row in {str(labels)!r} and "
                f"are skipped, e.g. {skipped[0]!r}; add rows for them to include them",
                UserWarning,
                stacklevel=2,
            )
            if unlabelled is not None:
                unlabelled.extend(skipped)
        files = [p for p in files if p.relative_to(root).as_posix() in rows]
    entries = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        row = rows.get(rel, {}) if rows is not None else {}
        speaker = row.get("speaker") or (path.parent.name if path.parent != root else path.stem)
        value = (row.get("emotion") or "").strip()
        try:
            emotion = -1 if value in ("", "-1", "unknown") else emotion_index(int(value) if value.isdigit() else value)
        except ValueError as error:
            raise LayoutError(f"{str(labels)!r}, row {rel!r}: {error}") from error
        intensity = int(row["intensity"]) if row.get("intensity") else -1
        if not -1 <= intensity < INTENSITY_LEVELS:
            raise LayoutError(
                f"{str(labels)!r}, row {rel!r}: intensity {intensity} is not in 0..{INTENSITY_LEVELS - 1}"
            )
        split = row.get("split") or None
        if split is not None and split not in ("train", "val", "test"):
            raise LayoutError(f"{str(labels)!r}, row {rel!r}: split {split!r} is not train, val or test")
        audio = MediaRef(str(root / row["audio"])) if row.get("audio") else None
        entries.append((rel, speaker, emotion, intensity, split, path, audio))
    split_of_speaker: dict[str, str] = {}
    for rel, speaker, _, _, split, _, _ in entries:
        if split is not None and split_of_speaker.setdefault(speaker, split) != split:
            raise LayoutError(
                f"{str(labels)!r}, row {rel!r}: speaker {speaker!r} is in splits {split_of_speaker[speaker]!r} and "
                f"{split!r}; splits are by speaker, fix the split column"
            )
    undecided = [e[1] for e in entries if e[1] not in split_of_speaker]
    if undecided:
        given = set(split_of_speaker.values())  # a split the CSV fills is not drawn as well
        val = 0.0 if "val" in given else val_fraction
        test = 0.0 if "test" in given else test_fraction
        split_of_speaker.update(assign_splits(undecided, (), None, val, test, seed))
    specs = [
        ClipSpec(
            Path(rel).with_suffix("").as_posix().replace("/", "_"),
            speaker,
            split_of_speaker[speaker],
            MediaRef(str(path)),
            audio,
            emotion,
            intensity,
        )
        for rel, speaker, emotion, intensity, _, path, audio in entries
    ]
    hint = "rename or move one of them (ids are the relative path with / replaced by _, without the suffix)"
    return sorted(check_unique_ids(specs, hint), key=lambda s: s.clip_id)
