"""unit: the instance follows a systemd service across restarts and reboots. systemd is not PID 1
on this machine: here the drop-in's ExecStartPre command runs as systemd would run it, inside a
cgroup that is re-created for every "start" (as systemd does); tests/integration/test_realhost.py
runs the same with a real systemd in a VM."""

import hashlib
import os
import shlex
import shutil

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import persistence
from ansible_collections.netbpf.tcp_rto.tests.support import sandbox
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.paths import SHIPPED_OBJECT
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import observed_rto_us
from ansible_collections.netbpf.tcp_rto.tests.support.systemd import run_as_systemd

pytestmark = pytest.mark.kernel

UNIT = "api.service"


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    path.mkdir()
    return str(path)


def record_for_unit(root, bpffs, name="api"):
    """What the module records for unit: api.service (it needs systemd to find the unit's cgroup)."""
    params = dict(
        name=name,
        cgroup=None,
        unit=UNIT,
        rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}],
        rto_ms=None,
        direction="both",
        pin_dir=os.path.join(bpffs, "tcp_rto"),
        mount_bpffs=False,
        hz=None,
        verify=True,
    )
    with open(SHIPPED_OBJECT, "rb") as handle:
        sha256 = hashlib.sha256(handle.read()).hexdigest()
    return persistence.install(params, SHIPPED_OBJECT, sha256, root, python="/usr/bin/python3")


def exec_start_pre(root, name="api"):
    """The drop-in's ExecStartPre command line, without systemd's -+ prefixes."""
    path = os.path.join(root, "etc/systemd/system/%s.d/tcp-rto-%s.conf" % (UNIT, name))
    with open(path) as dropin:
        line = next(line for line in dropin if line.startswith("ExecStartPre="))
    return shlex.split(line[len("ExecStartPre=") :].lstrip("-+@!:"))


def start_service(root, cgroup):
    """What systemd does at a start: a new cgroup, ExecStartPre inside it."""
    sandbox.remove_cgroup_tree(cgroup)
    os.mkdir(cgroup)
    command = "echo $$ > %s/cgroup.procs && exec %s" % (cgroup, " ".join(shlex.quote(a) for a in exec_start_pre(root)))
    return run_as_systemd(["sh", "-c", command], timeout=120)


def test_dropin_attaches_at_every_start_and_after_a_boot(root, bpffs, cgroup):
    changes = record_for_unit(root, bpffs)
    assert any("attaches at every start of api.service" in change for change in changes)
    # the unit's own starts attach it: no boot unit of its own
    assert not os.path.lexists(os.path.join(root, "etc/systemd/system/multi-user.target.wants/tcp-rto@api.service"))
    service = os.path.join(cgroup, UNIT)
    for start in ("first start", "restart", "boot"):
        if start == "boot":
            shutil.rmtree(os.path.join(bpffs, "tcp_rto"))  # every pin gone, as after a reboot
        attached = start_service(root, service)
        assert attached.returncode == 0, (start, attached.stderr)
        assert '"ok": true' in attached.stdout, attached.stdout  # verified in the service's cgroup
        assert observed_rto_us(service) == 200000, start
        assert len(cgroup_program_ids(service)) == 1


def test_boot_unit_refuses_an_instance_that_follows_a_unit(root, bpffs):
    record_for_unit(root, bpffs)
    restore = run_as_systemd(["/usr/bin/python3", "-I", os.path.join(root, "var/lib/tcp_rto/restore.py"), "api"])
    assert restore.returncode == 1
    assert "follows the unit api.service" in restore.stderr


def test_moving_to_a_cgroup_removes_the_dropin(playbook, root, bpffs, cgroup):
    record_for_unit(root, bpffs)
    applied = playbook.module(
        name="api",
        cgroup=cgroup,
        pin_dir=os.path.join(bpffs, "tcp_rto"),
        mount_bpffs=False,
        persistent=True,
        _persist_root=root,
        rto_ms=300,
    )
    assert applied["status"] == "ok", applied["_output"]
    assert "remove %s/etc/systemd/system/api.service.d/tcp-rto-api.conf" % root in applied["actions"]
    assert persistence.recorded_unit("api", root) is None
    removed = playbook.module(name="api", state="absent", pin_dir=os.path.join(bpffs, "tcp_rto"), _persist_root=root)
    assert removed["changed"] is True
    assert [name for _dir, _dirs, names in os.walk(root) for name in names] == []


def test_a_unit_cgroup_given_as_cgroup_warns_to_use_unit(playbook, bpffs, cgroup):
    service = os.path.join(cgroup, UNIT)
    os.mkdir(service)
    applied = playbook.module(
        name="api", cgroup=service, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, rto_ms=300
    )
    assert applied["status"] == "ok", applied["_output"]
    assert "belongs to the systemd unit api.service" in applied["_output"]
    assert "Give unit: api.service instead" in applied["_output"]


def test_unit_and_cgroup_are_exclusive(playbook, bpffs, cgroup):
    refused = playbook.module(name="api", cgroup=cgroup, unit=UNIT, pin_dir=os.path.join(bpffs, "tcp_rto"))
    assert refused["status"] == "failed"
    assert refused["msg"].startswith("cgroup and unit are exclusive")
