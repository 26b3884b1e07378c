"""man/neuralbridge.1: generated from the app, current, and rendered without warnings."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from neuralbridge_cli.cli.app import app
from neuralbridge_cli.cli.manpage import generate

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "man" / "neuralbridge.1"


def test_page_is_current():
    assert PAGE.read_text() == generate(), "stale: run `make man`"


def test_page_lists_every_command_and_option():
    text = generate()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f'.SS "neuralbridge {name.replace("-", chr(92) + "-")}"' in text
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert "\\fB" + opt.replace("-", "\\-") + "\\fR" in text, (name, opt)
    for section in ("EXIT STATUS", "ENVIRONMENT", "EXAMPLES", "NEURALBRIDGE_DEBUG", "NO_COLOR"):
        assert section in text


@pytest.mark.skipif(shutil.which("groff") is None, reason="no groff")
def test_renders_without_warnings():
    proc = subprocess.run(["groff", "-man", "-ww", "-z", str(PAGE)], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stderr == ""


@pytest.mark.skipif(shutil.which("man") is None, reason="no man")
def test_man_l_renders_without_warnings():
    proc = subprocess.run(["man", "--warnings", "-l", str(PAGE)], capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"})
    assert proc.returncode == 0 and proc.stderr == ""
    assert "neuralbridge doctor" in proc.stdout and "EXIT STATUS" in proc.stdout
