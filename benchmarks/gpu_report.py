"""Tables of a ``benchmarks.gpu_run`` run, as text (printed last) and markdown (``summary.md``), from its records.

``python -m benchmarks.gpu_report DIR`` prints them again from ``DIR/summary.json`` and ``DIR/results.jsonl``.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

Table = tuple[str, list[str], list[list[Any]]]


def _fmt(c: Any) -> str:
    if c is None:
        return "-"
    if isinstance(c, bool):
        return str(c)
    if isinstance(c, float):
        if c != c:  # nan
            return "nan"
        if c == 0 or 1e-3 <= abs(c) < 1e5:
            return f"{c:.3g}" if abs(c) < 1000 else f"{c:.0f}"
        return f"{c:.2e}"
    return str(c)


def _ms(s: Any) -> float | None:
    return None if s is None else 1000.0 * float(s)


def _mib(x: Any) -> float | None:
    return None if x is None else float(x) / 2**20


def tables(phases: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> list[Table]:
    """(title, headers, rows) of every table with something in it."""

    def of(kind: str) -> list[dict[str, Any]]:
        return [r for r in records if r.get("kind") == kind]

    out: list[Table] = []
    rows = [[p["phase"], p["status"], p.get("seconds"), p.get("error") or p.get("headline", "")] for p in phases]
    out.append(("Phases", ["phase", "status", "s", "result"], rows))
    checks = {r["name"]: r for r in of("check")}
    machine = next(iter(of("machine")), None)
    if machine:
        v = machine.get("versions", {})
        smi = machine.get("nvidia_smi") or {}
        jaxtl_file = checks.get("jaxtl", {}).get("file")
        row = [machine.get("python"), v.get("jax"), v.get("jaxlib"), v.get("flax"), v.get("optax"), v.get("grain"),
               v.get("torch"), smi.get("name"), smi.get("driver_version"), machine.get("cores"),
               jaxtl_file]  # fmt: skip
        heads = ["python", "jax", "jaxlib", "flax", "optax", "grain", "torch", "gpu", "driver", "cores", "jaxtl from"]
        out.append(("Environment", heads, [row]))
    rows = []
    for r in of("step"):
        c, mem = r.get("census", {}), r.get("memory") or {}
        rows.append([
            f"{r['arch']} {r['mode']}", r.get("math", r["dtype"]), r["batch_size"], r["compile_s"], r["images_per_s"],
            _ms(r["step_median_s"]), r.get("model_tflops"), r.get("mfu"), r.get("device_peak_mib_so_far"),
            _mib(mem.get("temp_size_in_bytes")), c.get("cudnn_convolutions"), c.get("copies"), c.get("transposes"),
            c.get("conditionals"),
        ])  # fmt: skip
    if rows:
        heads = ["program", "math", "batch", "compile_s", "img/s", "step_ms", "TFLOP/s", "MFU", "peak_MiB_so_far",
                 "temp_MiB", "cudnn_conv", "copies", "transposes", "conditionals"]  # fmt: skip
        out.append(("jaxtl steps (img/s: n steps, one sync; step_ms: median of synced steps)", heads, rows))
    rows = [["pipeline alone", r["workers"], r["steady_images_per_s"], None, None] for r in of("pipeline")]
    rows += [[f"feeding {r['mode']} {r['dtype']}", r["workers"], r["fed_images_per_s"], r["resident_images_per_s"],
              r["limit"]] for r in of("feed")]  # fmt: skip
    if rows:
        out.append(("grain pipeline", ["what", "workers", "img/s", "resident img/s", "limit"], rows))
    rows = [[r["label"], r["reference"], r["loss_rel_diff"], r["update_rel_diff"], r["bn_mean_rel_diff"],
             r["bn_var_rel_diff"]] for r in of("gpu_vs_cpu")]  # fmt: skip
    if rows:
        heads = ["step", "vs", "loss rel", "update rel", "BN mean rel", "BN var rel"]
        out.append(("one SGD step, accelerator vs CPU (relative differences)", heads, rows))
    rows = [[r["mode"], r["dtype"], r["batch_size"], r["images_per_s"], _ms(r["step_median_s"]), r.get("peak_mib"),
             r.get("jaxtl_images_per_s"), r.get("jaxtl_over_torch")] for r in of("torch")]  # fmt: skip
    if rows:
        heads = ["mode", "dtype", "batch", "torch img/s", "step_ms", "peak_MiB", "jaxtl img/s", "jaxtl/torch"]
        out.append(("PyTorch (AMP bf16 channels_last, cudnn.benchmark; f32 as torch defaults)", heads, rows))
    rows = [[r["arch"], r["device"], r["image_size"], r["max_abs_diff"], r["max_abs_logit"]] for r in of("bridge")]
    if rows:
        out.append(
            ("bridge parity (eval logits, full f32)", ["arch", "device", "size", "max|diff|", "max|logit|"], rows)
        )
    return out


def _render(tabs: list[Table], table: Callable[[list[str], list[list[Any]]], str], title: Callable[[str], str]) -> str:
    return "\n".join(title(t) + "\n" + table(h, r) for t, h, r in tabs)


def _text_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text(phases: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> str:
    """The summary printed last: one table per kind of result."""
    return "\n=== summary ===\n" + _render(tables(phases, records), _text_table, lambda t: f"-- {t}")


def markdown(payload: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    src = payload.get("source") or {}
    commit = src.get("commit", "unknown commit")[:12] + (" (dirty)" if src.get("commit_dirty") else "")
    head = f"# gpu_run at {commit}, {payload.get('elapsed_s')}s{'' if payload.get('finished') else ' (running)'}\n\n"
    return head + _render(tables(payload["phases"], records), _md_table, lambda t: f"\n### {t}\n")


def load(out: pathlib.Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(summary.json, results.jsonl records)`` of a run folder; a torn last line (a kill mid-write) is skipped."""
    payload = json.loads((out / "summary.json").read_text())
    records = []
    for line in (out / "results.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return payload, records


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m benchmarks.gpu_report DIR")
    payload, records = load(pathlib.Path(args[0]))
    print(text(payload["phases"], records))


if __name__ == "__main__":
    main()
