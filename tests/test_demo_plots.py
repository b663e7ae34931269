"""The demo's plots: every arm visible where two coincide, plain labels on the label-count axis, the denoising shown
as the README describes it (inputs, corrupted inputs, reconstructions of the corrupted inputs); the demo's config
and compile cache."""

from __future__ import annotations

import dataclasses

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


@pytest.mark.parametrize("lpcs", [(1, 5), (1, 5, 10)])  # --quick's and the full demo's label counts
def test_label_count_axis_has_plain_labels_only(lpcs) -> None:
    cfg = DemoConfig.quick(labels_per_class=lpcs)
    fig = _accuracy_figure(_summary({arm: [50.0] * len(lpcs) for arm in cfg.arms}, lpcs), cfg)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels() if t.get_text()] == [str(k) for k in lpcs]
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]  # was 2x10^0 ... 4x10^0


def test_reconstruction_plot_has_the_readmes_three_rows() -> None:
    rng = np.random.default_rng(0)
    imgs = [rng.random((4, 8, 8, 1)) for _ in range(3)]
    fig = _reconstruction_figure(imgs[0], imgs[1], imgs[2])
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["input", "corrupted", "recon. of\ncorrupted"] and len(fig.axes) == 3 * 4
    shown = fig.axes[2 * 4].images[0].get_array()  # row 3, first image: the reconstruction of the corrupted input
    np.testing.assert_allclose(shown, np.clip(imgs[2][0, ..., 0], 0, 1))
    plain = _reconstruction_figure(imgs[0], None, imgs[2])  # no denoising: inputs and reconstructions
    assert [ax.get_ylabel() for ax in plain.axes if ax.get_ylabel()] == ["input", "reconstruction"]


def test_demo_config_groups_and_quick() -> None:
    quick = DemoConfig.quick(seeds=2)
    assert quick.seeds == 2 and quick.pretrain.steps == 20 and quick.budget.steps == 10
    assert DemoConfig().pretrain.denoise == ("noise", 0.3) and DemoConfig().budget.head_lr == 1e-2
    assert len(dataclasses.fields(DemoConfig)) <= 12


def test_demo_keeps_its_compile_cache_where_the_cli_does(tmp_path, monkeypatch) -> None:
    import jaxtl.demo as demo

    seen = []
    monkeypatch.setattr(demo, "enable_compile_cache", lambda *a, **k: seen.append((a, k)) or "cache")
    monkeypatch.setattr(demo, "load_digits", lambda **k: (_ for _ in ()).throw(RuntimeError("stop here")))
    with pytest.raises(RuntimeError, match="stop here"):
        demo.run_demo(tmp_path / "out", config=DemoConfig.quick(), progress=False, verbose=False)
    assert seen == [((), {})]  # the default: $JAXTL_COMPILE_CACHE, else ~/.cache/jaxtl/xla
    assert not (tmp_path / "out" / ".jax_cache").exists()
