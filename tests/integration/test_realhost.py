"""Real hosts: the collection on a Debian 12 VM with systemd as PID 1, managed over SSH with become
by ansible-playbook from the controller's virtualenv, as users run it (tests/vm/ builds and boots
the VM: see its docstrings). One VM per test session, booted from the cached clean image; the tests
below run in order on it, each verified from inside the guest: a SYN_SENT socket in the target
cgroup (scripts/syn_rto_probe.py, which shares no code with the collection) and systemd's own view
(`systemctl --failed`, `systemctl is-system-running`).
"""

import json
import os
import shutil
import time

import pytest

from ansible_collections.netbpf.tcp_rto.tests.support.paths import REPO
from ansible_collections.netbpf.tcp_rto.tests.support.playbook import Playbook
from ansible_collections.netbpf.tcp_rto.tests.vm import guest, image

PROBE = os.path.join(REPO, "scripts", "syn_rto_probe.py")
NAME = "default"
UNIT = "tcp-rto@%s.service" % NAME


class RealHost:
    """The booted guest, an inventory for it and ansible-playbook."""

    def __init__(self, guest, workdir):
        self.guest = guest
        self.workdir = workdir
        self.playbook = Playbook(workdir)
        self.inventory = guest.inventory(os.path.join(workdir, "hosts.ini"))
        self.plays = 0

    def play(self, playbook, **extra_vars):
        """ansible-playbook -i hosts.ini <playbook> -e @vars.json; -> PlaybookRun."""
        self.plays += 1
        variables = os.path.join(self.workdir, "vars%d.json" % self.plays)
        with open(variables, "w") as handle:
            json.dump(extra_vars, handle)
        return self.playbook.run_playbook(playbook, self.inventory, ["-e", "@" + variables])

    def rto_ms(self, cgroup="/sys/fs/cgroup"):
        """The initial RTO a connect() from cgroup starts with, read inside the guest."""
        with open(PROBE) as handle:
            script = handle.read()
        proc = self.guest.root("python3 -c %s %s" % (_quote(script), cgroup))
        return int(proc.stdout.strip()) / 1000.0

    def failed_units(self):
        return self.guest.ssh("systemctl list-units --failed --plain --no-legend").stdout.strip()

    def units(self):
        """Every tcp-rto@ unit systemd knows of, loaded or not: 'name load active sub' lines."""
        return self.guest.ssh("systemctl list-units --all --plain --no-legend 'tcp-rto@*'").stdout.strip()

    def unit_state(self, unit=UNIT):
        return self.guest.ssh("systemctl show -p ActiveState --value %s" % unit).stdout.strip()

    def system_state(self):
        return self.guest.wait_system_running()

    def record(self, name=NAME):
        proc = self.guest.root("cat /etc/tcp_rto/%s.json" % name, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None


def _quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture(scope="module")
def realhost(tmp_path_factory):
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86_64 is not installed: scripts/setup-env installs it"
    image_dir = image.build()
    logdir = str(tmp_path_factory.mktemp("vm"))
    vm = guest.Guest(image_dir, logdir, guest.choose_accel(image_dir, logdir))
    try:
        vm.start()
        vm.wait_ssh()
        assert vm.wait_system_running() == "running", vm.ssh("systemctl --failed", check=False).stdout
        yield RealHost(vm, logdir)
    finally:
        vm.stop()


def _ok(run):
    assert run.returncode == 0, run.output[-6000:]
    return run


def assert_healthy(host):
    assert host.failed_units() == ""
    assert host.system_state() == "running"


def test_rollout_on_the_root_cgroup(realhost):
    assert realhost.rto_ms() == 1000.0
    _ok(realhost.play("netbpf.tcp_rto.rollout", tcp_rto_ms=300))
    assert realhost.rto_ms() == 300.0
    # installed and started: the unit is what systemd shows for the instance
    assert realhost.unit_state() == "active"
    assert realhost.record()["verify"] is True  # the role applied it with verify: the boot does too
    assert_healthy(realhost)


def test_reboot_restores_and_verifies(realhost):
    realhost.guest.reboot()
    assert_healthy(realhost)
    assert realhost.rto_ms() == 300.0
    assert realhost.unit_state() == "active"
    journal = realhost.guest.root("journalctl -b -o cat -u %s" % UNIT).stdout
    assert '"verification": {"checks"' in journal, journal


def test_change_then_rollback(realhost):
    _ok(realhost.play("netbpf.tcp_rto.rollout", tcp_rto_ms=200))
    assert realhost.rto_ms() == 200.0
    _ok(realhost.play("netbpf.tcp_rto.rollback"))
    assert realhost.rto_ms() == 300.0
    assert realhost.record()["rto_ms"] == 300
    assert realhost.unit_state() == "active"
    assert_healthy(realhost)


def test_reapply_after_a_failed_boot_restore_resets_the_unit(realhost):
    realhost.guest.root("echo '{}' > /etc/tcp_rto/%s.json && systemctl restart %s" % (NAME, UNIT), check=False)
    assert realhost.unit_state() == "failed"
    _ok(realhost.play("netbpf.tcp_rto.rollout", tcp_rto_ms=300))
    assert realhost.record()["rto_ms"] == 300
    assert realhost.unit_state() == "active"
    assert_healthy(realhost)


def test_not_persistent_any_more_forgets_the_record_and_the_unit(realhost):
    _ok(realhost.play("netbpf.tcp_rto.rollout", tcp_rto_ms=300, tcp_rto_persistent=False))
    assert realhost.rto_ms() == 300.0  # still applied, only not kept across reboots
    assert realhost.record() is None
    assert realhost.units() == ""
    assert_healthy(realhost)
    _ok(realhost.play("netbpf.tcp_rto.rollout", tcp_rto_ms=300))
    assert realhost.unit_state() == "active"


def test_metrics_timer_refreshes_the_textfile_until_the_option_goes(realhost):
    """tcp-rto-metrics.timer runs the copied code every 2 s; null removes it, leaving nothing failed."""
    textfile = "/run/tcp_rto_metrics.prom"
    _ok(
        realhost.play(
            "netbpf.tcp_rto.rollout", tcp_rto_ms=300, tcp_rto_metrics_textfile=textfile, tcp_rto_metrics_interval_s=2
        )
    )
    assert realhost.unit_state("tcp-rto-metrics.timer") == "active"
    series = 'tcp_rto_initial_rto_us{name="%s",rule="default"} 300000' % NAME
    written = ""
    for _attempt in range(60):  # the timer's first runs, however slow the guest
        written = realhost.guest.root("cat %s" % textfile, check=False).stdout
        if series in written:
            break
        time.sleep(1)
    assert series in written, written
    assert_healthy(realhost)
    _ok(realhost.play("netbpf.tcp_rto.rollout", tcp_rto_ms=300))
    assert realhost.unit_state("tcp-rto-metrics.timer") == "inactive"
    assert realhost.guest.root("ls /etc/systemd/system", check=False).stdout.count("tcp-rto-metrics") == 0
    assert_healthy(realhost)


def test_removal_leaves_no_unit(realhost):
    """Also after a reboot: checked after the one below."""
    _ok(realhost.play("netbpf.tcp_rto.rollback", tcp_rto_name=NAME, tcp_rto_state="absent"))
    assert realhost.rto_ms() == 1000.0
    assert realhost.record() is None
    assert realhost.units() == ""
    assert_healthy(realhost)


# ---------------------------------------------------------------- unit: a service that restarts

SERVICE = "rtoprobe.service"
# A service ordered after network-online.target whose main process first reports the initial RTO of
# its own first connect (the probe joins the cgroup it is already in), then stays.
SERVICE_TEXT = """\
[Unit]
Description=Reports the initial RTO of its first connect
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/bin/sh -c 'python3 /usr/local/bin/syn_rto_probe.py /sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup); exec sleep infinity'

[Install]
WantedBy=multi-user.target
"""
SERVICE_CGROUP = "/sys/fs/cgroup/system.slice/" + SERVICE


def service_reports(host):
    """The initial RTOs (ms) the service's starts reported, oldest first."""
    journal = host.guest.root("journalctl -u %s -o cat --no-pager" % SERVICE).stdout
    return [int(line) / 1000.0 for line in journal.split() if line.isdigit()]


def service_start(host, command):
    """systemctl command the service, then the RTO its new start reported."""
    before = len(service_reports(host))
    host.guest.root(command)
    host.guest.root(
        "for i in $(seq 120); do [ $(journalctl -u %s -o cat | grep -c '^[0-9]*$') -gt %d ] && exit 0; sleep 1; done; exit 1"
        % (SERVICE, before)
    )
    return service_reports(host)[-1]


LATE_TEXT = """\
[Unit]
Description=A service in a slice of its own, started after network-online.target
Wants=network-online.target
After=network-online.target

[Service]
Slice=late.slice
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""
LATE_SLICE = "/sys/fs/cgroup/late.slice"


def test_instance_on_a_slice_made_after_network_online(realhost):
    """Restored by tcp-rto@late.service, ordered before network-online.target, while the slice's
    cgroup appears only with the service ordered after it: checked after the reboot below."""
    realhost.guest.write("/etc/systemd/system/late.service", LATE_TEXT)
    realhost.guest.root("systemctl daemon-reload && systemctl enable --now late.service")
    _ok(realhost.play("netbpf.tcp_rto.rollout", tcp_rto_name="late", tcp_rto_cgroup=LATE_SLICE, tcp_rto_ms=400))
    assert realhost.unit_state("tcp-rto@late.service") == "active"


def test_unit_follows_a_service_across_restarts_and_reboot(realhost):
    with open(PROBE) as handle:
        realhost.guest.write("/usr/local/bin/syn_rto_probe.py", handle.read())
    realhost.guest.write("/etc/systemd/system/" + SERVICE, SERVICE_TEXT)
    assert service_start(realhost, "systemctl daemon-reload && systemctl enable --now %s" % SERVICE) == 1000.0

    _ok(realhost.play("netbpf.tcp_rto.rollout", tcp_rto_name="svc", tcp_rto_unit=SERVICE, tcp_rto_ms=200))
    assert realhost.rto_ms(SERVICE_CGROUP) == 200.0  # attached to the running service right away
    assert realhost.rto_ms() == 1000.0  # and nowhere else
    assert "tcp-rto@svc" not in realhost.units()  # its starts attach it: no boot unit

    assert service_start(realhost, "systemctl restart %s" % SERVICE) == 200.0
    assert service_start(realhost, "systemctl stop %s && systemctl start %s" % (SERVICE, SERVICE)) == 200.0
    realhost.guest.root("systemctl daemon-reload")
    assert realhost.rto_ms(SERVICE_CGROUP) == 200.0
    assert_healthy(realhost)

    realhost.guest.reboot()
    assert_healthy(realhost)
    # the instance removed before the reboot stays removed
    assert realhost.rto_ms() == 1000.0
    assert "tcp-rto@default" not in realhost.units()
    boot_reports = realhost.guest.root("journalctl -b -u %s -o cat | grep '^[0-9]*$'" % SERVICE).stdout.split()
    assert boot_reports == ["200000"]  # the first connect after the boot already had it
    info = realhost.guest.root("journalctl -b -u %s -o cat" % SERVICE).stdout
    assert "tcp-rto attach of svc" in info and '"ok": true' in info, info

    # the slice instance: not failed at boot (assert_healthy above), restored once the slice appeared
    realhost.guest.root(
        "for i in $(seq 120); do journalctl -b -u tcp-rto@late -o cat | grep -q '^tcp-rto restore of late: {' && exit 0;"
        " sleep 1; done; journalctl -b -u tcp-rto@late -o cat; exit 1"
    )
    assert realhost.unit_state("tcp-rto@late.service") == "active"
    realhost.guest.root("mkdir -p %s/probe" % LATE_SLICE)  # a leaf below the slice for the probe
    assert realhost.rto_ms(LATE_SLICE + "/probe") == 400.0
    realhost.guest.root("rmdir %s/probe" % LATE_SLICE)


def test_unit_removal_leaves_the_service_as_it_was(realhost):
    _ok(realhost.play("netbpf.tcp_rto.rollback", tcp_rto_name="late", tcp_rto_state="absent"))
    _ok(realhost.play("netbpf.tcp_rto.rollback", tcp_rto_name="svc", tcp_rto_state="absent"))
    assert realhost.units() == ""
    assert realhost.guest.root("ls /etc/systemd/system/%s.d" % SERVICE, check=False).returncode != 0
    assert service_start(realhost, "systemctl restart %s" % SERVICE) == 1000.0
    assert_healthy(realhost)
