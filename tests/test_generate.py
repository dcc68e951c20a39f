"""`flowvq generate` and the Pipeline on tiny checkpoints: videos with sound, every bad input, batch, streaming.

The checkpoints are trained once per session (two steps per stage on the random dataset):
they render noise-like faces, which is all these tests need: frame counts, audio streams,
seeds, the files written and the errors.
"""

from __future__ import annotations

import csv
import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml
from media import astronaut, faceless, speech_like
from PIL import Image

from flowvq.data.audio import to_int16
from flowvq.data.video import probe, read_audio, read_video, write_audio, write_video

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
FAST = {
    "trainer.max_steps": 2,
    "trainer.max_epochs": 1,
    "trainer.limit_val_batches": 0,
    "trainer.num_sanity_val_steps": 0,
    "trainer.callbacks": [],
}
COEFFICIENT_DATA = {"data.init_args.window": 8, "data.init_args.windows_per_clip": 1, "data.init_args.batch_size": 2}
FRAME_DATA = {"data.init_args.batch_size": 4, "model.init_args.disc_start": 1}
SECONDS = 1.3  # test speech: 33 frames at 25 fps


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(to_int16(audio).tobytes())
    return path


def fit_stages(data: Path, out: Path, exp_only: bool = False) -> dict[str, Path]:
    from flowvq.pipeline.train import fit_config

    def fit(name: str, extra: dict) -> Path:
        return fit_config(TINY / f"{name}.yaml", data, out, name, {**FAST, **extra}, progress=False).checkpoint

    stages = {"expression": fit("expflow", COEFFICIENT_DATA)}
    if exp_only:
        return stages
    stages["motion"] = fit("poseflow", COEFFICIENT_DATA)
    codebook = fit("vqgan", {**FRAME_DATA, "data.init_args.frames_per_clip": 2})
    stages["renderer"] = fit(
        "vqig", {**FRAME_DATA, "data.init_args.pairs_per_clip": 2, "model.init_args.codebook_checkpoint": str(codebook)}
    )
    return stages


