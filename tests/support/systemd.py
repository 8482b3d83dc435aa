"""Commands as systemd runs a unit's Exec lines."""

import subprocess


def run_as_systemd(command, timeout=60):
    """command as a unit's Exec line runs: systemd's minimal PATH, output captured as text."""
    return subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        timeout=timeout,
        check=False,
    )
