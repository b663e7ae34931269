"""Usage errors name the ``--help`` of the command that was mistyped, on one line, with exit code 2."""

from __future__ import annotations

import pytest

from jaxtl.cli import COMMANDS, main

# Enough arguments that each subcommand's required options are met, so the unknown option is the only error.
REQUIRED = {
    "convert": ["a.pth", "out"],
    "inspect": ["a.pth"],
    "predict": ["a.png", "--weights", "resnet18.IMAGENET1K_V1"],
    "pretrain": ["--data", "digits", "--workdir", "w"],
    "finetune": ["--data", "digits", "--workdir", "w", "--torch-weights", "a.pth"],
    "evaluate": ["ckpt", "--data", "digits"],
    "demo": [],
}


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxtl: error: "), err
    return lines[0]


def test_every_command_has_required_arguments_listed_here() -> None:
    assert sorted(REQUIRED) == sorted(c.name for c in COMMANDS)


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_unknown_option_names_the_subcommand_help(capsys: pytest.CaptureFixture[str], name: str) -> None:
    line = _error_line(capsys, [name, *REQUIRED[name], "--bogus"])
    assert "unrecognized arguments: --bogus" in line
    assert line.endswith(f"(see 'jaxtl {name} --help')")


@pytest.mark.parametrize("name", [c.name for c in COMMANDS if REQUIRED[c.name]])
def test_missing_argument_names_the_subcommand_help(capsys: pytest.CaptureFixture[str], name: str) -> None:
    line = _error_line(capsys, [name, "--bogus"])
    assert "required" in line
    assert line.endswith(f"(see 'jaxtl {name} --help')")


def test_bad_choice_names_the_subcommand_help(capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, ["finetune", *REQUIRED["finetune"], "--freeze", "everything"])
    assert "--freeze: invalid choice: 'everything'" in line
    assert line.endswith("(see 'jaxtl finetune --help')")


@pytest.mark.parametrize("argv", [["--bogus", "demo"], ["nosuchcommand"], []])
def test_top_level_errors_name_the_top_level_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert _error_line(capsys, argv).endswith("(see 'jaxtl --help')")
