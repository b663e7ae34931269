"""README.md is a contract: its commands and snippets run, and its generated tables are what the results say.

Everything is read from README.md at test time (nothing is copied here), so an edited README is tested as edited.

What runs, and how (the conventions README.md follows):

- **Python**: every fenced block whose info string starts with ``python``, in README order, in ONE namespace, in a
  fresh Python process whose working directory is a temporary folder. Tracebacks name ``README.md`` and the README's
  own line numbers.
- **Command line**: every command line of the fenced ``bash`` blocks under the ``## Command line`` heading
  (:data:`CLI_SECTION`), in README order, each in its own process, all in one temporary folder (another than the
  snippets'), so a later command can use what an earlier one wrote. ``jaxtl ...`` lines run the installed
  ``jaxtl`` entry point; any other line runs in ``bash``. Backslash continuations are joined; ``#`` comments are
  dropped. ``jaxtl demo`` lines are not run (:data:`SKIP_SUBCOMMANDS`: minutes of training; ``jaxtl demo --quick``
  is covered by ``tests/test_cli_pipeline.py``).
- **Not run**: fenced blocks of any other language, ``bash`` blocks outside the CLI section (``make demo``/``make
  test``, the multi-GPU, multi-host and TPU commands, whose placeholders cannot run), and any block whose info
  string carries the tag ``notest`` (e.g. ```` ```bash notest ````; GitHub still highlights it as bash). Every
  ``jaxtl`` command in the README, run or not, must still name an existing subcommand and only options that
  subcommand has (:func:`test_readme_names_only_existing_options`).
- **Files the README names are made first** (:func:`make_fixtures`): ``NAME.pth``/``NAME.pt``/``NAME.safetensors``
  where NAME is a torchvision architecture jaxtl has (``resnet50.pth``, ``vit_b_16.pth``, ``convnext_tiny.pth``) ->
  that torchvision model with ``weights=None``, its ``state_dict()`` saved with ``torch.save`` (or safetensors);
  weights named as ``pretrained("vit_b_16", weights="IMAGENET1K_SWAG_E2E_V1")`` or ``--weights resnet18.DEFAULT``
  -> that model (a ViT at those weights' size) under the official file name in torch's hub cache; every
  ``folder:DIR`` and every ``load_image_folder("DIR", ...)`` -> a small image folder (:data:`FOLDER_CLASSES` classes x
  :data:`FOLDER_IMAGES` PNGs of 40x40 px); every ``npz:FILE`` -> an ``.npz`` with ``images``/``labels`` at the
  test image size. Anything else a snippet uses, it must create itself ("snippets define what they use").
- **Small sizes, injected only where the README gives a size or length**: in commands, the values of
  :data:`CLI_VALUES` options are replaced (``--epochs 5`` runs as ``--epochs 1``), and ``pretrain``/``finetune``
  without ``--image-size`` get ``--image-size 16`` (their default is the architecture's 224); in Python, the
  integer keyword arguments named in :data:`PY_VALUES` are replaced (``size=224`` runs as ``size=16``). Every
  other word runs as written. The processes see one CPU device, as a user's machine would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

CLI_SECTION = "Command line"
SKIP_TAG = "notest"
SKIP_SUBCOMMANDS = {"demo": "minutes of training; `jaxtl demo --quick` is run by tests/test_cli_pipeline.py"}
IMAGE_SIZE = 16
CLI_VALUES = {"--epochs": "1", "--image-size": str(IMAGE_SIZE), "--seeds": "1", "--steps": "2"}
CLI_IMAGE_SIZE_DEFAULTED = ("pretrain", "finetune")  # their default size is the architecture's (224 for a ResNet)
PY_VALUES = {"size": IMAGE_SIZE, "image_size": IMAGE_SIZE, "epochs": 1, "steps": 2}
TORCH_HOME = ".torch_home"  # under the fixture folder: the runs' $TORCH_HOME, holding named weights
FOLDER_CLASSES = 4
FOLDER_IMAGES = 16
TIMEOUT_S = 600

# ---- reading the README --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced code block: ``lang`` and ``tags`` from its info string, the ``## `` section it is in, and the README
    line number of its first content line."""

    lang: str
    tags: tuple[str, ...]
    section: str
    line: int
    text: str


