"""IPv6 rules over the IPv4-mapped range (issue 11, item 3), in module runs on this machine's
kernel (tests/support/reconcile_run.py: reconcile.run in its own process). IPv4 destinations
live in the rules trie as ::ffff:a.b.c.d, so an IPv6 rule covering ::ffff:0:0/96 answers IPv4
connections: verification must expect what the kernel does. A rule written inside that range
shares its trie key with an IPv4 rule: it must still read back as written, so that a rerun is
unchanged, reports no drift and keeps the rule's hit counter."""

import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import reconcile
from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz

pytestmark = pytest.mark.kernel

HZ = kernel_hz()
PROBE_ADDRESS = "127.0.0.1"  # where verification connects


def jiffies_ms(ms):
    return -(-ms * HZ // 1000) * 1000 // HZ


@pytest.fixture
def params(cgroup, bpffs, tmp_path):
    def make(**given):
        return reconcile_run.module_params(
            name="mapped",
            cgroup=cgroup,
            pin_dir=os.path.join(bpffs, "tcp_rto"),
            mount_bpffs=False,
            _persist_root=str(tmp_path),
            **given,
        )

    return make


def run_ok(params):
    returncode, result, err = reconcile_run.run(params)
    assert returncode == 0, (result, err)
    return result


@pytest.mark.parametrize("legacy", [False, True], ids=["link", "multi"])
def test_ipv6_catch_all_answers_ipv4_and_verifies(params, legacy):
    rules = [{"dest": "::/0", "rto_ms": 300}, {"dest": "10.0.0.0/8", "rto_ms": 40}]
    result = run_ok(params(rules=rules, _legacy_attach=legacy))
    assert result["verification"]["ok"] is True, result["verification"]
    assert {check["expected_ms"] for check in result["verification"]["checks"]} == {jiffies_ms(300)}
    assert result["conflicts"] == []
    by_dest = {rule["dest"]: rule["hits"] for rule in result["instance"]["rules"]}
    assert by_dest["::/0"] > 0 and by_dest["10.0.0.0/8"] == 0  # the kernel answered from ::/0
    again = run_ok(params(rules=rules, _legacy_attach=legacy))
    assert (again["changed"], again["actions"], again["drift"]) == (False, [], [])


def test_rule_inside_the_mapped_range_keeps_its_family_and_hits(params):
    rules = [{"dest": "::ffff:127.0.0.0/104", "rto_ms": 200}, {"dest": "10.0.0.0/8", "rto_ms": 40}]
    first = run_ok(params(rules=rules, rto_ms=500))
    assert first["verification"]["ok"] is True, first["verification"]
    first_hits = first["instance"]["rules"][0]["hits"]
    assert first_hits > 0  # verification's handshakes with 127.0.0.1 matched the mapped rule

    # No handshake in this rerun: the counter holds exactly what it held, never reset.
    quiet = run_ok(dict(params(rules=rules, rto_ms=500), verify=False))
    assert (quiet["changed"], quiet["actions"], quiet["drift"]) == (False, [], [])
    assert quiet["instance"]["rules"][0]["hits"] == first_hits

    result = run_ok(params(rules=rules, rto_ms=500))
    assert (result["changed"], result["actions"], result["drift"]) == (False, [], [])
    assert result["verification"]["ok"] is True
    assert result["instance"]["rules"][0]["hits"] > first_hits
    assert [rule["dest"] for rule in result["instance"]["rules"]] == ["::ffff:127.0.0.0/104", "10.0.0.0/8"]


def test_diff_of_a_rerun_shows_the_rule_as_written(params):
    """The read-back (the diff's before) shows the rule in the family it was given in."""
    rules = [{"dest": "::ffff:0:0/96", "rto_ms": 200}, {"dest": "::/0", "rto_ms": 300}]
    run_ok(params(rules=rules))
    rerun = reconcile.run(params(rules=rules), diff=True)
    assert rerun["changed"] is False
    assert rerun["diff"]["before"] == rerun["diff"]["after"]
    assert [rule["dest"] for rule in rerun["diff"]["before"]["rules"]] == ["::ffff:0.0.0.0/96", "::/0"]
    # the same networks as IPv4 are a change of parameters: an update, not drift
    as_ipv4 = reconcile.run(params(rules=[{"dest": "0.0.0.0/0", "rto_ms": 200}, rules[1]]), diff=True)
    assert (as_ipv4["actions"], as_ipv4["drift"]) == (["update rules"], [])
    assert [rule["dest"] for rule in as_ipv4["diff"]["before"]["rules"]] == ["::ffff:0.0.0.0/96", "::/0"]
    assert [rule["dest"] for rule in as_ipv4["diff"]["after"]["rules"]] == ["0.0.0.0/0", "::/0"]
