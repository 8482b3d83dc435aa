"""The metrics timer persistence installs under a test root: its units (checked with
systemd-analyze verify where it exists), its script run as the service runs it (the copied code
alone, without Ansible or this checkout), "" and the last instance's removal taking it away."""

import os
import shutil
import subprocess
import sys

import pytest
from test_persistence_files import SHA256, install_with, object_path, params, root  # noqa: F401 (fixtures)

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import metrics_timer, persistence
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.record import RecordError


@pytest.fixture
def layout(root):  # noqa: F811
    return persistence.Layout(root)


def test_a_textfile_installs_the_timer_and_its_service_runs_the_copied_code(root, layout, object_path, tmp_path):  # noqa: F811
    textfile = str(tmp_path / "tcp_rto.prom")
    changes = install_with(root, object_path, metrics_textfile=textfile, metrics_interval_s=30)
    files = metrics_timer.paths(layout)
    assert [change for change in changes if "metrics" in change] == [
        "install %s" % files["script"],
        "install %s" % files["service"],
        "install %s" % files["timer"],
        "enable tcp-rto-metrics.timer",
    ]  # no systemd under a test root: nothing started
    assert os.readlink(files["wants"]) == os.path.join("..", metrics_timer.TIMER)
    with open(files["timer"]) as handle:
        assert "OnUnitActiveSec=30s\n" in handle.read()
    with open(files["service"]) as handle:
        service = handle.read()
    command = "%s -I %s /sys/fs/bpf/tcp_rto %s" % (sys.executable, files["script"], textfile)
    assert "ExecStart=%s\n" % command in service
    # As systemd would run it: the copied code only (-I: no environment, no site-packages, no cwd).
    run = subprocess.run(
        command.replace("/sys/fs/bpf/tcp_rto", str(tmp_path / "no_pins")).split(),
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout
    with open(textfile) as handle:
        assert "# TYPE tcp_rto_handshakes_total counter\n" in handle.read()
    assert install_with(root, object_path, metrics_textfile=textfile, metrics_interval_s=30) == []
    assert install_with(root, object_path) == []  # omitted: left as it is


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze here")
def test_systemd_analyze_verify_takes_the_units(root, layout, object_path, tmp_path):  # noqa: F811
    install_with(root, object_path, metrics_textfile="/var/lib/node_exporter/tcp_rto.prom")
    files = metrics_timer.paths(layout)
    run = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", files["service"], files["timer"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        check=False,
    )
    lines = [line for line in run.stdout.splitlines() if "tcp-rto-metrics" in line]
    assert run.returncode == 0 and lines == [], run.stdout


def test_an_empty_textfile_removes_the_timer(root, layout, object_path):  # noqa: F811
    install_with(root, object_path, metrics_textfile="/run/tcp_rto.prom")
    changes = install_with(root, object_path, metrics_textfile="")
    files = metrics_timer.paths(layout)
    assert changes == ["remove %s" % files[key] for key in ("wants", "timer", "service", "script")]
    assert not any(os.path.lexists(path) for path in files.values())


def test_the_last_instances_removal_takes_the_timer(root, layout, object_path):  # noqa: F811
    install_with(root, object_path, metrics_textfile="/run/tcp_rto.prom")
    install_with(root, object_path, name="other")
    persistence.remove("other", root=root)
    assert os.path.exists(metrics_timer.paths(layout)["timer"])
    persistence.remove("web", root=root)
    assert not os.path.exists(os.path.join(root, "etc", "systemd", "system", metrics_timer.TIMER))
    assert [files for _dir, _sub, files in os.walk(root) if files] == []


@pytest.mark.parametrize("textfile", ["relative.prom", "/with space.prom", "/per%cent.prom"])
def test_a_path_systemd_cannot_take_as_one_word_is_refused(textfile):
    with pytest.raises(RecordError, match="metrics_textfile"):
        metrics_timer.check(textfile, "/sys/fs/bpf/tcp_rto", 60)
    with pytest.raises(RecordError, match="pin_dir"):
        metrics_timer.check("/run/x.prom", textfile, 60)
    with pytest.raises(RecordError, match="metrics_interval_s"):
        metrics_timer.check("/run/x.prom", "/sys/fs/bpf/tcp_rto", 0)
