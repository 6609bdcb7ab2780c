"""Every flag of every command line says what it does and, where it has one, its default.

The parsers are found, not listed: every module under the source folders that builds an
``argparse.ArgumentParser`` is run with ``--help`` intercepted, so a new command line is covered
the day it is added. Subcommands' parsers are walked too.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("sparsity", "toys", "scaleup", "lessons", "benchmarks")


def _cli_modules() -> list[str]:
    files = [ROOT / "demo.py", *(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))]
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in files
                  if "ArgumentParser(" in p.read_text() and "def main(" in p.read_text())


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _parser_of(module_name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``module.main`` builds, caught when it parses (nothing after that runs)."""
    module = importlib.import_module(module_name)

    def catch(parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Caught(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    with pytest.raises(_Caught) as caught:
        module.main([])
    return caught.value.parser


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """The actions of a parser with no help, or with a default that the help does not show."""
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        name = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip():
            missing.append(f"{parser.prog} {name}: no help")
            continue
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if action.default not in (None, argparse.SUPPRESS) and not flag and not action.required:
            shown = "%(default)" in action.help or re.search(r"\bdefault", action.help, re.IGNORECASE) \
                or isinstance(parser.formatter_class, type) \
                and issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
            if not shown:
                missing.append(f"{parser.prog} {name}: default {action.default!r} not shown")
    return missing


def test_the_command_lines_are_found() -> None:
    modules = _cli_modules()
    assert {"demo", "scaleup.compare", "lessons.grade", "toys.teacher_student", "sparsity.delta_dir"} <= set(modules)


@pytest.mark.parametrize("module_name", _cli_modules())
def test_every_flag_has_help_and_shows_its_default(module_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = _parser_of(module_name, monkeypatch)
    problems = [p for sub in _parsers(parser) for p in _undocumented(sub)]
    assert not problems, "\n".join(problems)


def test_an_undocumented_flag_is_caught() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds")
    parser.add_argument("--fine", type=int, default=1, help="fine (default %(default)s)")
    assert _undocumented(parser) == ["x --steps: no help", "x --seeds: default 3 not shown"]