def pipeline_yaml(path: Path, stages: dict[str, Path], **extra) -> Path:
    kinds = {"expression": "expflow", "motion": "poseflow", "renderer": "vqig"}
    spec = {
        "name": "tiny",
        "stages": {role: {"kind": kinds[role], "checkpoint": str(ckpt)} for role, ckpt in stages.items()},
        # the random dataset's landmarks are noise: give the FFHQ framing rather than measure it
        "framing": {"centre": [0.5, 0.5], "half": 0.5},
        **extra,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


#: What the fits of :func:`tiny_stages` left in the working directory they ran in.
LEFT_IN_CWD: list[str] = []


@pytest.fixture(scope="session")
def tiny_stages(named_random_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        stages = fit_stages(named_random_dataset, tmp_path_factory.mktemp("tiny_stages"))
    LEFT_IN_CWD.extend(p.name for p in cwd.iterdir())
    return stages


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A photo with one face, one with two, one without, speech as wav/m4a/mp4, silence, junk."""
    folder = tmp_path_factory.mktemp("media")
    photo = astronaut()
    Image.fromarray(photo).save(folder / "photo.jpg")
    two = np.full((512, 900, 3), 90, np.uint8)
    two[:, :512] = photo
    two[64:448, 516:900] = np.asarray(Image.fromarray(photo).resize((384, 384)))
    Image.fromarray(two).save(folder / "two.jpg")
    Image.fromarray(faceless(1, size=256)[0]).save(folder / "noface.png")
    speech = speech_like(SECONDS, seed=3)
    write_wav(folder / "speech.wav", speech)
    write_audio(folder / "speech.m4a", speech)
    frames = np.repeat(photo[None, ::4, ::4], int(SECONDS * 25), axis=0)
    write_video(folder / "clip.mp4", frames, audio=speech)
    write_wav(folder / "silent.wav", np.zeros(16000, np.float32))
    write_wav(folder / "silent_long.wav", np.zeros(48000, np.float32))  # longer than a streamed chunk
    (folder / "junk.wav").write_bytes(b"this is not audio" * 100)
    return {p.stem if p.suffix != ".m4a" else "m4a": p for p in folder.iterdir()}


def run_console(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`flowvq <argv>` as the console script runs it (bad input -> one line, exit code 2)."""
    from flowvq.cli import main

    monkeypatch.setattr(sys, "argv", ["flowvq", *argv])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def generate_args(pipeline: Path, out: Path, image: Path, audio: Path, *extra: str) -> list[str]:
    args = ["generate", "--pipeline", str(pipeline), "--image", str(image), "--audio", str(audio)]
    return [*args, "--out", str(out), "--quiet", "true", *extra]


@pytest.fixture(scope="session")
def tiny_yaml(tiny_stages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline_yaml(tmp_path_factory.mktemp("pipeline") / "pipeline.yaml", tiny_stages)


def test_generate_writes_videos_with_sound_and_frames_for_every_audio_frame(
    tiny_yaml, media, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    code, _, err = run_console(
        generate_args(tiny_yaml, out, media["photo"], media["speech"], "--emotion", "happy", "--samples", "2"),
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    audio = read_audio(media["speech"])
    expected = int(np.ceil(len(audio) / 640))
    for k in range(2):
        info = probe(out / f"sample_{k}.mp4")
        assert info.has_audio and info.fps == 25.0
        assert len(read_video(out / f"sample_{k}.mp4")) == expected
        muxed = read_audio(out / f"sample_{k}.mp4")
        assert abs(len(muxed) - len(audio)) < 0.1 * 16000  # the speech itself (AAC adds priming samples)
    coefficients = np.load(out / "coefficients.npz")
    assert coefficients["exp"].shape[:2] == (2, expected) and coefficients["pose"].shape[:2] == (2, expected)
    assert not np.allclose(coefficients["exp"][0], coefficients["exp"][1])  # two seeds, two samples
    record = json.loads((out / "generate.json").read_text())
    assert record["seeds"] == [0, 1] and record["frames"] == expected
    assert record["inputs"]["emotion"] == "happy"
    assert set(record["seconds"]) >= {"audio", "face", "expression", "motion", "renderer", "total"}
    assert record["real_time_factor"] > 0


def test_sample_k_does_not_depend_on_the_number_of_samples(tiny_yaml, media):
    from flowvq.pipeline import Pipeline

    pipeline = Pipeline.from_yaml(tiny_yaml)
    two = pipeline.generate(media["photo"], media["speech"], emotion="sad", samples=2, seed=5)
    one = pipeline.generate(two.source, media["speech"], emotion="sad", samples=1, seed=6)
    assert two.frames.shape == (2, two.num_frames, 3, 64, 64) and two.frames.dtype == np.uint8
    np.testing.assert_allclose(one.coefficients["exp"][0], two.coefficients["exp"][1], atol=1e-5)
    # a mix of emotions, and transfer from a reference's coefficients, give their own samples
    mixed = pipeline.generate(None, media["speech"], emotion_weights={"happy": 0.6, "surprised": 0.4}, render=False)
    assert mixed.frames is None and "0.6 happy" in mixed.emotion
    transfer = pipeline.generate(None, media["speech"], reference=two.coefficients["exp"][0], render=False)
    assert transfer.coefficients["exp"].shape == one.coefficients["exp"].shape
    assert not np.allclose(transfer.coefficients["exp"], one.coefficients["exp"])


def test_audio_formats_give_the_same_features(tiny_yaml, media):
    from flowvq.pipeline import Pipeline

    pipeline = Pipeline.from_yaml(tiny_yaml)
    wav, m4a, mp4 = (pipeline.speech(media[key]) for key in ("speech", "m4a", "clip"))
    assert wav.num_frames == int(np.ceil(SECONDS * 25))
    for other in (m4a, mp4):  # AAC round trips: same length within a frame, close features
        assert abs(other.num_frames - wav.num_frames) <= 1
        t = min(other.num_frames, wav.num_frames) - 2
        assert np.corrcoef(other.mel[:t].ravel(), wav.mel[:t].ravel())[0, 1] > 0.95


def test_streaming_writes_the_same_length_and_reports_latency(tiny_yaml, media, tmp_path, monkeypatch, capsys):
    out = tmp_path / "stream"
    code, _, err = run_console(
        generate_args(tiny_yaml, out, media["photo"], media["m4a"], "--stream", "true"), monkeypatch, capsys
    )
    assert code == 0, err
    record = json.loads((out / "generate.json").read_text())
    frames = read_video(out / "sample_0.mp4")
    assert len(frames) == record["frames"] == int(np.ceil(len(read_audio(media["m4a"])) / 640))
    assert probe(out / "sample_0.mp4").has_audio
    assert 0 < record["first_frame_latency"] <= record["seconds"]["total"]


def test_streaming_mel_equals_the_whole_recording():
    from flowvq.data.audio import log_mel
    from flowvq.data.card import AudioFeatures
    from flowvq.pipeline.inputs import StreamingMel

    audio = speech_like(2.03, seed=1)
    whole = log_mel(audio, int(np.ceil(len(audio) / 640)), AudioFeatures())
    stream = StreamingMel(AudioFeatures())
    parts = []
    for start in range(0, len(audio), 3001):  # blocks that do not align with frames
        stream.push(audio[start : start + 3001])
        parts.append(stream.ready())
    stream.finish()
    parts.append(stream.ready())
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-4)


def test_photo_crop_follows_the_framing_and_takes_the_largest_face(media):
    from flowvq.data.face.crop import ffhq_quads
    from flowvq.pipeline.inputs import Framing, load_photo

    framing = Framing((0.5, 0.42), 0.3)
    face = load_photo(media["photo"], 128, framing)
    centre, half = ffhq_quads(face.landmarks[None])
    np.testing.assert_allclose(centre[0] / 128, framing.centre, atol=0.01)
    assert abs(np.linalg.norm(half[0]) / 128 - framing.half) < 0.01
    assert face.crop.shape == (128, 128, 3) and not face.notes
    two = load_photo(media["two"], 128, framing)
    assert two.faces == 2 and "using the largest" in two.notes[0]
    # the larger face is the one on the left (x < 512)
    assert two.matrix is not None and np.linalg.solve(two.matrix[:, :2], np.array([64, 54]) - two.matrix[:, 2])[0] < 512


def test_paste_back_returns_the_photo_size(tiny_yaml, media, tmp_path, monkeypatch, capsys):
    out = tmp_path / "paste"
    code, _, err = run_console(
        generate_args(tiny_yaml, out, media["photo"], media["speech"], "--paste_back", "true"), monkeypatch, capsys
    )
    assert code == 0, err
    full, crop = probe(out / "sample_0.mp4"), probe(out / "sample_0_crop.mp4")
    assert (full.width, full.height) == (512, 512) and (crop.width, crop.height) == (64, 64)
    corner = read_video(out / "sample_0.mp4")[0][:40, -40:].astype(float)  # far from the face: the photo itself
    assert np.abs(corner - astronaut()[:40, -40:]).mean() < 6


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no_face", "no face found"),
        ("junk_audio", "not a readable media file"),
        ("silent_audio", "silent"),
        ("silent_audio_streamed", "silent"),
        ("unknown_emotion", "unknown emotion 'elated'"),
        ("missing_checkpoint", "does not exist"),
        ("video_reference", "cannot be measured from a video"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    case, needle, tiny_yaml, tiny_stages, media, tmp_path, monkeypatch, capsys
):
    image, audio, extra, pipeline = media["photo"], media["speech"], [], tiny_yaml
    if case == "no_face":
        image = media["noface"]
    elif case == "junk_audio":
        audio = media["junk"]
    elif case == "silent_audio":
        audio = media["silent"]
    elif case == "silent_audio_streamed":  # found at the end of the stream: the half-written video goes
        audio, extra = media["silent_long"], ["--stream", "true"]
    elif case == "unknown_emotion":
        extra = ["--emotion", "elated"]
    elif case == "missing_checkpoint":
        pipeline = pipeline_yaml(tmp_path / "p.yaml", {**tiny_stages, "motion": tmp_path / "nowhere.ckpt"})
    elif case == "video_reference":
        extra = ["--reference", str(media["clip"])]
    code, _, err = run_console(generate_args(pipeline, tmp_path / "out", image, audio, *extra), monkeypatch, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    if case == "missing_checkpoint":
        assert "nowhere.ckpt" in lines[0] and "'motion'" in lines[0]
    assert not list((tmp_path / "out").glob("sample_*"))


def test_previous_run_is_refused_unless_overwrite(tiny_yaml, media, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = generate_args(tiny_yaml, out, media["photo"], media["speech"])
    assert run_console(args, monkeypatch, capsys)[0] == 0
    code, _, err = run_console(args, monkeypatch, capsys)
    assert code == 2 and "holds a previous run" in err and "--overwrite" in err
    assert run_console([*args, "--overwrite", "true"], monkeypatch, capsys)[0] == 0


def test_stages_that_do_not_match_are_refused_naming_both(
    tiny_stages, make_random_dataset, named_random_dataset, tmp_path
):
    from flowvq.pipeline import Pipeline
    from flowvq.pipeline.stages import PipelineError

    other = make_random_dataset("random_e8", exp_dim=8)
    small = fit_stages(other, tmp_path / "e8", exp_only=True)
    path = pipeline_yaml(tmp_path / "mixed.yaml", {**tiny_stages, "expression": small["expression"]})
    with pytest.raises(PipelineError) as error:
        Pipeline.from_yaml(path)
    message = str(error.value)
    assert "'renderer'" in message and "'expression'" in message and "exp_dim 16 vs 8" in message
    # the same sizes from another dataset: another coefficient space, refused by name
    card = json.loads((named_random_dataset / "dataset.json").read_text())
    (tmp_path / "another.json").write_text(json.dumps({**card, "name": "another"}))
    spec = yaml.safe_load(pipeline_yaml(tmp_path / "other.yaml", tiny_stages).read_text())
    spec["stages"]["renderer"]["card"] = str(tmp_path / "another.json")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(PipelineError, match=r"stage 'renderer' .* datasets 'another' \(synthetic\) vs 'random'"):
        Pipeline.from_yaml(tmp_path / "other.yaml")


def test_batch_records_a_failed_row_and_goes_on(tiny_yaml, media, tmp_path, monkeypatch, capsys):
    jobs = tmp_path / "jobs.csv"
    with jobs.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "audio", "emotion", "emotion_weights", "samples", "name"])
        writer.writerow([media["photo"], media["speech"], "angry", "", 1, "first"])
        writer.writerow([media["noface"], media["speech"], "happy", "", 1, "faceless"])
        writer.writerow([media["photo"], media["speech"], "", "{happy: 0.6, surprised: 0.4}", 1, "mixed"])
    out = tmp_path / "batch"
    code, _, _ = run_console(
        ["generate", "--pipeline", str(tiny_yaml), "--batch", str(jobs), "--out", str(out), "--quiet", "true"],
        monkeypatch,
        capsys,
    )
    assert code == 1  # some rows failed
    summary = json.loads((out / "batch.json").read_text())
    assert [row["status"] for row in summary["rows"]] == ["ok", "failed", "ok"]
    assert "no face" in summary["rows"][1]["error"]
    assert (out / "first" / "sample_0.mp4").exists() and (out / "mixed" / "sample_0.mp4").exists()
    assert json.loads((out / "mixed" / "generate.json").read_text())["inputs"]["emotion_weights"] == {
        "happy": 0.6,
        "surprised": 0.4,
    }


def test_fit_config_writes_only_under_its_folder(tiny_stages):
    """The tiny configs name ./checkpoints and runs/tiny_*; fitted through fit_config everything
    lands under its out folder, nothing in the working directory."""
    folder = tiny_stages["expression"].parents[2]
    assert all(path.is_relative_to(folder) for path in tiny_stages.values())
    assert {p.name for p in folder.iterdir()} == {"expflow", "poseflow", "vqgan", "vqig"}
    assert LEFT_IN_CWD == []


def readme_example(marker: str) -> str:
    """The python block after ``<!-- readme-example: marker -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    after = text.split(f"<!-- readme-example: {marker} -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_python_example_runs_as_written(tiny_stages, media, tmp_path, monkeypatch, capsys):
    """The README's example, unchanged, in a folder laid out as `make demo` leaves runs/demo/."""
    import shutil

    demo = tmp_path / "runs" / "demo"
    (demo / "inputs").mkdir(parents=True)
    pipeline_yaml(demo / "pipeline.yaml", tiny_stages)
    Image.open(media["photo"]).save(demo / "inputs" / "photo.png")
    shutil.copy(media["speech"], demo / "inputs" / "speech.wav")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example("generate"), "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    frames = int(np.ceil(SECONDS * 16000 / 640))
    assert f"(2, {frames}, 3, 64, 64) 25.0" in printed
    assert probe(tmp_path / "happy.mp4").has_audio and len(read_video(tmp_path / "happy.mp4")) == frames
    assert f"({frames}, 4, 80) (64, 64, 3) (68, 2)" in printed


def run_notebook(name: str, env: dict[str, str], cwd: Path) -> None:
    """Execute notebooks/<name> top to bottom in a fresh kernel with ``env`` set (tiny settings)."""
    import os

    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), "commit without outputs"
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    errors = [out for cell in book.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    return book


def test_notebook_synthtalk_and_expflow_diversity(synth_tiny_root, tmp_path):
    book = run_notebook(
        "synthtalk_expflow_diversity.ipynb",
        {"FLOWVQ_NB_DATA": str(synth_tiny_root), "FLOWVQ_NB_STEPS": "10", "FLOWVQ_NB_SAMPLES": "3",
         "FLOWVQ_NB_WORK": str(tmp_path / "work")},
        tmp_path,
    )  # fmt: skip
    images = [o for c in book.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # faces, jaw vs envelope, emotion means, samples
    table = [o for c in book.cells for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})][-1]
    assert "| emotion | diversity |" in table["data"]["text/markdown"]


def test_notebook_generate_and_score(tiny_stages, media, tmp_path):
    pipeline = pipeline_yaml(tmp_path / "pipeline.yaml", tiny_stages)
    book = run_notebook(
        "generate_and_score.ipynb",
        {"FLOWVQ_NB_PIPELINE": str(pipeline), "FLOWVQ_NB_PHOTO": str(media["photo"]),
         "FLOWVQ_NB_AUDIO": str(media["speech"]), "FLOWVQ_NB_WORK": str(tmp_path / "work"),
         "FLOWVQ_NB_EVALUATE": "0"},
        tmp_path,
    )  # fmt: skip
    html = [o for c in book.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert any("<video" in o["data"]["text/html"] for o in html)
    tables = [
        o["data"]["text/markdown"]
        for c in book.cells
        for o in c.get("outputs", [])
        if "text/markdown" in o.get("data", {})
    ]
    assert any("| emotion | lip-sync r |" in t for t in tables)
    assert (tmp_path / "work" / "happy.mp4").exists()


def test_gmtalker_stages_fill_their_roles_by_config(tiny_stages, named_random_dataset, media, tmp_path):
    """GMTalker's stages join the chain through the registry, no code change: GMEG (kind: gmeg)
    takes the emotion blend and passes its z_gm on, the person-specific StyleUNet head
    (kind: styleunet_head) renders without a source photo."""
    from flowvq.pipeline import Pipeline
    from flowvq.pipeline.train import fit_config

    overrides = {**FAST, **COEFFICIENT_DATA}
    gmeg = fit_config(TINY / "gmeg.yaml", named_random_dataset, tmp_path, "gmeg", overrides, progress=False)
    head_config = {  # the StyleUNet head at the tiny configs' size, on one speaker, fed GMEG's z_gm
        "seed_everything": 0,
        "model": {
            "class_path": "flowvq.lightning_modules.styleunet.StyleUNetHead",
            "init_args": {"resolution": 64, "channels": 8, "ch_mult": [1, 2, 4, 4], "max_channels": 32,
                          "z_gm_dim": gmeg.model.hparams.latent_dim, "latent_dim": 8, "style_dim": 16,
                          "hidden_dim": 32, "shared_layers": 1, "branch_layers": 1, "disc_channels": 16,
                          "disc_layers": 2, "log_images": 0, "log_video_frames": 0},
        },
        "data": {
            "class_path": "flowvq.datamodules.FramePairDataModule",
            "init_args": {"speaker": "spk0", "batch_size": 4, "pairs_per_clip": 2, "num_workers": 0},
        },
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False},
    }  # fmt: skip
    head = fit_config(head_config, named_random_dataset, tmp_path, "styleunet", FAST, progress=False)
    path = pipeline_yaml(tmp_path / "gm.yaml", tiny_stages)
    spec = yaml.safe_load(path.read_text())
    spec["stages"]["expression"] = {"kind": "gmeg", "checkpoint": str(gmeg.checkpoint)}
    spec["stages"]["renderer"] = {"kind": "styleunet_head", "checkpoint": str(head.checkpoint)}
    path.write_text(yaml.safe_dump(spec))
    pipeline = Pipeline.from_yaml(path)
    result = pipeline.generate(None, media["speech"], emotion_weights={"happy": 0.6, "surprised": 0.4}, samples=2)
    t = result.num_frames
    assert result.frames.shape == (2, t, 3, 64, 64) and result.source is None  # no photo needed
    assert result.coefficients["z_gm"].shape == (2, t, gmeg.model.hparams.latent_dim)
    happy = pipeline.generate(None, media["speech"], emotion="happy", render=False, seed=0)
    sad = pipeline.generate(None, media["speech"], emotion="sad", render=False, seed=0)
    assert not np.allclose(happy.coefficients["exp"], sad.coefficients["exp"])
