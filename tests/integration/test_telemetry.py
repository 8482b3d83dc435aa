"""Handshake telemetry and syn_give_up_s on this kernel (issue 13): counters against handshakes of
a known outcome made in the instance's cgroup (tests/integration/handshake_workload.py, in a
private network namespace with nftables dropping SYNs), and connect()'s deadline measured."""

import json
import os
import subprocess

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import info, rto_program
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current
from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run

pytestmark = pytest.mark.kernel

WORKLOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handshake_workload.py")
LOOPBACK = "127.0.0.0/8"


def workload(cgroup, *args):
    proc = subprocess.run(
        ["/usr/bin/python3", WORKLOAD, cgroup, *[str(arg) for arg in args]],
        stdout=subprocess.PIPE,
        check=True,
        timeout=120,
    )
    return json.loads(proc.stdout.decode())


def apply(cgroup, bpffs, **options):
    return reconcile_run.applied("telemetry", cgroup, bpffs, **options)


def telemetry(bpffs):
    current = Current(os.path.join(bpffs, "tcp_rto", "telemetry"))
    try:
        return current.telemetry()
    finally:
        current.close()


def test_loopback_handshakes_are_counted_with_their_rtt(cgroup, bpffs):
    apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": 200}], rto_ms=300)
    assert workload(cgroup, "loopback", 25) == {"connections": 25}
    slots = telemetry(bpffs)
    rule = slots[0]
    assert rule["handshakes"] == {"outgoing": 25, "incoming": 25}
    assert (rule["syn_retransmits"], rule["synack_retransmits"], rule["spurious_retransmits"]) == (0, 0, 0)
    assert rule["rtt_histogram"][-1] == [2 ** (rto_program.RTT_BUCKETS - 1), 50]  # one sample per handshake
    p50, p90, p99 = (rule["rtt_us"][name] for name in ("p50", "p90", "p99"))
    assert 0 < p50 <= p90 <= p99 < 100000  # a loopback round trip: microseconds, far below 100 ms
    # Nothing went to the default: no connection left the loopback rule.
    assert slots[rto_program.DEFAULT_HIT_SLOT]["handshakes"] == {"outgoing": 0, "incoming": 0}
    assert slots[rto_program.DEFAULT_HIT_SLOT]["rtt_us"] is None


def test_the_module_result_and_the_info_module_show_each_rules_telemetry(cgroup, bpffs):
    rules = [{"dest": "192.0.2.0/24", "rto_ms": 250}, {"dest": LOOPBACK, "rto_ms": 200}]
    apply(cgroup, bpffs, rules=rules, rto_ms=300)
    workload(cgroup, "loopback", 5)
    result = apply(cgroup, bpffs, rules=rules, rto_ms=300)
    (reported,) = info.gather(os.path.join(bpffs, "tcp_rto"))["instances"]
    nothing = {
        "handshakes": {"outgoing": 0, "incoming": 0},
        "syn_retransmits": 0,
        "synack_retransmits": 0,
        "spurious_retransmits": 0,
        "rtt_us": None,
        "rtt_samples": 0,
    }
    for instance in (result["instance"], reported):
        unused, loopback = instance["rules"]
        assert {key: unused[key] for key in nothing} == nothing
        assert loopback["handshakes"] == {"outgoing": 5, "incoming": 5}
        assert (loopback["syn_retransmits"], loopback["synack_retransmits"], loopback["spurious_retransmits"]) == (
            0,
            0,
            0,
        )
        assert 0 < loopback["rtt_us"]["p50"] <= loopback["rtt_us"]["p99"]
        assert "rtt_histogram" not in loopback
        assert instance["default_telemetry"] == nothing
    assert not result["changed"]


def test_connections_the_instance_leaves_alone_are_not_counted(cgroup, bpffs):
    apply(cgroup, bpffs, rules=[{"dest": "192.0.2.0/24", "rto_ms": 200}], direction="incoming")
    workload(cgroup, "loopback", 5)
    slots = telemetry(bpffs)
    assert slots[0]["handshakes"] == {"outgoing": 0, "incoming": 0}  # no loopback rule, no default
    assert slots[rto_program.DEFAULT_HIT_SLOT]["handshakes"] == {"outgoing": 0, "incoming": 0}


