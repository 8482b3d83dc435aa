"""The repository passes its linter and formatter (configuration: ruff.toml)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUFF = os.path.join(os.path.dirname(sys.executable), "ruff")


@pytest.mark.parametrize("command", [["check", "--no-fix"], ["format", "--check", "--diff"]], ids=["check", "format"])
def test_ruff(command):
    proc = subprocess.run(
        [RUFF, *command, REPO], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
    )
    assert proc.returncode == 0, proc.stdout.decode()
