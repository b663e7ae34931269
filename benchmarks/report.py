"""The README results table, generated from ``benchmarks/results/*.json``: ``python -m benchmarks.report``.

Prints the markdown; ``--write README.md`` replaces the text between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` in that file (the markers must be there, once each). Never type the table by hand.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from benchmarks.common import RESULTS_DIR

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
DEMO_START, DEMO_END = "<!-- demo:start -->", "<!-- demo:end -->"
ORDER = (
    "train_steps",
    "end_to_end",
    "folder_finetune",
    "data_pipeline",
    "data_pipeline_rss",
    "scaling",
    "bridge",
    "cpu_workarounds",
)


def replace_between_markers(text: str, block: str, start: str = START, end: str = END) -> str:
    """``text`` with everything strictly between the ``start`` and ``end`` markers replaced by ``block``."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0:
        missing = [m for m, k in ((start, i), (end, j)) if k < 0]
        raise ValueError(f"marker(s) {', '.join(missing)} not found")
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"markers {start} / {end} must each appear exactly once")
    if j < i:
        raise ValueError(f"{end} comes before {start}")
    return text[: i + len(start)] + "\n" + block.strip("\n") + "\n" + text[j:]


def load_results(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
    """``{file stem: payload}`` for every ``*.json`` in ``directory`` (bad files raise naming the file)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(payload, dict) or "results" not in payload or "machine" not in payload:
            raise ValueError(f"{path}: expected an object with 'machine' and 'results'")
        payload.setdefault("benchmark", path.stem)
        out[path.stem] = payload
    return out


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"
    return str(x)


def _ratio(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def commit_text(info: dict[str, Any]) -> str:
    """``"commit 3f0e619"`` (``+ uncommitted changes`` when the tree was dirty; ``(from git log)`` when backfilled)
    from a results file's ``commit``/``commit_dirty``/``commit_note``; ``"commit not recorded"`` without one."""
    commit = info.get("commit")
    if not commit:
        return "commit not recorded"
    text = f"commit {commit[:7]}"
    if info.get("commit_dirty"):
        text += " + uncommitted changes"
    if info.get("commit_note"):
        text += " (from git log)"
    return text


def machine_line(machine: dict[str, Any]) -> str:
    cpu = machine.get("gpu") or machine.get("cpu_model") or machine.get("processor", "?")
    parts = [
        f"{cpu} ({machine.get('cpu_count', '?')} CPU cores)",
        f"jax {machine.get('jax', '?')} on {machine.get('jax_backend', '?')}",
    ]
    if "torch" in machine:
        parts.append(f"torch {machine['torch']} ({machine.get('torch_threads', '?')} threads)")
    parts.append(commit_text(machine))
    return ", ".join(parts)


def _train_steps(p: dict[str, Any]) -> str:
    rows = []
    arch = p["settings"].get("arch", "?")
    has_mfu = any("mfu" in r["jaxtl"] for r in p["results"])
    for r in p["results"]:
        t = r.get("torch") or {}
        model = "convnet autoencoder" if r["mode"] == "autoencoder" else r.get("arch", arch)
        row = [
            model,
            r["mode"],
            f"{r['image_size']}x{r['image_size']} b{r['batch_size']}",
            r["dtype"],
            f"{_f(r['jaxtl']['median_s'] * 1e3)} ms/{r['unit']}",
            f"{_f(t['median_s'] * 1e3)} ms/{r['unit']}" if t else "-",
            _ratio(r.get("ratio")),
            _f(r["jaxtl"]["images_per_s"]),
            _f(r["first_call_s"]["jaxtl"]),
        ]
        if has_mfu:
            row.append(_f(100 * r["jaxtl"]["mfu"], 2) + "%" if "mfu" in r["jaxtl"] else "-")
        rows.append(row)
    headers = ["model", "mode", "input", "dtype", "jaxtl", "PyTorch", "jaxtl/torch", "jaxtl img/s", "compile s"]
    if has_mfu:
        headers.append("MFU")
    return _table(headers, rows)


def _end_to_end(p: dict[str, Any]) -> str:
    rows = []
    for r in p["results"]:
        rows.append([r["side"], str(r["steps"]), _f(r["wall_s"]), _ratio(r.get("ratio_to_torch"))])
    s = p["settings"]
    head = (
        f"{s.get('arch')} frozen backbone, {s.get('examples')} images {s.get('image_size')}x{s.get('image_size')}, "
        f"{s.get('epochs')} epochs, batch {s.get('batch_size')}, same optimizer steps on each side:\n\n"
    )
    return head + _table(["run", "optimizer steps", "wall s", "time / PyTorch"], rows)


def _folder_finetune(p: dict[str, Any]) -> str:
    s = p["settings"]
    head = (
        f"{s.get('arch')} from random torchvision weights (.pth), {s.get('images')} generated JPEGs in "
        f"{s.get('classes')} class folders ({s.get('train_images_per_epoch')} train, the rest held out), "
        f"{s.get('augment')}, batch {s.get('batch_size')}, {s.get('epochs')} epochs, {s.get('optimizer')}, "
        f"{s.get('workers')} loader worker(s) a side; wall time of a whole run in a fresh process (start-up, "
        "compilation, workers, training, evaluation), median of "
        f"{s.get('repeats')} alternated runs; img/s = training images / wall time, 'steps' = the training steps' "
        "own rate (start-up excluded):\n\n"
    )
    has_cli = any("jaxtl CLI" in r for r in p["results"])
    has_warm = any("jaxtl warm" in r for r in p["results"])
    rows = []
    for r in p["results"]:
        j, t = r["jaxtl"], r.get("torch") or {}
        row = [
            r["mode"],
            _f(j["wall_s"]),
            _f(t.get("wall_s")),
            _ratio(r.get("ratio")),
            _f(j["images_per_s"]),
            _f(t.get("images_per_s")),
            f"{_f(j.get('step_images_per_s'))} / {_f(t.get('step_images_per_s'))}",
        ]
        if has_warm:
            w = r.get("jaxtl warm") or {}
            row += [_f(w.get("wall_s")), _ratio(r.get("warm_ratio"))]
        if has_cli:
            c = r.get("jaxtl CLI") or {}
            row += [_f(c.get("wall_s")), _ratio(r.get("cli_ratio"))]
        rows.append(row)
    headers = ["mode", "jaxtl s", "torch s", "jaxtl/torch", "jaxtl img/s", "torch img/s", "steps img/s, jaxtl / torch"]
    if has_warm:
        headers += ["jaxtl re-run s (caches warm)", "re-run/torch"]
    if has_cli:
        headers += ["`jaxtl finetune` s", "CLI/torch"]
    load = s.get("load_average_1min")
    tail = f"\n\nLoad average (1 min) after each run: median {_f(load['median'], 2)}." if load else ""
    return head + _table(headers, rows) + tail + _startup_profiles(p["results"])


def _startup_profiles(results: list[dict[str, Any]]) -> str:
    """jaxtl's start-up profile per mode (first run and re-run side by side), when the results hold one: each
    phase's median start and length in seconds from the process start; phases in threads overlap others."""
    out = []
    for r in results:
        sides = [(name, r[name]) for name in ("jaxtl", "jaxtl warm") if "profile" in r.get(name, {})]
        if not sides:
            continue
        start: dict[str, float] = {}
        for _, side in sides:
            for ph in side["profile"]:
                start[ph["phase"]] = min(start.get(ph["phase"], ph["start_s"]), ph["start_s"])
        names = sorted(start, key=lambda n: start[n])
        table = []
        for name in names:
            row = [name]
            for _, side in sides:
                ph = next((x for x in side["profile"] if x["phase"] == name), None)
                row.append("-" if ph is None else f"{_f(ph['start_s'], 2)} + {_f(ph['s'], 2)}")
            table.append(row)
        counts = []
        for label, side in sides:
            j = side.get("jax") or {}
            if j:
                what = "first run" if label == "jaxtl" else "re-run"
                counts.append(
                    f"{what}: {int(j.get('compiled', 0))} programs compiled, {int(j.get('cache_hits', 0))} from "
                    "the persistent cache"
                )
        headers = ["phase (start s + seconds)", *[("first run" if n == "jaxtl" else "re-run") for n, _ in sides]]
        out.append(
            f"Start-up profile, {r['mode']} (medians; phases in threads overlap the others):\n\n"
            + _table(headers, table)
            + ("\n\n" + "; ".join(counts) + "." if counts else "")
        )
    return "".join("\n\n" + o for o in out)


def _rss_rows(rss: list[dict[str, Any]]) -> str:
    """Peak RSS per run, streaming passes and whole ``jaxtl finetune`` runs apart (their ``mode`` says which),
    with each kind's growth from its smallest folder to its largest."""
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rss):
        runs = sorted((r for r in rss if r["mode"] == mode), key=lambda r: r["folder_images"])
        what = "a whole run" if mode.startswith("jaxtl finetune") else "a streaming pass"
        table = _table(
            ["images in the folder", "main process MiB", "largest worker MiB", "wall s"],
            [
                [
                    f"{r['folder_images']:,}",
                    _f(r["peak_rss_mib"])
                    + (" ({}-{})".format(*map(_f, r["peak_rss_mib_range"])) if "peak_rss_mib_range" in r else ""),
                    _f(r.get("worker_peak_rss_mib")),
                    _f(r.get("wall_s")),
                ]
                for r in runs
            ],
        )
        repeats = max(len(r.get("runs", [r])) for r in runs)
        each = f", median (min-max) of {repeats} runs per size, sizes alternating" if repeats > 1 else ""
        text = f"Peak RSS of {what} (`{mode}`{each}):\n\n{table}"
        if len(runs) > 1:
            first, last = runs[0], runs[-1]
            text += (
                f"\n\n{last['folder_images']:,} vs {first['folder_images']:,} images: main process "
                f"{round(last['peak_rss_mib'] - first['peak_rss_mib']):+d} MiB."
            )
        out.append(text)
    return "\n\n".join(out)


