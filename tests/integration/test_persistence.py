"""persistent: true keeps an instance across a reboot, simulated by removing every kernel object of
the instance and running the ExecStart line of its systemd unit. Files go under a test root."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest

from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids, snapshot
from ansible_collections.netbpf.tcp_rto.tests.support.paths import MANAGED_PYTHON, managed_cache_tag
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import observed_rto_us
from ansible_collections.netbpf.tcp_rto.tests.support.systemd import run_as_systemd

pytestmark = pytest.mark.kernel


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    path.mkdir()
    return str(path)


@pytest.fixture
def args(cgroup, bpffs, root):
    return dict(
        name="boot",
        cgroup=cgroup,
        pin_dir=os.path.join(bpffs, "tcp_rto"),
        mount_bpffs=False,
        persistent=True,
        _persist_root=root,
        rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}],
    )


CODE_DIR = "var/lib/tcp_rto/lib/ansible_collections/netbpf/tcp_rto/plugins/module_utils"
COPIED_CODE = (
    "apply",
    "attach",
    "bpf_info",
    "bpf_maps",
    "bpf_object",
    "bpf_syscall",
    "btf",
    "btf_ext",
    "bytecode",
    "cgroups",
    "coexistence",
    "current",
    "desired",
    "drift",
    "elf",
    "fault",
    "features",
    "handshakes",
    "harm",
    "host",
    "host_paths",
    "hz",
    "info",
    "learned",
    "loader",
    "lock",
    "map_definitions",
    "metrics",
    "metrics_timer",
    "persistence",
    "pins",
    "plan",
    "probe",
    "probe_child",
    "reconcile",
    "record",
    "restore",
    "rto_program",
    "safe_files",
    "service_unit",
    "syn_give_up",
    "syn_retries_probe",
    "systemd",
    "telemetry",
    "uapi",
    "views",
)


def files_under(root):
    return sorted(
        os.path.relpath(os.path.join(directory, name), root)
        for directory, _dirs, names in os.walk(root)
        for name in names
    )


def exec_start(root, name):
    """The unit's ExecStart command line for instance name, as systemd would run it."""
    with open(os.path.join(root, "etc/systemd/system/tcp-rto@.service")) as unit:
        line = next(line for line in unit if line.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart=") :].replace("%i", name))


def reboot(args):
    """What a reboot does to the instance: every pin and attachment gone."""
    shutil.rmtree(args["pin_dir"])


def test_files_installed_and_unit_verifies(playbook, args, root):
    applied = playbook.module(**args)
    assert applied["status"] == "ok", applied["_output"]
    assert "record %s/etc/tcp_rto/boot.json" % root in applied["actions"]
    assert files_under(root) == sorted(
        [
            "etc/systemd/system/multi-user.target.wants/tcp-rto@boot.service",
            "etc/systemd/system/tcp-rto@.service",
            "etc/tcp_rto/boot.json",
            "var/lib/tcp_rto/objects/boot.bpf.o",
            "var/lib/tcp_rto/restore.py",
        ]
        + ["%s/%s.py" % (CODE_DIR, name) for name in COPIED_CODE]
        # compiled by the managed host's Python, which later module runs take (bytecode.py)
        + ["%s/__pycache__/%s.%s.pyc" % (CODE_DIR, name, managed_cache_tag()) for name in COPIED_CODE]
    )
    for path in files_under(root):
        status = os.lstat(os.path.join(root, path))
        assert status.st_uid == 0 and (os.path.islink(os.path.join(root, path)) or status.st_mode & 0o777 == 0o644)
    assert playbook.module(**args)["changed"] is False

    unit_copy = os.path.join(root, "tcp-rto@boot.service")  # systemd-analyze verifies instances, not templates
    shutil.copy(os.path.join(root, "etc/systemd/system/tcp-rto@.service"), unit_copy)
    verify = subprocess.run(
        ["systemd-analyze", "verify", unit_copy],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout


def test_a_later_run_takes_the_code_compiled_on_the_host(playbook, args, root):
    """A module run takes a module_utils module's code from the .pyc beside its copy when that was
    compiled from the same source (bytecode.py): here harm.py's, its code replaced to say so."""
    assert playbook.module(**args)["status"] == "ok"
    pyc = os.path.join(root, CODE_DIR, "__pycache__", "harm.%s.pyc" % managed_cache_tag())
    with open(pyc, "rb") as handle:
        header = handle.read(16)  # names the source it was compiled from
    marker = "harm.py taken from the host's compiled copy"
    code = subprocess.run(
        [
            MANAGED_PYTHON,
            "-c",
            "import marshal, sys; sys.stdout.buffer.write(marshal.dumps(compile(sys.argv[1], 'harm', 'exec')))",
            "raise SystemExit(%r)" % marker,
        ],
        stdout=subprocess.PIPE,
        check=True,
    ).stdout
    with open(pyc, "wb") as handle:
        handle.write(header + code)
    assert marker in playbook.module(**args)["_output"]


def test_restore_after_reboot(playbook, args, root, cgroup):
    applied = playbook.module(**args)
    assert observed_rto_us(cgroup) == 200000
    reboot(args)
    assert cgroup_program_ids(cgroup) == []
    assert observed_rto_us(cgroup) == 1000000

    restore = run_as_systemd(exec_start(root, "boot"))
    assert restore.returncode == 0, restore.stderr
    assert '"ok": true' in restore.stdout
    assert observed_rto_us(cgroup) == 200000
    assert len(cgroup_program_ids(cgroup)) == 1
    assert cgroup_program_ids(cgroup) != [applied["instance"]["program_id"]]  # loaded anew
    # Ansible afterwards sees the restored instance as its own: nothing to change
    assert playbook.module(**args)["changed"] is False


@pytest.mark.parametrize("damage", ["corrupt", "edited", "missing"])
def test_bad_record_fails_loudly_and_touches_nothing(playbook, args, root, cgroup, damage):
    playbook.module(**args)
    reboot(args)
    record = os.path.join(root, "etc/tcp_rto/boot.json")
    if damage == "corrupt":
        with open(record, "w") as handle:
            handle.write('{"format": 1, "name": "boot", "rules": [')
    elif damage == "edited":
        with open(record) as handle:
            text = handle.read()
        with open(record, "w") as handle:
            handle.write(text.replace('"rto_ms": 200', '"rto_ms": 0'))
    else:
        os.unlink(record)
    before = snapshot([cgroup])["cgroups"]
    restore = run_as_systemd(exec_start(root, "boot"))
    assert restore.returncode == 1
    assert restore.stderr.startswith("tcp-rto restore of boot failed: ")
    assert {"corrupt": "is not valid", "edited": "rto_ms must be positive", "missing": "no record"}[
        damage
    ] in restore.stderr
    assert "Traceback" not in restore.stderr
    # what a restore process could leave after it exits: attachments and pins
    assert snapshot([cgroup])["cgroups"] == before
    assert not os.path.exists(args["pin_dir"])


def test_absent_removes_every_file(playbook, args, root, cgroup):
    playbook.module(**args)
    other = dict(args, name="other", cgroup=os.path.join(cgroup, "other"))
    os.mkdir(other["cgroup"])
    playbook.module(**other)
    removed = playbook.module(state="absent", **args)
    assert removed["changed"] is True
    assert "etc/tcp_rto/other.json" in files_under(root)  # the other instance keeps the shared files
    assert "etc/systemd/system/tcp-rto@.service" in files_under(root)
    assert not [path for path in files_under(root) if "boot" in path]
    playbook.module(state="absent", **other)
    assert files_under(root) == []
    assert playbook.module(state="absent", **args)["changed"] is False


def test_not_persistent_any_more_forgets_the_record(playbook, args, root, cgroup):
    playbook.module(**args)
    forgotten = playbook.module(**dict(args, persistent=False))
    assert forgotten["status"] == "ok", forgotten["_output"]
    assert forgotten["changed"] is True
    assert files_under(root) == []  # the only instance: the unit and the copied code go too
    assert observed_rto_us(cgroup) == 200000  # the kernel keeps it until the next boot
    assert playbook.module(**dict(args, persistent=False))["changed"] is False


def test_not_persistent_keeps_the_unit_another_instance_needs(playbook, args, root, cgroup):
    playbook.module(**args)
    other = dict(args, name="other", cgroup=os.path.join(cgroup, "other"))
    os.mkdir(other["cgroup"])
    playbook.module(**other)
    playbook.module(**dict(args, persistent=False))
    assert not [path for path in files_under(root) if "boot" in path]
    assert "etc/systemd/system/tcp-rto@.service" in files_under(root)
    assert "etc/tcp_rto/other.json" in files_under(root)


def test_boot_unit_runs_a_system_python_isolated(playbook, args, root):
    playbook.module(**args)
    command = exec_start(root, "boot")
    assert command[:2] == ["/usr/bin/python3", "-I"]


def test_restore_waits_for_a_cgroup_made_after_boot(playbook, args, root, cgroup, tmp_path):
    """At boot a cgroup can appear after the restore ran (made by a unit ordered after
    network-online.target, which the restore is ordered before): the restore succeeds at once and a
    process of its unit applies the instance when the cgroup appears."""
    late = os.path.join(cgroup, "late")
    os.mkdir(late)
    playbook.module(**dict(args, cgroup=late))
    reboot(args)
    os.rmdir(late)
    log = str(tmp_path / "restore.log")
    with open(log, "w") as out:
        restore = subprocess.run(
            exec_start(root, "boot"), stdout=out, stderr=subprocess.STDOUT, timeout=60, check=False
        )
    with open(log) as handle:
        said = handle.read()
    assert restore.returncode == 0, said
    assert "cgroup %s does not exist yet; process " % late in said
    waiter = int(said.split("; process ")[1].split()[0])
    try:
        os.mkdir(late)
        for _second in range(120):  # a bound, not an expectation: the waiter exits once applied
            if not os.path.exists("/proc/%d" % waiter):
                break
            time.sleep(1)
        with open(log) as handle:
            said = handle.read()
        assert "tcp-rto restore of boot: " in said.split("appears\n", 1)[1], said
        assert observed_rto_us(late) == 200000
    finally:
        if os.path.exists("/proc/%d" % waiter):
            os.kill(waiter, signal.SIGKILL)


def test_persistent_omitted_keeps_a_record_up_to_date(playbook, args, root):
    """Omitted, persistent neither creates a record nor leaves one with parameters the kernel no
    longer holds (the next boot would restore those)."""
    omitted = {key: value for key, value in args.items() if key != "persistent"}
    other = playbook.module(**dict(omitted, name="other"))
    assert other["status"] == "ok", other["_output"]
    assert not os.path.exists(os.path.join(root, "etc/tcp_rto/other.json"))
    playbook.module(**dict(omitted, name="other", state="absent"))
    playbook.module(**args)
    updated = playbook.module(**dict(omitted, rules=[{"dest": "127.0.0.0/8", "rto_ms": 300}]))
    assert "record %s/etc/tcp_rto/boot.json" % root in updated["actions"]
    with open(os.path.join(root, "etc/tcp_rto/boot.json")) as handle:
        assert json.load(handle)["rules"] == [{"dest": "127.0.0.0/8", "rto_ms": 300}]
