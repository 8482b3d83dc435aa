"""netbpf.tcp_rto.tcp_initial_rto through ansible-playbook on this machine's kernel, checked with
bpftool and a separate TCP_INFO probe."""

import os
import subprocess

import pytest

from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import bpftool, cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz
from ansible_collections.netbpf.tcp_rto.tests.support.paths import REPO
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import observed_rto_us

pytestmark = pytest.mark.kernel

HZ = kernel_hz()
US_PER_JIFFY = 1000000 // HZ


def jiffies_us(ms):
    """The µs TCP_INFO shows for rto_ms: rounded up to whole jiffies like the module does."""
    return -(-ms * HZ // 1000) * US_PER_JIFFY


@pytest.fixture
def args(cgroup, bpffs):
    """Module arguments for an instance in the test's own cgroup and private bpffs."""
    return dict(name="t1", cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False)


def program_id(result):
    return result["instance"]["program_id"]


def test_check_apply_reapply(playbook, args, cgroup):
    wanted = dict(args, rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}], rto_ms=500)

    planned = playbook.module(check=True, **wanted)
    assert planned["changed"] is True, planned["_output"]
    assert cgroup_program_ids(cgroup) == []
    assert not os.path.exists(args["pin_dir"])

    applied = playbook.module(**wanted)
    assert applied["changed"] is True, applied["_output"]
    assert applied["verification"] == {
        "ok": True,
        "checks": [
            {"direction": "outgoing", "address": "127.0.0.1", "expected_ms": 200, "observed_ms": 200, "ok": True},
            {"direction": "incoming", "address": "127.0.0.1", "expected_ms": 200, "observed_ms": 200, "ok": True},
        ],
    }
    assert cgroup_program_ids(cgroup) == [program_id(applied)]
    assert observed_rto_us(cgroup) == jiffies_us(200)
    assert applied["instance"]["rules"][0]["rto_jiffies"] == -(-200 * HZ // 1000)
    assert applied["instance"]["rules"][0]["hits"] >= 1  # the verification handshake
    assert applied["kernel"]["hz"] == HZ

    again = playbook.module(**wanted)
    assert again["changed"] is False, again["actions"]
    assert program_id(again) == program_id(applied)
    assert playbook.module(check=True, **wanted)["changed"] is False


def test_value_change_keeps_program(playbook, args, cgroup):
    first = playbook.module(rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}], **args)
    changed = playbook.module(
        rules=[{"dest": "127.0.0.0/8", "rto_ms": 300}, {"dest": "fd00::/8", "rto_ms": 40}], rto_ms=700, **args
    )
    assert changed["changed"] is True
    assert changed["actions"] == ["update rules", "update default and direction"]
    assert program_id(changed) == program_id(first)
    assert observed_rto_us(cgroup) == jiffies_us(300)

    only_default = playbook.module(rules=[], rto_ms=700, **args)
    assert program_id(only_default) == program_id(first)
    assert observed_rto_us(cgroup) == jiffies_us(700)


def test_an_instance_as_one_mapping_applies_as_the_options_do(playbook, args, cgroup):
    # the values as an INI inventory gives them (strings), a null for an option left out
    instance = dict(
        args,
        name="not-this",
        mount_bpffs="false",
        unit=None,
        rto_ms="500",
        rules=[{"dest": "127.0.0.0/8", "rto_ms": "200"}],
    )
    applied = playbook.module(name=args["name"], instance=instance)
    assert applied["changed"] is True, applied["_output"]
    assert applied["instance"]["name"] == args["name"]  # the option given on its own wins
    assert observed_rto_us(cgroup) == jiffies_us(200)
    # the same instance as options on their own: nothing to do
    again = playbook.module(rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}], rto_ms=500, **args)
    assert again["changed"] is False, again["actions"]