def _data_pipeline(p: dict[str, Any]) -> str:
    s = p["settings"]
    if not p["results"]:  # --rss-only: memory, no throughput
        head = (
            f"Generated JPEG folders (sides {s.get('image_sides')}), {s.get('image_size')} px, batch "
            f"{s.get('batch_size')}, {s.get('rss_workers')} loader worker(s); a whole run is resnet18 from random "
            "torchvision weights, converted and compiled afresh; the main process's peak is the kernel's "
            "high-water mark, a worker's is sampled:\n\n"
        )
        return head + (_rss_rows(p.get("rss") or []) or "(no results)")
    head = (
        f"{s.get('images')} generated JPEGs (sides {s.get('image_sides')}), {s.get('transforms')}, batch "
        f"{s.get('batch_size')}, {s.get('epochs')} epochs per side; 'all epochs' includes starting the workers, "
        "'warm' the epochs after the first:\n\n"
    )
    rows = []
    for r in p["results"]:
        j, t = r["jaxtl"], r["torch"]
        rows.append(
            [
                str(r["workers"]),
                _f(j["images_per_s"]),
                _f(t["images_per_s"]),
                _ratio(r.get("ratio")),
                _f(j["warm_images_per_s"]),
                _f(t["warm_images_per_s"]),
                _ratio(r.get("warm_ratio")),
            ]
        )
    headers = ["workers", "jaxtl img/s", "torch img/s", "jaxtl/torch", "jaxtl warm", "torch warm", "warm ratio"]
    out = head + _table(headers, rows)
    fed = p.get("feed")
    if fed:
        out += "\n\n" + (
            f"Feeding a train step ({fed['arch']} {fed['dtype']} on {fed['device']}, {fed['workers']} workers, "
            f"{fed['steps']} timed steps):\n\n"
        )
        out += _table(
            ["fed by the pipeline, img/s", "on a batch already on the device, img/s", "fed / alone", "limit"],
            [
                [
                    _f(fed["fed_images_per_s"]),
                    _f(fed["step_alone_images_per_s"]),
                    f"{fed['fed_over_alone']:.2f}",
                    fed["limit"],
                ]
            ],
        )
    if p.get("rss"):
        out += "\n\n" + _rss_rows(p["rss"])
    return out


