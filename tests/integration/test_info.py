"""netbpf.tcp_rto.tcp_initial_rto_info through ansible-playbook, checked against bpftool."""

import os
import shutil
import subprocess

import pytest
from test_tcp_initial_rto import load_foreign_program

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import features, host, info
from ansible_collections.netbpf.tcp_rto.tests.support import aids
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import bpftool, cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz

pytestmark = pytest.mark.kernel
INFO = "netbpf.tcp_rto.tcp_initial_rto_info"


def gather(playbook, check=False, **args):
    """The info module's result; args may hold the test-only parameters of aids.py."""
    args, environment = aids.split(args)
    run = playbook.run([{"name": "info", INFO: args, "environment": environment}], check=check)
    assert run.results and run.results[-1]["status"] == "ok", run.output
    return run.results[-1]


def test_reports_instances_counters_and_foreign_programs(playbook, cgroup, bpffs, tmp_path):
    pin_dir = os.path.join(bpffs, "tcp_rto")
    other_cgroup = os.path.join(cgroup, "other")
    os.mkdir(other_cgroup)
    empty = gather(playbook, pin_dir=pin_dir)
    assert empty["supported"] is True and empty["unsupported_reasons"] == []
    assert empty["instances"] == [] and empty["changed"] is False
    assert empty["records_dir"] == "/etc/tcp_rto"

    root = str(tmp_path / "root")
    applied = playbook.module(
        name="dc",
        cgroup=cgroup,
        pin_dir=pin_dir,
        mount_bpffs=False,
        persistent=True,
        _persist_root=root,
        rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}, {"dest": "10.0.0.0/8", "rto_ms": 50}],
    )
    foreign = load_foreign_program(tmp_path, bpffs, "")
    subprocess.run(["bpftool", "cgroup", "attach", other_cgroup, "sock_ops", "pinned", foreign, "multi"], check=True)
    try:
        report = gather(playbook, check=True, pin_dir=pin_dir, cgroups=[other_cgroup], _persist_root=root)
        foreign_id = bpftool("prog", "show", "pinned", foreign)["id"]
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", other_cgroup, "sock_ops", "pinned", foreign], check=False)
    assert report["records_dir"] == os.path.join(root, "etc", "tcp_rto")
    [instance] = report["instances"]
    assert instance["program_id"] == applied["instance"]["program_id"] == cgroup_program_ids(cgroup)[0]
    assert (instance["cgroup"], instance["attached"], instance["attach_mode"]) == (cgroup, True, "link")
    assert instance["persistent"] is True and instance["problems"] == []
    assert [(rule["dest"], rule["rto_ms"], rule["rto_jiffies"]) for rule in instance["rules"]] == [
        ("127.0.0.0/8", 200, 50),
        ("10.0.0.0/8", 52, 13),
    ]
    assert instance["rules"][0]["hits"] >= 2  # the module's two verification handshakes
    assert instance["rules"][1]["hits"] == 0
    assert instance["foreign_programs"] == []
    assert [prog["id"] for prog in report["foreign_programs"][other_cgroup]] == [foreign_id]
    assert report["kernel"]["hz"] == kernel_hz()


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_reports_drift(playbook, cgroup, bpffs):
    pin_dir = os.path.join(bpffs, "tcp_rto")
    applied = playbook.module(
        name="dc", cgroup=cgroup, pin_dir=pin_dir, mount_bpffs=False, rto_ms=300, _legacy_attach=True
    )
    subprocess.run(
        ["bpftool", "cgroup", "detach", cgroup, "sock_ops", "id", str(applied["instance"]["program_id"])], check=True
    )
    report = gather(playbook, pin_dir=pin_dir)
    [instance] = report["instances"]
    assert instance["attached"] is False
    assert instance["default_rto_ms"] == 300
    assert instance["state"] == "detached"
    assert "detached outside tcp_rto" in instance["problems"][0]
    assert report["problems"] == ["dc: " + instance["problems"][0]]


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_a_recreated_cgroup_is_a_detached_instance_with_its_cause(playbook, cgroup, bpffs):
    """What a restart of a systemd service does to an instance on its cgroup."""
    pin_dir = os.path.join(bpffs, "tcp_rto")
    service = os.path.join(cgroup, "api.service")
    os.mkdir(service)
    playbook.module(name="api", cgroup=service, pin_dir=pin_dir, mount_bpffs=False, rto_ms=300)
    assert gather(playbook, pin_dir=pin_dir)["instances"][0]["state"] == "ok"
    os.rmdir(service)
    os.mkdir(service)
    report = gather(playbook, pin_dir=pin_dir)
    [instance] = report["instances"]
    assert instance["state"] == "detached"
    [problem] = instance["problems"]
    assert "the cgroup was removed and re-created, as systemd does at every start of a unit" in problem
    assert report["problems"] == ["api: " + problem]


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_a_recorded_instance_the_kernel_does_not_hold_is_a_problem(playbook, cgroup, bpffs, tmp_path):
    pin_dir = os.path.join(bpffs, "tcp_rto")
    root = str(tmp_path / "root")
    playbook.module(name="dc", cgroup=cgroup, pin_dir=pin_dir, mount_bpffs=False, persistent=True, _persist_root=root)
    shutil.rmtree(os.path.join(pin_dir, "dc"))  # as after a boot whose restore failed
    report = gather(playbook, pin_dir=pin_dir, _persist_root=root)
    assert report["instances"] == [] and report["recorded_not_loaded"] == ["dc"]
    [problem] = report["problems"]
    assert problem.startswith("recorded, not loaded: dc ") and "journalctl -u tcp-rto@dc" in problem


