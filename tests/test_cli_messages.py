"""Usage errors name the ``--help`` of the command that was mistyped, on one line, with exit code 2."""

from __future__ import annotations

import argparse

import pytest

from jaxtl.cli import COMMANDS, build_parser, main

NAMES = [c.name for c in COMMANDS]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _value(action: argparse.Action) -> list[str]:
    if action.nargs == 0:  # a flag
        return []
    return [str(next(iter(action.choices))) if action.choices else "1"]


def _required_argv(name: str) -> list[str]:
    """Just enough arguments for ``jaxtl NAME`` to parse: its positionals, required options, one of each required
    mutually exclusive group (made up values; nothing runs, the unknown option stops it first)."""
    parser = _subparsers()[name]
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings and action.nargs not in ("?", "*", argparse.REMAINDER):
            argv += _value(action)
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], *_value(action)]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            first = group._group_actions[0]
            argv += [first.option_strings[0], *_value(first)]
    return argv


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxtl: error: "), err
    return lines[0]


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_names_the_subcommand_help(capsys: pytest.CaptureFixture[str], name: str) -> None:
    line = _error_line(capsys, [name, *_required_argv(name), "--bogus"])
    assert "unrecognized arguments: --bogus" in line
    assert line.endswith(f"(see 'jaxtl {name} --help')")


@pytest.mark.parametrize("name", [n for n in NAMES if _required_argv(n)])
def test_missing_argument_names_the_subcommand_help(capsys: pytest.CaptureFixture[str], name: str) -> None:
    line = _error_line(capsys, [name, "--bogus"])
    assert "required" in line
    assert line.endswith(f"(see 'jaxtl {name} --help')")


def test_bad_choice_names_the_subcommand_help(capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, ["finetune", *_required_argv("finetune"), "--freeze", "everything"])
    assert "--freeze: invalid choice: 'everything'" in line
    assert line.endswith("(see 'jaxtl finetune --help')")


@pytest.mark.parametrize("argv", [["--bogus", "demo"], ["nosuchcommand"], []])
def test_top_level_errors_name_the_top_level_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert _error_line(capsys, argv).endswith("(see 'jaxtl --help')")


# --- messages in the command line's own words (#21) ----------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import jaxtl

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"jaxtl {jaxtl.__version__}"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("feature_cache=False to run the backbone every step", "--no-feature-cache to run the backbone every step"),
        ("or allow_changes=True to resume", "or --allow-changed-run to resume"),
        ("pass overwrite=True (--overwrite) to replace it", "pass --overwrite to replace it"),
        ("labels_per_class=40 but some classes", "--labels-per-class 40 but some classes"),
        (
            "mode='linear_probe' cannot augment (augment='auto')",
            "--freeze linear-probe cannot augment (--augment auto)",
        ),
        ("batch_size=30 is not a multiple", "--batch-size 30 is not a multiple"),
        ("the seed changed (0 -> 1)", "the seed changed (0 -> 1)"),  # English words stay English
    ],
)
def test_library_messages_are_worded_as_flags(message: str, expected: str) -> None:
    from jaxtl.cli_options import flag_words

    assert flag_words(message, _subparsers()["finetune"]) == expected


def test_a_config_error_leads_with_its_flag(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    line = _error_line(capsys, ["finetune", "--init", "x", "--data", "digits", "--workdir", str(tmp_path), "--lr", "0"])
    assert line == "jaxtl: error: --lr must be > 0, got 0.0"
    line = _error_line(capsys, ["pretrain", "--data", "digits", "--workdir", str(tmp_path), "--test-fraction", "1"])
    assert line == "jaxtl: error: --test-fraction must lie in [0, 1), got 1.0"


def test_help_texts_give_defaults_and_say_what_options_are_for(capsys: pytest.CaptureFixture[str]) -> None:
    helps = {}
    for name in ("finetune", "evaluate", "convert", "inspect"):
        assert main([name, "--help"]) == 0
        helps[name] = " ".join(capsys.readouterr().out.split())
    assert "(default all)" in helps["evaluate"]
    assert "linear-probe: a head on features computed once" in helps["finetune"]
    assert "cosine decay to 0 at the last step, or constant" in helps["finetune"]
    assert "peak learning rate, after --warmup-steps" in helps["finetune"]
    assert (
        "or a jaxtl model directory" in helps["inspect"]
        and "jaxtl model directory" not in helps["convert"].split("OUT")[0]
    )