def _scaling(p: dict[str, Any]) -> str:
    note = ""
    if p["machine"].get("jax_backend") == "cpu":
        note = (
            "On CPU the devices are fake (`--xla_force_host_platform_device_count`) and share the same cores, so this"
            " measures the data-parallel overhead, not a speed-up.\n\n"
        )
    return note + _scaling_table(p)


def _scaling_table(p: dict[str, Any]) -> str:
    rows = []
    for r in p["results"]:
        rows.append([r["axis"], str(r["devices"]), str(r["batch_size"]), _f(r["images_per_s"]), _f(r.get("step_s"))])
    return _table(["sweep", "devices", "global batch", "img/s", "s/step"], rows)


def _bridge(p: dict[str, Any]) -> str:
    rows = [
        [
            r["arch"],
            _f(r["from_torch_s"]),
            _f(r["to_torch_s"]),
            f"{r['max_abs_diff']:.2e}",
            f"{r['max_abs_diff'] / r['max_abs_logit']:.1e}" if r.get("max_abs_logit") else "-",
        ]
        for r in p["results"]
    ]
    headers = ["arch", "torch->jaxtl s", "jaxtl->torch s", "max abs diff, eval logits", "relative to max abs logit"]
    return _table(headers, rows)


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.0f} ms"


def _cpu_workarounds(p: dict[str, Any]) -> str:
    res, st = p["results"], p["settings"]
    flag = {r["setting"]: r for r in res["flag"]}
    names = list(flag)
    default = flag[names[0]]
    headers = ["case", *names, "speed-up, last vs first"]
    rows = []
    for mode in ("inference", "full"):
        rows.append(
            [
                f"{st['flag_model']}, {mode}",
                *[f"{1e3 * flag[n][mode]['step_s']:.0f} ms" for n in names],
                f"{default[mode]['step_s'] / flag[names[-1]][mode]['step_s']:.2f}x",
            ]
        )
        if "page_faults_per_step" in default[mode]:
            rows.append(
                [
                    f"{mode}: page faults, system time per step",
                    *[
                        f"{flag[n][mode]['page_faults_per_step']:.0f}, {_ms(flag[n][mode]['system_s_per_step'])}"
                        for n in names
                    ],
                    "",
                ]
            )
    table = _table(headers, rows)
    conv = {r["impl"]: r for r in res["conv"]}
    conv_rows = [
        [
            f"{st['conv']}, {label}",
            f"{1e3 * conv['xla'][key]:.1f} ms",
            f"{1e3 * conv['im2col'][key]:.1f} ms",
            f"{conv['xla'][key] / conv['im2col'][key]:.1f}x",
        ]
        for key, label in (("forward_s", "forward"), ("forward_backward_s", "forward+backward"))
    ]
    return table + "\n\n" + _table(["case", "XLA convolution", "jaxtl im2col", "speed-up"], conv_rows)


