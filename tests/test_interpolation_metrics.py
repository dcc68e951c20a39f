"""EPPL / EPDV (emotion interpolation smoothness) and the classifier embedding they use."""

from __future__ import annotations

import pytest
import torch

from flowvq.lightning_modules.emotion_classifier import EmotionClassifier
from flowvq.metrics.interpolation import EPDV, EPPL, monotonic_fraction, path_embeddings, step_distances


def even_path(steps: int, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    alpha = torch.linspace(0, 1, steps)[:, None]
    return (1 - alpha) * start + alpha * end  # (S, H)


def jump_path(steps: int, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Stays at the start, jumps to the end in the middle step (a switch between components)."""
    path = start.repeat(steps, 1)
    path[steps // 2 :] = end
    return path


def test_a_path_with_a_jump_has_higher_epdv_and_eppl_than_an_even_one():
    start, end = torch.zeros(6), torch.tensor([3.0, -1.0, 0.5, 2.0, 0.0, 1.0])
    scores = {}
    for name, path in (("even", even_path(9, start, end)), ("jump", jump_path(9, start, end))):
        eppl, epdv = EPPL(), EPDV()
        eppl.update(path)
        epdv.update(path)
        scores[name] = (float(eppl.compute()), float(epdv.compute()))
    distance = float((end - start).norm())
    # even pace: every scaled step equals the whole distance, so EPPL = D^2 and EPDV = 0
    assert scores["even"][0] == pytest.approx(distance**2, rel=1e-5)
    assert scores["even"][1] == pytest.approx(0.0, abs=1e-6)
    # the jump: one step of 8 * D, seven of 0
    assert scores["jump"][1] > scores["even"][1] + 1.0
    assert scores["jump"][0] == pytest.approx(distance**2 * 8, rel=1e-5)
    # per path, EPPL = mean(s)^2 + EPDV
    s = step_distances(jump_path(9, start, end))
    assert scores["jump"][0] == pytest.approx(float(s.mean() ** 2 + s.var(unbiased=False)), rel=1e-5)


def test_eppl_does_not_depend_on_the_number_of_steps_of_a_straight_path():
    start, end = torch.randn(4), torch.randn(4)
    values = []
    for steps in (5, 9, 17):
        metric = EPPL()
        metric.update(even_path(steps, start, end))
        values.append(float(metric.compute()))
    assert values == pytest.approx([values[0]] * 3, rel=1e-5)


def test_batches_of_paths_accumulate_like_single_paths():
    paths = torch.randn(3, 7, 5)
    together, apart = EPDV(), EPDV()
    together.update(paths)
    for path in paths:
        apart.update(path)
    assert float(together.compute()) == pytest.approx(float(apart.compute()), rel=1e-6)
    # a wandering path (random steps) is less even than the straight one with its ends
    straight = EPDV()
    straight.update(torch.stack([even_path(7, p[0], p[-1]) for p in paths]))
    assert float(straight.compute()) < float(together.compute())


def test_bad_paths_are_refused():
    with pytest.raises(ValueError, match="S >= 2 steps"):
        EPPL().update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 3 steps"):
        EPDV().update(torch.zeros(2, 4))
    assert torch.isnan(EPPL().compute()) and torch.isnan(EPDV().compute())


def test_monotonic_fraction():
    assert monotonic_fraction(torch.tensor([0.1, 0.2, 0.2, 0.9])) == 1.0
    assert monotonic_fraction(torch.tensor([0.1, 0.5, 0.3, 0.9])) == pytest.approx(2 / 3)
    assert monotonic_fraction(torch.tensor([0.1, 0.5, 0.49, 0.9]), tolerance=0.02) == 1.0


def test_classifier_embedding_is_what_its_emotion_head_reads():
    torch.manual_seed(0)
    classifier = EmotionClassifier(exp_dim=16, num_emotions=8, hidden=24, layers=2).eval()
    exp, mask = torch.randn(3, 20, 16), torch.ones(3, 20, dtype=torch.bool)
    mask[1, 12:] = False
    embedded = classifier.embed(exp, mask=mask)
    assert embedded.shape == (3, 24)
    logits, _ = classifier(exp, mask=mask)
    assert torch.allclose(classifier.emotion_head(embedded), logits, atol=1e-6)
    with pytest.raises(ValueError, match="E=16"):
        classifier.embed(torch.randn(2, 10, 12))
    # a path of sequences [S, T, E] -> [1, S, H]; the batch form matches
    path = torch.randn(5, 20, 16)
    assert path_embeddings(classifier, path).shape == (1, 5, 24)
    batch = path_embeddings(classifier, path[None].expand(2, -1, -1, -1), mask=torch.ones(2, 20, dtype=torch.bool))
    assert torch.allclose(batch[0], path_embeddings(classifier, path)[0], atol=1e-6)


def test_load_emotion_classifier_reads_checkpoints_and_saved_modules(tmp_path):
    from flowvq.data.card import DatasetError
    from flowvq.lightning_modules.emotion_classifier import load_emotion_classifier

    torch.manual_seed(0)
    classifier = EmotionClassifier(exp_dim=16, num_emotions=8, hidden=16, layers=1)
    torch.save(classifier, tmp_path / "classifier.pt")
    torch.save(
        {
            "state_dict": classifier.state_dict(),
            "hyper_parameters": dict(classifier.hparams),
            "pytorch-lightning_version": "2.6.0",
        },
        tmp_path / "classifier.ckpt",
    )
    exp = torch.randn(2, 12, 16)
    for name in ("classifier.pt", "classifier.ckpt"):
        loaded = load_emotion_classifier(tmp_path / name, exp_dim=16)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        assert torch.allclose(loaded.embed(exp), classifier.eval().embed(exp), atol=1e-6)
    with pytest.raises(DatasetError, match="scores E=16, the generator makes E=12"):
        load_emotion_classifier(tmp_path / "classifier.pt", exp_dim=12)
    with pytest.raises(FileNotFoundError, match="does not exist: train one"):
        load_emotion_classifier(tmp_path / "missing.ckpt")
