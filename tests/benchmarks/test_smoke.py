"""Each benchmark's --smoke mode runs end to end (in process where possible) and writes its JSON; the README table
generator renders fixture results and replaces exactly the text between the markers."""

from __future__ import annotations

import json
import pathlib

import pytest

pytest.importorskip("torch")

from benchmarks import bridge, end_to_end, report, scaling, train_steps

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "train_steps.json"


def test_train_steps_smoke(tmp_path: pathlib.Path) -> None:
    # --arch's rows (convnet_small under --smoke), then the other families' rows: a ViT and a ConvNeXt shrunk to a
    # few layers on both sides, in full, frozen and inference (not the probe: --extra-modes).
    out = tmp_path / "train_steps.json"
    payload = train_steps.main(["--smoke", "--modes", "full", "frozen", "inference", "probe", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(payload["results"]))
    rows = [(r["arch"], r["mode"]) for r in saved["results"]]
    extra = [(a, m) for a in ("vit_b_16", "convnext_tiny") for m in ("full", "frozen", "inference")]
    assert rows == [("convnet_small", m) for m in ("full", "frozen", "inference", "probe")] + extra
    assert {r["image_size"] for r in saved["results"][4:]} == {32}
    for r in saved["results"]:
        assert r["jaxtl"]["n"] == 2 and r["torch"]["n"] == 2
        assert r["jaxtl"]["median_s"] > 0 and r["torch"]["median_s"] > 0
        assert r["ratio"] == pytest.approx(r["jaxtl"]["median_s"] / r["torch"]["median_s"])
    assert saved["machine"]["jax_backend"] == "cpu"


def test_train_steps_cases_in_fresh_processes(tmp_path: pathlib.Path) -> None:
    # Without --smoke/--in-process every case runs in a process of its own and comes back as the same record.
    args = ["--arch", "convnet_small", "--image-size", "16", "--batch-size", "4", "--repeats", "1", "--extra-archs"]
    payload = train_steps.main([*args, "--modes", "frozen", "inference", "--out", str(tmp_path / "ts.json")])
    assert [r["mode"] for r in payload["results"]] == ["frozen", "inference"]
    for r in payload["results"]:
        assert r["jaxtl"]["n"] == 1 and r["torch"]["n"] == 1 and r["ratio"] > 0 and r["wall_s"] > 0
    # A case that fails in its own process (here: an unknown arch) stops the run, naming the case.
    with pytest.raises(SystemExit, match="case no_such_arch frozen 16x16 b3 failed"):
        train_steps.main(
            ["--arch", "no_such_arch", "--image-size", "16", "--batch-size", "3", "--modes", "frozen", "--extra-archs"]
        )


def test_train_steps_autoencoder_smoke(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "ts.json"
    payload = train_steps.main(["--smoke", "--modes", "autoencoder", "--no-torch", "--out", str(out)])
    (r,) = payload["results"]  # no other family's rows: --extra-modes has no autoencoder
    assert r["mode"] == "autoencoder" and r["arch"] == "convnet_ae" and "torch" not in r
    assert r["jaxtl"]["images_per_s"] > 0


def test_end_to_end_smoke(tmp_path: pathlib.Path) -> None:
    payload = end_to_end.main(["--smoke", "--out", str(tmp_path / "e2e.json")])
    sides = {r["side"]: r for r in payload["results"]}
    warm = "jaxtl fit, re-run (warm compile cache)"
    assert set(sides) == {"jaxtl fit", "jaxtl linear probe", "jaxtl finetune(mode='frozen')", "PyTorch loop", warm}
    assert len(sides[warm]["samples_s"]) == 1 and sides[warm]["wall_s"] > 0
    assert len({r["steps"] for r in sides.values()}) == 1
    # The fast path (called directly, or taken by finetune by itself) trains the same head as fit (same data order
    # and optimizer), up to float32 rounding.
    assert payload["fit_vs_probe_head_max_abs_diff"] < 1e-4


def test_scaling_smoke(tmp_path: pathlib.Path) -> None:
    payload = scaling.main(["--smoke", "--out", str(tmp_path / "scaling.json")])
    got = [(r["axis"], r["devices"], r["batch_size"]) for r in payload["results"]]
    assert got == [("devices", 1, 4), ("devices", 2, 4), ("batch", 1, 4)]
    assert payload["results"][2]["step_s"] == payload["results"][0]["step_s"]  # the same point, run once
    assert all(r["images_per_s"] > 0 for r in payload["results"])


def test_bridge_smoke(tmp_path: pathlib.Path) -> None:
    payload = bridge.main(["--smoke", "--out", str(tmp_path / "bridge.json")])
    got = [(r["arch"], r["weights"], r["image_size"]) for r in payload["results"]]
    assert got == [("resnet18", "DEFAULT", 32), ("convnext_tiny", "DEFAULT", 32), ("vit_b_32", "IMAGENET1K_V1", 224)]
    for r in payload["results"]:
        assert r["max_abs_logit"] > 0.1 and r["max_abs_diff"] < 1e-4 * max(1.0, r["max_abs_logit"]), r["arch"]
        assert r["pretrained_cached_s"] < r["pretrained_first_s"]


def test_mfu_only_with_a_peak() -> None:
    assert train_steps.gflop_per_image("resnet50", "full", 224) == pytest.approx(24.5)
    assert train_steps.gflop_per_image("resnet50", "inference", 112) == pytest.approx(8.2 / 4)
    assert train_steps.gflop_per_image("resnet18", "full", 224) is None
    assert train_steps.gflop_per_image("vit_b_16", "inference", 224) == pytest.approx(35.1)
    assert train_steps.gflop_per_image("vit_b_16", "full", 384) is None  # attention does not scale by pixels
    assert train_steps.gflop_per_image("convnext_tiny", "full", 224) == pytest.approx(3 * 8.9)


def test_replace_between_markers() -> None:
    text = f"# t\nbefore\n{report.START}\nold table\n{report.END}\nafter\n"
    new = report.replace_between_markers(text, "| a |\n")
    assert new == f"# t\nbefore\n{report.START}\n| a |\n{report.END}\nafter\n"
    assert report.replace_between_markers(new, "| a |") == new  # idempotent
    with pytest.raises(ValueError, match="not found"):
        report.replace_between_markers("no markers", "x")
    with pytest.raises(ValueError, match="exactly once"):
        report.replace_between_markers(text + report.START, "x")


def test_report_renders_fixture_and_writes_readme(tmp_path: pathlib.Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "train_steps.json").write_text(FIXTURE.read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\n{report.END}\nouttro\n")
    block = report.main(["--results", str(results), "--write", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outtro\n")
    assert block.strip() in text
    assert "Test CPU 9000" in block  # the machine is named
    assert "| resnet50 | full | 224x224 b8 | float32 | 1200 ms/step | 1000 ms/step | 1.20x |" in block
    assert "MFU" not in block  # CPU fixture: no MFU column


def test_report_errors(tmp_path: pathlib.Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json"):
        report.load_results(tmp_path)
    with pytest.raises(SystemExit, match="no such file"):
        report.main(["--results", str(FIXTURE.parent), "--write", str(tmp_path / "missing.md")])


def test_report_renders_demo_results(tmp_path: pathlib.Path) -> None:
    summary = {
        arm: {"1": {"mean": 0.5 + i / 10, "std": 0.01}, "5": {"mean": 0.8, "std": 0.02}}
        for i, arm in enumerate(("scratch", "full"))
    }
    res = {
        "config": {"labels_per_class": [1, 5], "seeds": 3},
        "summary": summary,
        "pretrain": {
            "steps": 10,
            "denoise": ["noise", 0.3],
            "train_loss_first": 0.2,
            "train_loss_last": 0.01,
            "test_mse": 0.02,
        },
        "data": {"test": 449, "pool": 1348},
        "timings": {"total_s": 98.0, "pretrain_s": 41.0},
        "budget": "every arm: 100 steps",
        "devices": ["TFRT_CPU_0"],
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    readme = tmp_path / "README.md"
    readme.write_text(
        "a\n<!-- demo:start -->\nold\n<!-- demo:end -->\nb\n<!-- bench:start -->\nkeep\n<!-- bench:end -->\n"
    )
    report.main(["--demo", str(path), "--write", str(readme)])
    text = readme.read_text()
    assert "| `full` | 60.0 ± 1.0 | 80.0 ± 2.0 |" in text and "old" not in text and "keep" in text
    assert "449 held-out digits" in text and "over 3 seeds" in text
    path.write_text(json.dumps({"results": []}))
    with pytest.raises(SystemExit, match=r"not a jaxtl demo results\.json"):
        report.main(["--demo", str(path)])


def test_cpu_workarounds_smoke(tmp_path: pathlib.Path) -> None:
    from benchmarks import cpu_workarounds

    out = tmp_path / "cpu_workarounds.json"
    payload = cpu_workarounds.main(["--smoke", "--out", str(out)])
    runs = {r["setting"]: r for r in payload["results"]["flag"]}
    default, flag_only, untrimmed, tuned = (runs[name] for name in cpu_workarounds.SETTINGS)
    assert "ynn_fusion_type" not in default["xla_flags"] and not any(default["cpu_tuning"].values())
    assert "ynn_fusion_type" in flag_only["xla_flags"]
    assert flag_only["cpu_tuning"] == {"xla_flag": True, "malloc": False}
    assert tuned["cpu_tuning"] == untrimmed["cpu_tuning"] == {"xla_flag": True, "malloc": True}
    assert all(r["full"]["page_faults_per_step"] >= 0 and r["full"]["cpu_s_per_step"] > 0 for r in runs.values())
    assert {r["impl"] for r in payload["results"]["conv"]} == {"xla", "im2col"}
    assert "| case |" in report.render(report.load_results(tmp_path))