def test_absent_leaves_nothing(playbook, args, cgroup):
    applied = playbook.module(rto_ms=500, **args)
    prog_id = program_id(applied)
    removed = playbook.module(state="absent", **args)
    assert removed["changed"] is True
    assert cgroup_program_ids(cgroup) == []
    assert not os.path.exists(args["pin_dir"])
    assert prog_id not in [prog["id"] for prog in bpftool("prog", "show")]
    assert observed_rto_us(cgroup) == 1000000
    assert playbook.module(state="absent", **args)["changed"] is False


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_diff_mode(playbook, args):
    playbook.module(rto_ms=500, **args)
    result = playbook.module(diff=True, rules=[{"dest": "10.0.0.0/8", "rto_ms": 52}], rto_ms=500, **args)
    assert result["diff"]["before"]["rules"] == []
    assert result["diff"]["after"]["rules"] == [{"dest": "10.0.0.0/8", "rto_ms": 52, "rto_jiffies": 13}]
    assert result["diff"]["before"]["default_rto_ms"] == result["diff"]["after"]["default_rto_ms"] == 500


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_legacy_attach_path(playbook, args, cgroup):
    legacy = dict(args, _legacy_attach=True)
    applied = playbook.module(rto_ms=500, **legacy)
    assert applied["instance"]["attach_mode"] == "multi"
    assert bpftool("link", "show") == [] or all(
        link.get("prog_id") != program_id(applied) for link in bpftool("link", "show")
    )
    assert observed_rto_us(cgroup) == jiffies_us(500)
    assert playbook.module(rto_ms=500, **legacy)["changed"] is False
    changed = playbook.module(rto_ms=300, **legacy)
    assert program_id(changed) == program_id(applied)
    # switching to a bpf_link takes a second program, attached before the first goes
    linked = playbook.module(rto_ms=300, **args)
    assert linked["instance"]["attach_mode"] == "link"
    assert cgroup_program_ids(cgroup) == [program_id(linked)]
    assert playbook.module(state="absent", **args)["changed"] is True
    assert cgroup_program_ids(cgroup) == []


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_move_to_another_cgroup(playbook, args, cgroup):
    other = os.path.join(cgroup, "moved")
    os.mkdir(other)
    playbook.module(rto_ms=500, **args)
    moved = playbook.module(rto_ms=500, **dict(args, cgroup=other))
    assert moved["changed"] is True
    assert cgroup_program_ids(cgroup) == []
    assert cgroup_program_ids(other) == [program_id(moved)]
    assert observed_rto_us(other) == jiffies_us(500)


def load_foreign_program(tmp_path, bpffs, body):
    """Compile and pin (with bpftool) a sock_ops program that is not ours; returns its pin."""
    source = tmp_path / "foreign.c"
    source.write_text(
        "#include <linux/bpf.h>\n"
        '__attribute__((section("sockops"), used)) int foreign(struct bpf_sock_ops *skops)\n'
        "{ if (skops->op == BPF_SOCK_OPS_TIMEOUT_INIT) { %s } return 1; }\n"
        'char _license[] __attribute__((section("license"), used)) = "GPL";\n' % body
    )
    obj = tmp_path / "foreign.o"
    subprocess.run(
        ["clang", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(source), "-o", str(obj)],
        check=True,
    )
    pin = os.path.join(bpffs, "foreign")
    subprocess.run(["bpftool", "prog", "load", str(obj), pin, "type", "sockops"], check=True)
    return pin


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_foreign_program_survives_every_step(playbook, args, cgroup, bpffs, tmp_path):
    pin = load_foreign_program(tmp_path, bpffs, "")
    subprocess.run(["bpftool", "cgroup", "attach", cgroup, "sock_ops", "pinned", pin, "multi"], check=True)
    foreign_id = bpftool("prog", "show", "pinned", pin)["id"]
    try:
        for step in (
            dict(rto_ms=500),
            dict(rto_ms=500),
            dict(rto_ms=300),
            dict(rto_ms=300, _legacy_attach=True),
            dict(state="absent"),
        ):
            result = playbook.module(**dict(args, **step))
            assert result["status"] == "ok", result["_output"]
            assert foreign_id in cgroup_program_ids(cgroup)
            if step.get("state") != "absent":
                assert [prog["id"] for prog in result["foreign_programs"]] == [foreign_id]
        assert cgroup_program_ids(cgroup) == [foreign_id]
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", cgroup, "sock_ops", "pinned", pin], check=False)


