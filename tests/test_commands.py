"""The package's face: ``python -m fer_fast`` lists the commands and refuses unknown ones, and
``import fer_fast`` loads only what the ops need (the commands' modules load when they run)."""
import subprocess
import sys

from fer_fast.__main__ import COMMANDS
from fer_fast.__main__ import main as fer_main

#: modules ``import fer_fast`` must not load: commands, inference, data and file handling
COMMAND_MODULES = ("fer_fast.predict", "fer_fast.cli", "fer_fast.train", "fer_fast.checkpoint",
                   "fer_fast.data", "fer_fast.preprocess", "fer_fast.export", "fer_fast.selfcheck",
                   "fer_fast.experiments", "fer_fast.bundled")


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