def test_reports_what_a_rollback_of_each_instance_puts_back(playbook, cgroup, bpffs, tmp_path):
    """history: the newest record of each instance and how many it keeps, read from the files the
    module writes (history_steps); a record that is no configuration is a problem of the host."""
    pin_dir = os.path.join(bpffs, "tcp_rto")
    root = str(tmp_path / "root")
    common = dict(name="dc", cgroup=cgroup, pin_dir=pin_dir, mount_bpffs=False, history_steps=3, _persist_root=root)
    playbook.module(rto_ms=300, **common)
    playbook.module(rto_ms=200, **common)
    records_dir = os.path.join(root, "etc", "tcp_rto")
    with open(os.path.join(records_dir, "gone.previous.json"), "w") as handle:
        handle.write("{not json")
    report = gather(playbook, pin_dir=pin_dir, _persist_root=root)
    assert sorted(report["history"]) == ["dc", "gone"]
    previous = report["history"]["dc"]["previous"]
    assert (previous["state"], previous["rto_ms"], previous["cgroup"]) == ("present", 300, cgroup)
    assert report["history"]["dc"]["records"] == 2  # before 300: no instance; before 200: 300
    assert report["history"]["gone"] == {"previous": None, "records": 1}
    [problem] = report["problems"]
    assert problem.startswith("gone: its history record gone.previous.json in %s cannot be read" % records_dir)


def test_old_kernel_is_unsupported_with_its_reason(monkeypatch):
    """The one thing that cannot be real here: a kernel without sock_ops programs that read
    is_fullsock and state (before 4.16), as its probe reports it (test switch)."""
    monkeypatch.setenv(features.FORCE_MISSING_ENVIRONMENT, "sock_ops")
    report = info.gather("/nonexistent/tcp_rto")
    assert report["supported"] is False
    assert any("4.16" in reason and "upgrade the kernel" in reason for reason in report["unsupported_reasons"])
    assert report["kernel"]["features"]["sock_ops"] is False
    assert report["instances"] == []


def test_reports_probed_features(monkeypatch):
    """The features come from probes, not the release: a release string says nothing."""
    monkeypatch.delenv(features.FORCE_MISSING_ENVIRONMENT, raising=False)
    monkeypatch.setattr(host, "kernel_release", lambda: "4.9.0-19-amd64")
    report = info.gather("/nonexistent/tcp_rto")
    assert report["supported"] is True, report["unsupported_reasons"]
    assert all(report["kernel"]["features"][name] for name in features.PROBE_NAMES)
