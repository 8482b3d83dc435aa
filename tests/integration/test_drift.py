"""Drift (issue 6, item 5): someone changes an applied instance behind tcp_rto's back with
bpftool or rm: detaches the program, deletes one of its pins, or edits a map entry.

For each case: a check-mode run reports `drift` (what changed, in words) and changed: true and
repairs nothing; the next run reports the same drift, repairs it (one program of ours attached,
every pin back, the configured RTO on a real socket, nothing of the old objects left loaded) and
shows the drift in the diff; a further run is unchanged with no drift. The tampering uses bpftool
and the shell only; the module's run() is called in this process (as the boot-time restore does),
test_drift_through_ansible shows the fields in a task result."""

import collections
import os
import subprocess
import time

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import desired, probe, reconcile, rto_program
from ansible_collections.netbpf.tcp_rto.tests.support import aids, bpf_inventory
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import bpftool
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz
from ansible_collections.netbpf.tcp_rto.tests.support.reconcile_run import module_params

pytestmark = pytest.mark.kernel

HZ = kernel_hz()
NAME = "drift"
RULE = {"dest": "127.0.0.0/8", "rto_ms": 200}
RULE_JIFFIES = -(-200 * HZ // 1000)
DEFAULT_MS = 500
PINS = bpf_inventory.instance_pins(link=False)


def hex_words(raw):
    return ["hex"] + ["%02x" % byte for byte in bytearray(raw)]


def detach(instance_dir, cgroup, prog_id):
    if os.path.exists(os.path.join(instance_dir, "link")):
        subprocess.run(["bpftool", "link", "detach", "pinned", os.path.join(instance_dir, "link")], check=True)
    else:
        subprocess.run(["bpftool", "cgroup", "detach", cgroup, "cgroup_sock_ops", "id", str(prog_id)], check=True)


def delete_pin(name):
    return lambda instance_dir, _cgroup, _prog_id: os.unlink(os.path.join(instance_dir, name))


def update_map(name, key, value):
    def tamper(instance_dir, _cgroup, _prog_id):
        pin = os.path.join(instance_dir, name)
        command = ["bpftool", "map", "update", "pinned", pin, "key", *hex_words(key), "value", *hex_words(value)]
        subprocess.run(command, check=True)

    return tamper


RULE_KEY = rto_program.encode_rule_key(desired.parse_dest(RULE["dest"], "test"))
CONFIG_KEY = rto_program.CONFIG_KEY.pack(0)
Case = collections.namedtuple("Case", "ours tamper says")
CASES = {
    "detach-link": Case("link", detach, "is not attached to"),
    "detach-multi": Case("multi", detach, "is not attached to"),
    "pin-prog-link": Case("link", delete_pin("prog"), "/prog is missing; program"),
    "pin-prog-multi": Case("multi", delete_pin("prog"), "/prog is missing; program"),
    "pin-link": Case("link", delete_pin("link"), "/link is missing, and with it the bpf_link"),
    "pin-rules": Case("link", delete_pin("rules"), "/rules is missing"),
    "pin-config": Case("multi", delete_pin("config"), "/config is missing"),
    "pin-hits": Case("link", delete_pin("hits"), "/hits is missing"),
    "pin-meta-link": Case("link", delete_pin("meta"), "/meta (the instance record) is missing; program"),
    "pin-meta-multi": Case("multi", delete_pin("meta"), "/meta (the instance record) is missing; program"),
    "edit-rule-value": Case(
        "link",
        update_map("rules", RULE_KEY, rto_program.encode_rule_value(RULE_JIFFIES * 5, 0)),
        "rules map: 127.0.0.0/8 holds %d jiffies, tcp_rto wrote %d" % (RULE_JIFFIES * 5, RULE_JIFFIES),
    ),
    "edit-rule-added": Case(
        "multi",
        update_map(
            "rules",
            rto_program.encode_rule_key(desired.parse_dest("10.0.0.0/8", "test")),
            rto_program.encode_rule_value(7, 1),
        ),
        "rules map: a rule for 10.0.0.0/8 (7 jiffies) was added",
    ),
    "edit-config-default": Case(
        "link",
        update_map("config", CONFIG_KEY, rto_program.encode_config(9, rto_program.DIRECTIONS["both"])),
        "config map: the default holds 9 jiffies",
    ),
    "edit-config-direction": Case(
        "multi",
        update_map(
            "config",
            CONFIG_KEY,
            rto_program.encode_config(-(-DEFAULT_MS * HZ // 1000), rto_program.DIRECTIONS["incoming"]),
        ),
        "config map: the direction holds incoming, tcp_rto wrote both",
    ),
}


@pytest.fixture
def params(cgroup, bpffs, tmp_path):
    return module_params(
        name=NAME,
        cgroup=cgroup,
        rules=[RULE],
        rto_ms=DEFAULT_MS,
        pin_dir=os.path.join(bpffs, "tcp_rto"),
        mount_bpffs=False,
        _persist_root=str(tmp_path),
    )


def kernel_view(instance_dir, cgroup):
    """What a repair would change: our cgroup's sock_ops attachments, the pins, their objects' ids."""
    pins = {}
    for name in sorted(os.listdir(instance_dir)):
        kind = "prog" if name == "prog" else "link" if name == "link" else "map"
        shown = bpftool(kind, "show", "pinned", os.path.join(instance_dir, name))
        pins[name] = shown["id"]
    return {"cgroup": [entry["id"] for entry in bpftool("cgroup", "show", cgroup)], "pins": pins}


def loaded(kind, ids):
    """Which of the ids are still loaded; waits out the kernel's deferred freeing (RCU)."""
    deadline = time.monotonic() + 5
    while True:
        present = {entry["id"] for entry in bpftool(kind, "show")} & set(ids)
        if not present or time.monotonic() > deadline:
            return present
        time.sleep(0.05)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_drift_is_reported_and_repaired(params, cgroup, case):
    with aids.applied(dict(params, _legacy_attach=case.ours == "multi")) as params:
        instance_dir = os.path.join(params["pin_dir"], NAME)
        applied = reconcile.run(params)
        old = kernel_view(instance_dir, cgroup)
        old_prog = applied["instance"]["program_id"]
        assert old["cgroup"] == [old_prog]

        case.tamper(instance_dir, cgroup, old_prog)
        tampered = kernel_view(instance_dir, cgroup)

        checked = reconcile.run(params, check_mode=True)
        assert checked["changed"] is True
        assert any(case.says in finding for finding in checked["drift"]), checked["drift"]
        assert kernel_view(instance_dir, cgroup) == tampered  # check mode repairs nothing

        repaired = reconcile.run(params, diff=True)
        assert repaired["changed"] is True
        assert repaired["drift"] == checked["drift"]
        assert repaired["diff"]["before"]["drift"] == repaired["drift"]
        assert repaired["verification"]["ok"] is True
        now = kernel_view(instance_dir, cgroup)
        assert sorted(now["pins"]) == sorted(PINS + (["link"] if case.ours == "link" else []))
        assert now["cgroup"] == [repaired["instance"]["program_id"]]
        assert probe.outgoing_rto_us(cgroup) == RULE_JIFFIES * 1000000 // HZ
        # Nothing of the old objects is left loaded unless the repair still uses it.
        assert loaded("prog", {old_prog} - {now["pins"]["prog"]}) == set()
        old_maps = {old["pins"][name] for name in ("rules", "config", "hits", "meta")}
        assert loaded("map", old_maps - set(now["pins"].values())) == set()

        again = reconcile.run(params)
        assert (again["changed"], again["drift"], again["actions"]) == (False, [], [])


def test_parameter_change_is_not_drift(params):
    """A new value from the user is an update, not drift: the maps still hold what tcp_rto wrote."""
    with aids.applied(params) as params:
        reconcile.run(params)
        changed = reconcile.run(dict(params, rules=[{"dest": "127.0.0.0/8", "rto_ms": 300}], rto_ms=None))
        assert changed["actions"] == ["update rules", "update default and direction"]
        assert changed["drift"] == []


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_drift_through_ansible(playbook, params, cgroup):
    args = {key: value for key, value in params.items() if key not in ("src", "hz", "persistent")}
    first = playbook.module(**args)
    assert first["status"] == "ok", first["_output"]
    detach(os.path.join(params["pin_dir"], NAME), cgroup, first["instance"]["program_id"])
    repaired = playbook.module(diff=True, **args)
    assert repaired["changed"] is True, repaired["_output"]
    assert [finding for finding in repaired["drift"] if "is not attached to %s" % cgroup in finding]
    assert "drift" in repaired["_output"]  # the diff shows it
    assert playbook.module(**args)["changed"] is False