RENDER = {
    "train_steps": _train_steps,
    "end_to_end": _end_to_end,
    "scaling": _scaling,
    "bridge": _bridge,
    "cpu_workarounds": _cpu_workarounds,
    "data_pipeline": _data_pipeline,
    "folder_finetune": _folder_finetune,
}
TITLES = {
    "cpu_workarounds": (
        "jaxtl's CPU workarounds (process settings: YNNPACK convolutions off, malloc reuse; im2col for tiny maps)"
    ),
    "train_steps": "Step time, jaxtl vs PyTorch (medians of alternated runs; ratio < 1 means jaxtl is faster)",
    "end_to_end": "End to end: frozen-backbone fine-tuning",
    "scaling": "Scaling with devices and batch size (jaxtl)",
    "bridge": "torchvision bridge: conversion time and agreement",
    "data_pipeline": "Input pipeline: images/s, jaxtl (grain workers) vs torchvision ImageFolder + DataLoader "
    "(ratio > 1 means jaxtl is faster)",
    "data_pipeline_rss": "Input pipeline memory: peak RSS for image folders of two sizes",
    "folder_finetune": "Fine-tuning from an image folder: jaxtl vs the PyTorch loop, whole runs "
    "(ratio < 1 means jaxtl is faster)",
}


def render(results: dict[str, dict[str, Any]]) -> str:
    """The markdown block for the README from loaded result payloads."""
    if not results:
        raise ValueError("no benchmark results to report; run e.g. python -m benchmarks.train_steps first")
    parts = ["_Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; do not edit._", ""]
    names = [n for n in ORDER if n in results] + sorted(n for n in results if n not in ORDER)
    for name in names:
        p = results[name]
        parts.append(
            f"**{TITLES.get(name, TITLES.get(p.get('benchmark', ''), name))}** - {machine_line(p['machine'])}, "
            f"dtype {p['settings'].get('dtype', '-')}"
        )
        parts.append("")
        kind = name if name in RENDER else p.get("benchmark", name)  # gpu_*.json: by the benchmark that wrote it
        parts.append(RENDER[kind](p) if kind in RENDER else f"(no renderer for {name})")
        parts.append("")
    return "\n".join(parts)


