"""The demo's plots: every arm visible where two coincide, the denoising shown (corrupted input and its recon.)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtl.demo import DemoConfig, _accuracy_figure, _coinciding, _reconstruction_figure

pytest.importorskip("matplotlib")


def _summary(means: dict[str, list[float]], lpcs: tuple[int, ...]) -> dict:
    return {
        arm: {str(k): {"mean": m / 100, "std": 0.01, "top1": [m / 100]} for k, m in zip(lpcs, values)}
        for arm, values in means.items()
    }


def test_coinciding_groups_arms_equal_at_every_point() -> None:
    means = {"scratch": [60.0, 80.0], "linear_probe": [70.0, 85.0], "frozen": [70.0, 85.02], "full": [70.0, 90.0]}
    assert _coinciding(means) == [["linear_probe", "frozen"]]
    assert _coinciding({"a": [1.0], "b": [2.0]}) == []


def test_accuracy_plot_draws_coinciding_arms_apart_and_says_so() -> None:
    cfg = DemoConfig(labels_per_class=(1, 5, 10), seeds=3)
    means = {
        "scratch": [66.5, 88.5, 93.6],
        "linear_probe": [68.0, 83.4, 86.9],
        "frozen": [68.0, 83.4, 86.9],
        "full": [71.0, 90.3, 94.4],
    }
    fig = _accuracy_figure(_summary(means, cfg.labels_per_class), cfg)
    ax = fig.axes[0]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert sorted(lines) == sorted(means)
    xs = {arm: tuple(np.round(np.asarray(line.get_xdata(), float), 6)) for arm, line in lines.items()}
    assert len(set(xs.values())) == len(means), xs  # no two arms at the same x positions
    assert len({(line.get_marker(), line.get_linestyle()) for line in lines.values()}) == len(means)
    np.testing.assert_allclose(np.asarray(lines["frozen"].get_ydata(), float), means["frozen"])
    notes = [t.get_text() for t in ax.texts]
    assert any("linear_probe = frozen" in n for n in notes), notes


def test_accuracy_plot_has_no_note_when_no_arms_coincide() -> None:
    cfg = DemoConfig(labels_per_class=(1, 5), arms=("scratch", "full"))
    fig = _accuracy_figure(_summary({"scratch": [60.0, 80.0], "full": [70.0, 90.0]}, (1, 5)), cfg)
    assert not fig.axes[0].texts


def test_reconstruction_plot_shows_the_reconstruction_of_the_corrupted_input() -> None:
    rng = np.random.default_rng(0)
    imgs = [rng.random((4, 8, 8, 1)) for _ in range(4)]
    fig = _reconstruction_figure(imgs[0], imgs[1], imgs[2], imgs[3])
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["input", "corrupted", "recon. of\ncorrupted", "recon. of\ninput"]
    shown = fig.axes[2 * 4].images[0].get_array()  # row 3, first image: the reconstruction of the corrupted input
    np.testing.assert_allclose(shown, np.clip(imgs[3][0, ..., 0], 0, 1))
    plain = _reconstruction_figure(imgs[0], imgs[1], None, None)  # no denoising: inputs and reconstructions
    assert [ax.get_ylabel() for ax in plain.axes if ax.get_ylabel()] == ["input", "recon. of\ninput"]