def test_dropped_syns_are_counted_as_retransmits(cgroup, bpffs):
    """Every SYN to the port is dropped: each connect() retransmits until it gives up, and the
    program counts each retransmit, although no handshake completes."""
    result = apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": 20, "syn_give_up_s": 0.2}])
    outcome = workload(cgroup, "drop-syns", 3, 10)
    assert [attempt["errno"] for attempt in outcome["attempts"]] == ["ETIMEDOUT"] * 3
    kernel_count = sum(attempt["total_retrans"] for attempt in outcome["attempts"])
    assert kernel_count > 0
    assert outcome["dropped"] == 3 + kernel_count  # the first SYNs and every retransmit
    rule = telemetry(bpffs)[0]
    assert rule["syn_retransmits"] == kernel_count
    assert rule["handshakes"] == {"outgoing": 0, "incoming": 0}
    assert rule["spurious_retransmits"] == 0
    assert result["instance"]["rules"][0]["syn_give_up_s"] >= 0.2


def test_a_needed_retransmit_is_not_spurious(cgroup, bpffs):
    """The first SYN of each connect() is dropped, its retransmit is answered: one SYN retransmit
    per handshake, none of them spurious, and no RTT sample from those handshakes."""
    apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": 40}])
    outcome = workload(cgroup, "drop-first-syn", 4)
    assert [attempt["errno"] for attempt in outcome["attempts"]] == ["connected"] * 4
    assert [attempt["total_retrans"] for attempt in outcome["attempts"]] == [1] * 4
    rule = telemetry(bpffs)[0]
    assert rule["syn_retransmits"] == 4
    assert rule["handshakes"]["outgoing"] == 4
    assert rule["spurious_retransmits"] == 0
    # The passive side saw no retransmitted SYN-ACK: its 4 samples are the only ones.
    assert rule["handshakes"]["incoming"] == 4 and rule["synack_retransmits"] == 0
    assert rule["rtt_histogram"][-1][1] == 4


def test_syn_give_up_s_bounds_connect(cgroup, bpffs):
    """connect() to a port whose SYNs are dropped gives up near the deadline the result reports
    (without syn_give_up_s, 100 ms would give up after about 13 s), never before syn_give_up_s."""
    result = apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": 100}], syn_give_up_s=1.0)
    deadline = result["instance"]["rules"][0]["syn_give_up_s"]
    assert deadline >= 1.0 and deadline < 5.0
    outcome = workload(cgroup, "drop-syns", 1, 30)
    attempt = outcome["attempts"][0]
    assert attempt["errno"] == "ETIMEDOUT"
    assert deadline * 0.95 <= attempt["elapsed_s"] <= deadline * 2 + 1.0, (attempt, deadline)


def test_rule_slot_counters_reset_when_the_slot_changes_rule(cgroup, bpffs):
    apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": 200}])
    workload(cgroup, "loopback", 3)
    assert telemetry(bpffs)[0]["handshakes"]["outgoing"] == 3
    apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": 240}])  # same rule, new value: kept
    assert telemetry(bpffs)[0]["handshakes"]["outgoing"] == 3
    apply(cgroup, bpffs, rules=[{"dest": "10.0.0.0/8", "rto_ms": 240}, {"dest": LOOPBACK, "rto_ms": 240}])
    slots = telemetry(bpffs)
    assert slots[0]["handshakes"]["outgoing"] == 0  # slot 0 now counts 10.0.0.0/8
    assert slots[1]["handshakes"]["outgoing"] == 0  # the loopback rule's new slot starts afresh


def test_syn_give_up_s_is_refused_before_anything_changes_where_the_kernel_lacks_it(cgroup, bpffs):
    params = reconcile_run.sandbox_params(
        "telemetry",
        cgroup,
        bpffs,
        rules=[{"dest": LOOPBACK, "rto_ms": 100}],
        syn_give_up_s=2,
    )
    returncode, result, _err = reconcile_run.run(params, force_missing="syn_retries")
    assert returncode == 1
    assert "does not let a sock_ops program set TCP_SYNCNT" in result["error"]
    assert "drop syn_give_up_s" in result["error"]
    assert not os.path.exists(os.path.join(bpffs, "tcp_rto", "telemetry"))


def test_syn_give_up_s_needs_outgoing(cgroup, bpffs):
    params = reconcile_run.sandbox_params(
        "telemetry",
        cgroup,
        bpffs,
        rto_ms=100,
        syn_give_up_s=2,
        direction="incoming",
    )
    returncode, result, _err = reconcile_run.run(params)
    assert returncode == 1 and "use direction outgoing or both" in result["error"]