@dataclasses.dataclass(frozen=True)
class Command:
    """One logical command line of a shell block (continuations joined), with its README line number."""

    text: str
    line: int
    block: Block

    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def subcommand(self) -> str | None:
        words = self.argv()
        return words[1] if len(words) > 1 and words[0] == "jaxtl" else None


_FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")


def read_blocks(text: str) -> list[Block]:
    """Every fenced code block of a markdown ``text``, in order."""
    blocks: list[Block] = []
    section = ""
    fence: str | None = None
    info: list[str] = []
    start = 0
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence, info, start, body = m.group(1), m.group(2).split(), number + 1, []
            elif line.startswith("## "):
                section = line[3:].strip()
            continue
        if m and m.group(1).startswith(fence) and not m.group(2).strip():
            lang = info[0].lower() if info else ""
            blocks.append(Block(lang, tuple(info[1:]), section, start, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise ValueError(f"README: the code block opened at line {start - 1} is never closed")
    return blocks


def shell_commands(block: Block) -> list[Command]:
    """The logical lines of a shell block: backslash continuations joined, blank and comment-only lines dropped."""
    out: list[Command] = []
    pending: list[str] = []
    first = 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            first = block.line + offset
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        text = " ".join(p.strip() for p in pending).strip()
        pending = []
        if text and not text.startswith("#"):
            out.append(Command(text, first, block))
    if pending:
        raise ValueError(f"README line {first}: a command ends with a backslash continuation")
    return out


def _is_shell(block: Block) -> bool:
    return block.lang in ("bash", "sh", "shell", "console")


def cli_commands(blocks: Iterable[Block]) -> list[Command]:
    """The commands the test runs: shell blocks of the CLI section, without ``notest`` blocks."""
    return [
        c
        for b in blocks
        if _is_shell(b) and b.section == CLI_SECTION and SKIP_TAG not in b.tags
        for c in shell_commands(b)
    ]


def python_snippets(blocks: Iterable[Block]) -> list[Block]:
    return [b for b in blocks if b.lang in ("python", "py", "python3") and SKIP_TAG not in b.tags]


def all_jaxtl_invocations(blocks: Iterable[Block]) -> list[tuple[int, str, list[str]]]:
    """``(line, subcommand, options named)`` for every ``jaxtl SUBCOMMAND ...`` in any shell block (also inside a
    quoted ``--command="jaxtl ..."``); placeholders such as ``...`` and ``[--arch A]`` are fine here."""
    found = []
    for b in blocks:
        if not _is_shell(b):
            continue
        for c in shell_commands(b):
            for m in re.finditer(r"(?:^|[\s\"'=])jaxtl\s+([a-z][\w-]*)([^\"'#]*)", c.text):
                options = re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(2))
                found.append((c.line, m.group(1), options))
    return found


# ---- small overrides -----------------------------------------------------------------------------------------------


def small_argv(argv: list[str]) -> list[str]:
    """``argv`` with the :data:`CLI_VALUES` options' values replaced, ``--image-size`` added where it defaults to
    the architecture's size."""
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word in CLI_VALUES:
            out[i + 1] = CLI_VALUES[word]
    for i, word in enumerate(out):
        name, eq, _ = word.partition("=")
        if eq and name in CLI_VALUES:
            out[i] = f"{name}={CLI_VALUES[name]}"
    if len(out) > 1 and out[1] in CLI_IMAGE_SIZE_DEFAULTED and not any(w.startswith("--image-size") for w in out):
        out += ["--image-size", str(IMAGE_SIZE)]
    return out


# The Python runner: one namespace, README line numbers in tracebacks, PY_VALUES keyword overrides.
RUNNER = r"""
import ast, json, linecache, sys, time, traceback

# Guarded as a user's script must be: streaming workers are spawned and import the main module again.
if __name__ == "__main__":
    payload = json.load(open(sys.argv[1]))
    blocks, overrides, readme = payload["blocks"], payload["overrides"], payload["readme"]
    # Tracebacks quote the README's own lines (not whatever README.md the import path holds).
    linecache.cache["README.md"] = (len(readme), None, readme.splitlines(True), "README.md")

    class Small(ast.NodeTransformer):
        def visit_keyword(self, node):
            self.generic_visit(node)
            if node.arg in overrides and isinstance(node.value, ast.Constant) and type(node.value.value) is int:
                node.value = ast.copy_location(ast.Constant(overrides[node.arg]), node.value)
            return node

    namespace = {"__name__": "__main__"}
    for line, code in blocks:
        print(f"--- README.md snippet at line {line}", flush=True)
        start = time.perf_counter()
        try:
            tree = Small().visit(ast.parse(code, filename="README.md"))
            ast.increment_lineno(tree, line - 1)
            exec(compile(tree, "README.md", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"README_SNIPPET_FAILED {line}", flush=True)
            sys.exit(1)
        print(f"--- README.md snippet at line {line}: ok in {time.perf_counter() - start:.1f} s", flush=True)
    print("README_SNIPPETS_OK", flush=True)
"""


# ---- the files the README names ------------------------------------------------------------------------------------


def _torchvision_names() -> list[str]:
    from jaxtl.models import list_models

    return list(list_models(torchvision=True))


def fixture_names(texts: Iterable[str]) -> dict[str, set[str]]:
    """``{"weights": {...}, "folders": {...}, "npz": {...}}`` named in ``texts`` (commands and snippets)."""
    text = "\n".join(texts)
    archs = set(_torchvision_names())
    weights = {
        m.group(0)
        for m in re.finditer(r"[\w./-]+\.(?:pth?|safetensors)\b", text)
        if Path(m.group(0)).name.split(".")[0] in archs
    }
    folders = set(re.findall(r"folder:([^\s\"']+)", text))
    folders |= set(re.findall(r"load_image_folder\(\s*[\"']([^\"']+)[\"']", text))
    npz = set(re.findall(r"npz:([^\s\"']+)", text))
    named = {f"{a}.{w}" for a, w in re.findall(r"pretrained\(\s*[\"'](\w+)[\"']\s*,\s*weights=[\"'](\w+)[\"']", text)}
    named |= set(re.findall(r"--weights\s+(\w+\.\w+)", text))
    return {"weights": weights, "folders": folders, "npz": npz, "named": named}


def _images(rng: np.random.Generator, label: int, n: int, size: int) -> np.ndarray:
    """``[n, size, size, 3]`` uint8: a bright square at a class-specific place over dark noise."""
    imgs = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    side = size // 3
    r, c = divmod(label % 9, 3)
    imgs[:, r * side : (r + 1) * side, c * side : (c + 1) * side] = 230
    return imgs


def make_fixtures(cwd: Path, names: dict[str, set[str]]) -> None:
    """Create, under ``cwd``, every file :func:`fixture_names` found (see the module docstring)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in sorted(names["folders"]):
        for label in range(FOLDER_CLASSES):
            d = cwd / folder / f"class_{label}"
            d.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(_images(rng, label, FOLDER_IMAGES, 40)):
                Image.fromarray(img).save(d / f"{i}.png")
    for npz in sorted(names["npz"]):
        labels = np.repeat(np.arange(FOLDER_CLASSES), FOLDER_IMAGES)
        images = np.concatenate([_images(rng, k, FOLDER_IMAGES, IMAGE_SIZE) for k in range(FOLDER_CLASSES)])
        (cwd / npz).parent.mkdir(parents=True, exist_ok=True)
        np.savez(cwd / npz, images=images.astype(np.float32) / 255.0, labels=labels)
    if names.get("named"):
        # Named torchvision weights come from torch's hub cache: random-init weights under the official file names
        # in a private TORCH_HOME (the runs get JAXTL_OFFLINE=1, so nothing is ever downloaded).
        import torch
        import torchvision

        from jaxtl.bridge.hub import resolve_name

        for qualified in sorted(names["named"]):
            w = resolve_name(None, qualified)
            path = cwd / TORCH_HOME / "hub" / "checkpoints" / w.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            # A ViT is built for its weights' size (SWAG weights: 384, 512 or 518 px), as torchvision builds it.
            size = torchvision.models.get_weight(w.qualname).meta.get("min_size", (224,))[0]
            kwargs = {"image_size": size} if w.arch.startswith("vit_") else {}
            torch.save(getattr(torchvision.models, w.arch)(weights=None, **kwargs).state_dict(), path)
    if names["weights"]:
        import torch
        import torchvision

        for w in sorted(names["weights"]):
            arch = Path(w).name.split(".")[0]
            torch.manual_seed(0)
            model = getattr(torchvision.models, arch)(weights=None)
            (cwd / w).parent.mkdir(parents=True, exist_ok=True)
            if w.endswith(".safetensors"):
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cwd / w))
            else:
                torch.save(model.state_dict(), cwd / w)


# ---- running -------------------------------------------------------------------------------------------------------


def subprocess_env(fixtures: Path | None = None) -> dict[str, str]:
    """The test process's environment for a user-like run: one CPU device, the tests' compile cache; with
    ``fixtures``, its named weights as torch's hub cache, offline, and a private converted-weights cache."""
    env = dict(os.environ)
    if fixtures is not None:
        env["TORCH_HOME"] = str(fixtures / TORCH_HOME)
        env["JAXTL_OFFLINE"] = "1"
        env["JAXTL_WEIGHTS_CACHE"] = str(fixtures.parent / f"{fixtures.name}_weights_cache")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    cache = env.get("JAXTL_COMPILE_CACHE") or str(ROOT / ".jax_cache")
    env["JAXTL_COMPILE_CACHE"] = cache
    env["JAX_COMPILATION_CACHE_DIR"] = cache  # the Python snippets: jax reads it when it starts
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ReadmeFailure(AssertionError):
    """A README command or snippet did not run."""


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


def run_cli_commands(commands: list[Command], cwd: Path, env: dict[str, str]) -> list[str]:
    """Run ``commands`` in order in ``cwd``; raise :class:`ReadmeFailure` at the first that fails. Returns a log."""
    log = []
    for c in commands:
        argv = c.argv()
        if not argv:
            continue
        if c.subcommand in SKIP_SUBCOMMANDS:
            log.append(f"line {c.line}: skipped ({SKIP_SUBCOMMANDS[c.subcommand]}): {c.text}")
            continue
        if argv[0] == "jaxtl":
            exe = shutil.which("jaxtl", path=env["PATH"])
            run = small_argv(argv)
            cmd = [exe, *run[1:]] if exe else [sys.executable, "-m", "jaxtl.cli", *run[1:]]
            shown = shlex.join(run)
        else:
            cmd = ["bash", "-e", "-o", "pipefail", "-c", c.text]
            shown = c.text
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise ReadmeFailure(
                f"README.md line {c.line}: `{c.text}` failed (exit {proc.returncode}); ran as `{shown}` in {cwd}\n"
                f"stdout:\n{_tail(proc.stdout)}\nstderr:\n{_tail(proc.stderr)}"
            )
        log.append(f"line {c.line}: ok in {seconds:.1f} s: {shown}")
    return log


def run_python_snippets(snippets: list[Block], readme: str, cwd: Path, env: dict[str, str]) -> str:
    """Run ``snippets`` (blocks of the markdown text ``readme``) in order, in one namespace, in a fresh process in
    ``cwd``; raise :class:`ReadmeFailure` naming the README line of the snippet that failed. Returns its output."""
    payload = cwd.parent / f"{cwd.name}_snippets.json"
    blocks = [[b.line, b.text] for b in snippets]
    payload.write_text(json.dumps({"blocks": blocks, "overrides": PY_VALUES, "readme": readme}))
    runner = cwd.parent / f"{cwd.name}_runner.py"
    runner.write_text(RUNNER)
    proc = subprocess.run(
        [sys.executable, str(runner), str(payload)], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "README_SNIPPETS_OK" not in proc.stdout:
        failed = re.search(r"README_SNIPPET_FAILED (\d+)", proc.stdout)
        where = f"the snippet at README.md line {failed.group(1)}" if failed else "the snippet runner"
        raise ReadmeFailure(f"{where} failed (exit {proc.returncode}) in {cwd}:\n{_tail(out)}")
    return out


# ---- the tests on README.md ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    return read_blocks(README.read_text())


@pytest.fixture(scope="module")
def fixture_files(tmp_path_factory: pytest.TempPathFactory, blocks: list[Block]) -> Path:
    """A folder holding every file the README's snippets and commands name (made once)."""
    root = tmp_path_factory.mktemp("readme_files")
    texts = [b.text for b in python_snippets(blocks)] + [c.text for c in cli_commands(blocks)]
    make_fixtures(root, fixture_names(texts))
    return root


@pytest.fixture
def workspace(tmp_path: Path, fixture_files: Path) -> Path:
    """A fresh working directory per test, with links to the fixture files (snippets and commands are
    independent of each other)."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    for entry in fixture_files.iterdir():
        (cwd / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return cwd


def test_readme_has_snippets_and_cli_commands_to_run(blocks: list[Block]) -> None:
    # Guards the harness itself: a renamed section or language tag must not make the tests below pass vacuously.
    assert python_snippets(blocks), "README.md has no ```python block"
    commands = [c for c in cli_commands(blocks) if c.subcommand not in SKIP_SUBCOMMANDS]
    assert commands, f"README.md has no runnable ```bash command under '## {CLI_SECTION}'"


def test_readme_python_snippets_run(blocks: list[Block], workspace: Path, fixture_files: Path) -> None:
    env = subprocess_env(fixture_files)
    out = run_python_snippets(python_snippets(blocks), README.read_text(), workspace, env)
    print("\n".join(ln for ln in out.splitlines() if ln.startswith("--- README.md")))


def test_readme_cli_commands_run(blocks: list[Block], workspace: Path, fixture_files: Path) -> None:
    print("\n".join(run_cli_commands(cli_commands(blocks), workspace, subprocess_env(fixture_files))))


def test_readme_names_only_existing_options(blocks: list[Block]) -> None:
    from jaxtl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    known = {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}
    problems = []
    for line, command, options in all_jaxtl_invocations(blocks):
        if command not in known:
            problems.append(f"line {line}: `jaxtl {command}` is not a command (commands: {', '.join(known)})")
            continue
        problems += [f"line {line}: `jaxtl {command}` has no option {o}" for o in options if o not in known[command]]
    assert not problems, "README.md:\n" + "\n".join(problems)


# ---- the generated tables ------------------------------------------------------------------------------------------


def test_readme_benchmark_tables_are_what_the_results_files_render_to() -> None:
    from benchmarks.report import END, START, load_results, render, replace_between_markers

    readme = README.read_text()
    expected = replace_between_markers(readme, render(load_results(ROOT / "benchmarks" / "results")), START, END)
    assert readme == expected, (
        "README.md's benchmark tables differ from benchmarks/results/*.json: run "
        "`python -m benchmarks.report --write README.md`"
    )


def test_readme_demo_table_is_what_the_demo_results_render_to() -> None:
    from benchmarks.report import DEMO_END, DEMO_START, render_demo, replace_between_markers

    source = "benchmarks/results/demo/results.json"  # the path `make demo-readme` passes
    readme = README.read_text()
    block = render_demo(json.loads((ROOT / source).read_text()), source)
    assert readme == replace_between_markers(readme, block, DEMO_START, DEMO_END), (
        f"README.md's demo table differs from {source}: run "
        f"`python -m benchmarks.report --demo {source} --write README.md` (or `make demo-readme`)"
    )


# ---- the harness on made-up READMEs: it finds what it must and fails when it must ---------------------------------

FAKE = """# x

```bash
make demo
```

## Command line

```bash
jaxtl inspect resnet18.pth   # a comment; not resnet18.txt
jaxtl finetune --torch-weights resnet18.pth --data folder:imgs \\
               --epochs 5 --workdir runs/ft
jaxtl demo --quick
```

```bash notest
jaxtl finetune ... --bogus
```

```python
data = load_image_folder("pics/", size=224)
```

## Other

```bash
srun jaxtl finetune ... --distributed
gcloud x --command="jaxtl evaluate ... --split test" --zone Z
```
"""


def test_harness_reads_blocks_sections_tags_and_continuations() -> None:
    blocks = read_blocks(FAKE)
    assert [(b.lang, b.tags, b.section) for b in blocks] == [
        ("bash", (), ""),
        ("bash", (), "Command line"),
        ("bash", ("notest",), "Command line"),
        ("python", (), "Command line"),
        ("bash", (), "Other"),
    ]
    cmds = cli_commands(blocks)
    assert [(c.line, c.subcommand) for c in cmds] == [(10, "inspect"), (11, "finetune"), (13, "demo")]
    assert cmds[1].argv()[-4:] == ["--epochs", "5", "--workdir", "runs/ft"]
    assert cmds[0].argv() == ["jaxtl", "inspect", "resnet18.pth"]
    assert small_argv(cmds[1].argv())[-6:] == ["--epochs", "1", "--workdir", "runs/ft", "--image-size", "16"]
    assert [(b.line, b.text) for b in python_snippets(blocks)] == [
        (21, 'data = load_image_folder("pics/", size=224)\n')
    ]
    assert all_jaxtl_invocations(blocks) == [
        (10, "inspect", []),
        (11, "finetune", ["--torch-weights", "--data", "--epochs", "--workdir"]),
        (13, "demo", ["--quick"]),
        (17, "finetune", ["--bogus"]),
        (27, "finetune", ["--distributed"]),
        (28, "evaluate", ["--split"]),
    ]
    texts = [b.text for b in python_snippets(blocks)] + [c.text for c in cmds]
    expected = {"weights": {"resnet18.pth"}, "folders": {"imgs", "pics/"}, "npz": set(), "named": set()}
    assert fixture_names(texts) == expected
    more = fixture_names(["jaxtl inspect w/resnet34.safetensors mine.pth --data npz:d/x.npz", "load_image_folder('a')"])
    assert more == {"weights": {"w/resnet34.safetensors"}, "folders": {"a"}, "npz": {"d/x.npz"}, "named": set()}
    families = fixture_names(["jaxtl convert vit_b_16.pth out", "jaxtl inspect convnext_tiny.safetensors x.pth"])
    assert families["weights"] == {"vit_b_16.pth", "convnext_tiny.safetensors"}
    named = fixture_names(
        ['pretrained("resnet50", weights="IMAGENET1K_V2")', "jaxtl predict x --weights resnet18.DEFAULT"]
    )
    assert named["named"] == {"resnet50.IMAGENET1K_V2", "resnet18.DEFAULT"}


def test_harness_fails_on_a_snippet_that_does_not_run(tmp_path: Path) -> None:
    readme = "## A\n\n```python\nx = 1\n```\n\ntext\n\n```python\ny = x + undefined_name\n```\n"
    expected = r'README.md line 10 failed(.|\n)*File "README.md", line 10(.|\n)*y = x \+ undefined_name(.|\n)*NameError'
    with pytest.raises(ReadmeFailure, match=expected):
        run_python_snippets(python_snippets(read_blocks(readme)), readme, tmp_path, subprocess_env())


def test_harness_overrides_sizes_in_snippets(tmp_path: Path) -> None:
    code = "def f(size, epochs, other):\n    return size, epochs, other\n\n"
    code += "assert f(size=224, epochs=5, other=7) == (16, 1, 7)\n"
    readme = f"```python\n{code}```\n"
    run_python_snippets(python_snippets(read_blocks(readme)), readme, tmp_path, subprocess_env())


def test_harness_fails_on_a_command_that_does_not_run(tmp_path: Path) -> None:
    readme = f"## {CLI_SECTION}\n\n```bash\necho ok > out.txt\njaxtl evaluate runs/ft/final --data folder:imgs\n```\n"
    with pytest.raises(ReadmeFailure, match=r"README.md line 5: `jaxtl evaluate runs/ft/final .*` failed \(exit [^0]"):
        run_cli_commands(cli_commands(read_blocks(readme)), tmp_path, subprocess_env())
    assert (tmp_path / "out.txt").read_text() == "ok\n"  # the line before it ran, in the working directory


def test_harness_makes_loadable_image_folders_and_npz(tmp_path: Path) -> None:
    from jaxtl.data import load_image_folder, load_npz

    make_fixtures(tmp_path, {"weights": set(), "folders": {"my_images/"}, "npz": {"d/x.npz"}})
    ds = load_image_folder(tmp_path / "my_images", size=IMAGE_SIZE)
    assert ds.images.shape == (FOLDER_CLASSES * FOLDER_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert ds.num_classes == FOLDER_CLASSES
    arr = load_npz(tmp_path / "d" / "x.npz")
    assert arr.images.shape == ds.images.shape and arr.labels is not None