@pytest.fixture
def variant_source(tmp_path):
    """The shipped program under another file name: a different object (its FILE symbol changes),
    the same behaviour. Given as src, it is compiled on the controller."""
    source = tmp_path / "tcp_initial_rto_v2.bpf.c"
    source.write_text(open(os.path.join(REPO, "files", "bpf", "tcp_initial_rto.bpf.c")).read())
    return str(source)


@pytest.mark.parametrize("legacy", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["link", "multi"])
def test_new_object_replaces_program(playbook, args, cgroup, variant_source, legacy):
    args = dict(args, _legacy_attach=legacy)
    first = playbook.module(rto_ms=500, **args)
    replaced = playbook.module(rto_ms=500, src=variant_source, **args)
    assert replaced["changed"] is True, replaced["_output"]
    assert replaced["instance"]["object_sha256"] != first["instance"]["object_sha256"]
    assert program_id(replaced) != program_id(first)
    assert cgroup_program_ids(cgroup) == [program_id(replaced)]
    assert observed_rto_us(cgroup) == jiffies_us(500)
    assert playbook.module(rto_ms=500, src=variant_source, **args)["changed"] is False


@pytest.mark.parametrize(
    "direction, checked",
    [
        ("outgoing", {"outgoing": 500}),
        ("incoming", {"outgoing": 1000, "incoming": 500}),
        ("both", {"outgoing": 500, "incoming": 500}),
    ],
)
def test_direction(playbook, args, cgroup, direction, checked):
    result = playbook.module(rto_ms=500, direction=direction, **args)
    checks = {check["direction"]: check for check in result["verification"]["checks"]}
    assert {name: check["expected_ms"] for name, check in checks.items()} == checked
    # each check compares its expectation with what the kernel did (the SYN-ACK side within its
    # reading's window: a loaded machine can make that reading an estimate, 500 give or take jiffies)
    assert all(check["ok"] for check in checks.values()), result["_output"]
    assert checks["outgoing"]["observed_ms"] == checked["outgoing"]
    assert observed_rto_us(cgroup) == checked["outgoing"] * 1000


def test_verification_catches_an_overriding_ancestor(playbook, args, cgroup, bpffs, tmp_path):
    """A foreign program on the parent that writes the reply unconditionally beats ours: the task
    must fail and say so, not pass silently."""
    child = os.path.join(cgroup, "child")
    os.mkdir(child)
    pin = load_foreign_program(tmp_path, bpffs, "skops->reply = 2500;")
    subprocess.run(["bpftool", "cgroup", "attach", cgroup, "sock_ops", "pinned", pin, "multi"], check=True)
    try:
        result = playbook.module(rto_ms=500, **dict(args, cgroup=child))
        assert result["status"] == "failed", result["_output"]
        assert "verification failed" in result["msg"] and "ancestor cgroup" in result["msg"]
        assert result["verification"]["checks"][0]["observed_ms"] == 2500 * 1000 // HZ
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", cgroup, "sock_ops", "pinned", pin], check=False)


def test_ipv6_rule(playbook, args, cgroup):
    playbook.module(rules=[{"dest": "::1/128", "rto_ms": 120}], **args)
    assert observed_rto_us(cgroup, "::1") == jiffies_us(120)
    assert observed_rto_us(cgroup, "127.0.0.1") == 1000000


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_nested_instances_most_specific_wins(playbook, args, cgroup):
    inner = os.path.join(cgroup, "inner")
    os.mkdir(inner)
    playbook.module(rto_ms=500, **dict(args, name="outer"))
    inner_result = playbook.module(rto_ms=200, **dict(args, name="inner", cgroup=inner))
    assert inner_result["verification"]["ok"] is True, inner_result["_output"]
    assert observed_rto_us(inner) == jiffies_us(200)
    assert observed_rto_us(cgroup) == jiffies_us(500)
