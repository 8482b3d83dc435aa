"""The boot unit's interpreter and its systemd state, on their own. systemd is not PID 1 on the
test machine: systemctl is a recording stand-in here; tests/integration/test_realhost.py runs the
same code against a real systemd in a VM."""

import os
import shutil
import sys

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import persistence, record, systemd


class FakeSystemctl:
    """Answers `show -p ActiveState` with state and records the other calls."""

    def __init__(self, state, start_code=0):
        self.state, self.start_code, self.calls = state, start_code, []

    def __call__(self, *args):
        if args[0] == "show":
            return 0, self.state + "\n"
        self.calls.append(args)
        if args[0] == "start":
            self.state = "active" if self.start_code == 0 else "failed"
            return self.start_code, "" if self.start_code == 0 else "Job failed"
        if args[0] in ("stop", "reset-failed"):
            self.state = "inactive"
        return 0, ""


UNIT = "tcp-rto@dc.service"


@pytest.mark.parametrize(
    "state, calls",
    [
        ("active", []),
        ("inactive", [("start", UNIT)]),
        ("failed", [("reset-failed", UNIT), ("start", UNIT)]),
    ],
)
def test_start_leaves_the_unit_active(state, calls):
    systemctl = FakeSystemctl(state)
    changes = persistence.start_unit("dc", systemd=systemd.Systemd(run=systemctl))
    assert systemctl.calls == calls
    assert changes == (["start %s" % UNIT] if calls else [])
    assert systemctl.state == "active"


def test_start_in_check_mode_only_says_so():
    systemctl = FakeSystemctl("failed")
    assert persistence.start_unit("dc", check_mode=True, systemd=systemd.Systemd(run=systemctl))
    assert systemctl.calls == []


def test_a_unit_that_fails_to_start_fails_the_run():
    units = systemd.Systemd(run=FakeSystemctl("inactive", start_code=1))
    with pytest.raises(record.RecordError, match=r"journalctl -u tcp-rto@dc\.service"):
        persistence.start_unit("dc", systemd=units)


@pytest.mark.parametrize("state", ["active", "failed"])
def test_remove_stops_and_clears_the_unit(tmp_path, state):
    systemctl = FakeSystemctl(state)
    changes = persistence.remove("dc", root=str(tmp_path), systemd=systemd.Systemd(run=systemctl))
    assert systemctl.calls[:2] == [("stop", UNIT), ("reset-failed", UNIT)]
    assert "stop %s" % UNIT in changes
    assert systemctl.state == "inactive"


def test_remove_of_an_inactive_unit_calls_no_stop(tmp_path):
    systemctl = FakeSystemctl("inactive")
    assert persistence.remove("dc", root=str(tmp_path), systemd=systemd.Systemd(run=systemctl)) == []
    assert systemctl.calls == []


def test_no_systemd_under_a_test_root(tmp_path):
    assert systemd.Systemd(str(tmp_path)).live is False
    assert persistence.start_unit("dc", root=str(tmp_path)) == []


def test_boot_python_prefers_the_system_python():
    assert systemd.boot_python() == "/usr/bin/python3"


def test_boot_python_refuses_what_others_can_change(tmp_path):
    directory = tmp_path / "bin"
    directory.mkdir()
    os.chmod(str(directory), 0o755)
    python = str(directory / "python3")
    shutil.copy(os.path.realpath(sys.executable), python)
    os.chmod(python, 0o775)  # group-writable
    with pytest.raises(record.RecordError, match=r"python3 is owned by uid 0 with mode 0775"):
        systemd.boot_python([python])
    os.chmod(python, 0o755)
    os.chown(str(directory), 1000, 1000)  # a directory above it that another user owns
    with pytest.raises(record.RecordError, match=r"bin is owned by uid 1000"):
        systemd.boot_python([python])
    os.chown(str(directory), 0, 0)
    # pytest's tmp_path lies under /tmp, which everyone can write to (mode 1777): checked down to /
    with pytest.raises(record.RecordError, match=r"/tmp is owned by uid 0 with mode 1777"):
        systemd.boot_python([python])
    assert systemd.boot_python([python, "/usr/bin/python3"]) == "/usr/bin/python3"
    assert systemd.boot_python(["relative/python3", "/usr/bin/python3"]) == "/usr/bin/python3"
