"""The package's face: ``python -m fer_fast`` lists the commands and refuses unknown ones, and
``import fer_fast`` loads only what the ops need (the commands' modules load when they run)."""
import argparse
import re
import subprocess
import sys

import pytest

from fer_fast import cli
from fer_fast.__main__ import COMMANDS
from fer_fast.__main__ import main as fer_main

#: modules ``import fer_fast`` must not load: commands, inference, data and file handling
COMMAND_MODULES = ("fer_fast.predict", "fer_fast.cli", "fer_fast.train", "fer_fast.checkpoint",
                   "fer_fast.data", "fer_fast.preprocess", "fer_fast.export", "fer_fast.selfcheck",
                   "fer_fast.experiments", "fer_fast.bundled", "fer_fast.config",
                   "fer_fast.step", "fer_fast.rundir")


def test_no_command_lists_every_command(capsys):
    assert fer_main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out and f"python -m fer_fast {name} --help" in out


def test_an_unknown_command_is_one_error_line(capsys):
    assert fer_main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'trian'") and len(err.splitlines()) == 1


def test_import_loads_the_ops_only():
    code = ("import sys, fer_fast; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('fer_fast'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert "fer_fast.block" in loaded and "fer_fast.model" in loaded
    assert not set(COMMAND_MODULES) & set(loaded), sorted(set(COMMAND_MODULES) & set(loaded))
    code = "import fer_fast, sys; fer_fast.Predictor; print('fer_fast.predict' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "True"


def _help(command: str, monkeypatch, capsys) -> tuple[argparse.ArgumentParser, str]:
    """The parser of ``python -m fer_fast COMMAND`` and its --help text."""
    parsers = []
    real = cli.Parser.parse_known_args

    def record(self, args=None, namespace=None):
        parsers.append(self)
        return real(self, args, namespace)

    monkeypatch.setattr(cli.Parser, "parse_known_args", record)
    with pytest.raises(SystemExit) as exit_info:
        fer_main([command, "--help"])
    assert exit_info.value.code == 0
    return parsers[0], capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_a_help_line_showing_its_default(command, monkeypatch, capsys):
    """Every argument is explained; every flag that takes a value (or is on/off) shows its
    default as ``(default: X)``; no reStructuredText markup."""
    parser, text = _help(command, monkeypatch, capsys)
    assert f"python -m fer_fast {command}" in text
    assert not re.search(r"``|:(func|class|mod|meth):`", text), text
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        shown = formatter._expand_help(action) if action.help else ""
        assert shown.strip() and not shown.startswith("("), f"{command} {name}: no help line"
        if action.option_strings and (action.nargs != 0 or isinstance(
                action, argparse.BooleanOptionalAction)):
            assert re.search(r"\(default: [^)]+\)$", shown), f"{command} {name}: {shown!r}"
            assert "(default: None)" not in shown and "(default: True)" not in shown


def test_train_help_shows_what_a_run_without_arguments_uses(monkeypatch, capsys):
    """No --data: the quick preset. Its values are in --help beside the full preset's."""
    from fer_fast.config import PRESETS, Config
    parser, _ = _help("train", monkeypatch, capsys)
    formatter = parser._get_formatter()
    shown = {a.dest: formatter._expand_help(a) for a in parser._actions}
    for key in ("epochs", "lr", "batch_size", "width"):
        full, quick = getattr(Config, key), PRESETS["quick"][key]
        assert re.search(rf"\(default: {full}; (\S+ and )?quick (and \S+ )?presets? {quick}[;)]",
                         shown[key]), shown[key]