def render_demo(res: dict[str, Any], source: str) -> str:
    """The README block for a ``jaxtl demo`` results.json: mean +/- std test accuracy per arm and label count."""
    try:
        cfg, summary = res["config"], res["summary"]
        lpcs = [str(n) for n in cfg["labels_per_class"]]
        header = ["arm", *[f"{n} label{'s' if n != '1' else ''}/class" for n in lpcs]]
        rows = [
            [f"`{arm}`", *[f"{100 * cols[n]['mean']:.1f} ± {100 * cols[n]['std']:.1f}" for n in lpcs]]
            for arm, cols in summary.items()
        ]
        pre, data, t = res["pretrain"], res["data"], res["timings"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{source}: not a jaxtl demo results.json (missing {err})") from None
    machine = res.get("machine", {})
    versions = res.get("versions", {})
    where = (
        f"{machine['cpu_model']} ({machine.get('cpu_count', '?')} CPU cores)"
        if "cpu_model" in machine
        else f"{versions.get('platform', 'an unrecorded machine')} (CPU model not recorded)"
    )
    lines = [
        f"_Generated by `python -m benchmarks.report --demo {source}` from `jaxtl demo`'s results; do not edit._",
        "",
        f"Produced by {commit_text(res)} on {where}, jax {versions.get('jax', '?')}. Timings vary with the machine "
        "and its load, accuracies in their last digits with the CPU (float rounding); on one machine the demo is "
        "deterministic.",
        "",
        f"Test accuracy (%) on {data['test']} held-out digits, mean ± std over {cfg['seeds']} seeds "
        f"({', '.join(res.get('devices', [])[:1]) or 'CPU'}; the whole run took {t['total_s']:.0f} s, "
        f"{t['pretrain_s']:.0f} s of it pretraining):",
        "",
        _table(header, rows),
        "",
        f"Budget: {res['budget']}. The autoencoder trained {pre['steps']} steps on {data['pool']} unlabeled images "
        f"(denoising: {pre['denoise']}); train MSE {pre['train_loss_first']:.4f} → {pre['train_loss_last']:.4f}, "
        f"test MSE {pre['test_mse']:.4f}.",
    ]
    return "\n".join(lines)


def _update(path: pathlib.Path, block: str, start: str, end: str) -> None:
    if not path.exists():
        raise SystemExit(f"--write {path}: no such file")
    try:
        new = replace_between_markers(path.read_text(), block, start, end)
    except ValueError as err:
        raise SystemExit(f"--write {path}: {err}") from None
    path.write_text(new)
    print(f"updated {path} between {start} and {end}")


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=pathlib.Path, default=RESULTS_DIR, help="folder of benchmark JSON files")
    p.add_argument("--write", type=pathlib.Path, default=None, help="markdown file with bench markers to update")
    p.add_argument("--demo", type=pathlib.Path, default=None, help="a `jaxtl demo` results.json: report it instead")
    args = p.parse_args(argv)
    if args.demo is not None:
        try:
            block = render_demo(json.loads(args.demo.read_text()), str(args.demo))
        except (OSError, json.JSONDecodeError, ValueError) as err:
            raise SystemExit(f"--demo {args.demo}: {err}") from None
        start, end = DEMO_START, DEMO_END
    else:
        block = render(load_results(args.results))
        start, end = START, END
    if args.write is None:
        print(block)
    else:
        _update(args.write, block, start, end)
    return block


if __name__ == "__main__":
    main()
