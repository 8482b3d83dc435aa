"""rto_ms: auto on this kernel (issue 14): what loopback handshakes teach, what a host without
knowledge gets, expiry, the retransmit budget, retransmitted handshakes that teach nothing, the
first answer a connect() keeps, reruns, and the learned table across an upgrade. Handshakes and
SYN_SENT sockets come from tests/integration/handshake_workload.py, in the instance's cgroup and a
private network namespace (the learned map is keyed by address alone, so namespaces share it)."""

import ipaddress
import os
import time

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_maps,
    info,
    learned,
    metrics,
    reconcile,
    rto_program,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current
from ansible_collections.netbpf.tcp_rto.tests.integration.test_telemetry import workload
from ansible_collections.netbpf.tcp_rto.tests.support import hz, reconcile_run

pytestmark = pytest.mark.kernel

LOOPBACK = "127.0.0.0/8"
UNKNOWN_HOST = "192.0.2.1"  # TEST-NET-1, put on the namespace's lo; nothing ever answers it
MIN_MS, MAX_MS = 200, 800  # the probe reads tcpi_rto well before a 200 ms timer fires
AUTO = dict(auto_min_ms=MIN_MS, auto_max_ms=MAX_MS, auto_min_samples=3)


def apply(cgroup, bpffs, **options):
    params = reconcile_run.module_params(
        name="auto", cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, verify=False
    )
    params.update(options)
    returncode, result, err = reconcile_run.run(params)
    assert returncode == 0, (result, err)
    return result


def syn_rto_ms(cgroup, address="127.0.0.1"):
    """The initial RTO a connect() from the cgroup to address starts with, in whole jiffies' ms."""
    return workload(cgroup, "syn-rto", address)["rto_us"] / 1000.0


def jiffy_ms(value_ms):
    """value_ms rounded up to whole jiffies, as tcpi_rto shows it."""
    return hz.jiffies_us(value_ms) / 1000.0


def instance(bpffs):
    return Current(os.path.join(bpffs, "tcp_rto", "auto"))


def learned_hosts(bpffs):
    current = instance(bpffs)
    try:
        return {host["host"]: host for host in current.learned_hosts()}
    finally:
        current.close()


def test_loopback_handshakes_teach_the_minimum_and_others_keep_the_maximum(cgroup, bpffs):
    result = apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": "auto"}], rto_ms="auto", **AUTO)
    assert result["instance"]["rules"][0]["rto_ms"] == "auto"
    assert result["instance"]["default_rto_ms"] == "auto"
    assert result["instance"]["auto"]["min_ms"] == jiffy_ms(MIN_MS)
    assert syn_rto_ms(cgroup) == jiffy_ms(MAX_MS)  # nothing learned yet
    workload(cgroup, "loopback", 2)  # 2 outgoing + 2 incoming samples of 127.0.0.1
    hosts = learned_hosts(bpffs)
    assert hosts["127.0.0.1"]["samples"] == 4 and hosts["127.0.0.1"]["fallback"] is None
    assert hosts["127.0.0.1"]["estimate_us"] < MIN_MS * 1000  # a loopback round trip: far below the minimum
    assert hosts["127.0.0.1"]["rto_ms"] == jiffy_ms(MIN_MS)
    assert syn_rto_ms(cgroup) == jiffy_ms(MIN_MS)
    assert syn_rto_ms(cgroup, UNKNOWN_HOST) == jiffy_ms(MAX_MS)  # the default is auto too: no knowledge
    (reported,) = info.gather(os.path.join(bpffs, "tcp_rto"))["instances"]
    assert [host["host"] for host in reported["learned"]] == ["127.0.0.1"]
    assert reported["state"] == "ok" and reported["rules"][0]["rto_ms"] == "auto"
    # the metrics file shows it too (what the info module's metrics_textfile and the timer write)
    text = metrics.render(info.read_host(os.path.join(bpffs, "tcp_rto"))[1])
    assert 'tcp_rto_learned_rto_us{name="auto",host="127.0.0.1"} %d' % (jiffy_ms(MIN_MS) * 1000) in text.splitlines()
    assert 'tcp_rto_learned_samples{name="auto",host="127.0.0.1"} 4' in text.splitlines()


def test_too_few_samples_give_the_maximum(cgroup, bpffs):
    apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": "auto"}], direction="outgoing", **AUTO)
    workload(cgroup, "loopback", 2)  # outgoing only: 2 samples, 3 needed
    assert learned_hosts(bpffs)["127.0.0.1"]["fallback"] == learned.TOO_FEW_SAMPLES
    assert syn_rto_ms(cgroup) == jiffy_ms(MAX_MS)
    workload(cgroup, "loopback", 1)
    assert syn_rto_ms(cgroup) == jiffy_ms(MIN_MS)


def test_knowledge_expires_after_the_ttl(cgroup, bpffs):
    apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": "auto"}], auto_ttl_s=1, **AUTO)
    workload(cgroup, "loopback", 2)
    assert syn_rto_ms(cgroup) == jiffy_ms(MIN_MS)
    time.sleep(1.5)
    assert learned_hosts(bpffs)["127.0.0.1"]["fallback"] == learned.EXPIRED
    assert syn_rto_ms(cgroup) == jiffy_ms(MAX_MS)
    workload(cgroup, "loopback", 1)  # after expiry the estimate starts afresh: 2 samples of 3
    assert learned_hosts(bpffs)["127.0.0.1"]["samples"] == 2
    assert syn_rto_ms(cgroup) == jiffy_ms(MAX_MS)


def test_retransmitted_handshakes_are_not_samples(cgroup, bpffs):
    """Every connect()'s first SYN is dropped: its handshake completes after a retransmit and
    teaches nothing (outgoing only: the listener's clean side is not the instance's)."""
    apply(cgroup, bpffs, rules=[{"dest": LOOPBACK, "rto_ms": "auto"}], direction="outgoing", **AUTO)
    outcome = workload(cgroup, "drop-first-syn", 3)
    assert [attempt["total_retrans"] for attempt in outcome["attempts"]] == [1] * 3
    assert learned_hosts(bpffs) == {}
    assert syn_rto_ms(cgroup) == jiffy_ms(MAX_MS)


def loopback_records(bpffs, clear=False):
    """The jiffies auto_conn holds for connect()s to 127.0.0.1 (clear: remove them instead)."""
    current = instance(bpffs)
    try:
        fd = current.maps[rto_program.AUTO_CONN_MAP]
        found = []
        for key in bpf_maps.map_keys(fd, rto_program.SYN_RTX_TIME_KEY.size):
            remote = ipaddress.IPv6Address(rto_program.SYN_RTX_TIME_KEY.unpack(key)[0]).ipv4_mapped
            if remote != ipaddress.IPv4Address("127.0.0.1"):
                continue
            if clear:
                bpf_maps.map_delete(fd, key)
            else:
                value = bpf_maps.map_lookup(fd, key, rto_program.AUTO_CONN_VALUE.size)
                found.append(rto_program.AUTO_CONN_VALUE.unpack(value)[0])  # the jiffies, not the ISN
        return found
    finally:
        current.close()


def test_a_host_over_its_retransmit_budget_gets_the_maximum_and_a_connect_keeps_its_first_answer(cgroup, bpffs):
    apply(
        cgroup,
        bpffs,
        rules=[{"dest": LOOPBACK, "rto_ms": "auto"}],
        direction="outgoing",
        auto_retransmit_budget=0,
        **AUTO,
    )
    workload(cgroup, "loopback", 3)
    assert loopback_records(bpffs) == []  # completed connect()s leave no record
    assert syn_rto_ms(cgroup) == jiffy_ms(MIN_MS)
    loopback_records(bpffs, clear=True)  # the probe's connect() never completed
    # Retransmits at 200 and 600 ms: the kernel asks the program again before the second, when the
    # host is over its budget already; then the 1 s timeout.
    outcome = workload(cgroup, "drop-syns", 1, 1.0)
    assert outcome["attempts"][0]["total_retrans"] >= 2
    host = learned_hosts(bpffs)["127.0.0.1"]
    assert host["retransmits"] >= 2 and host["fallback"] == learned.OVER_BUDGET
    # The dropped connect() kept the value it started with, not the maximum its host gets now.
    assert loopback_records(bpffs) == [-(-MIN_MS * hz.kernel_hz() // 1000)]
    assert syn_rto_ms(cgroup) == jiffy_ms(MAX_MS)


def test_learned_values_are_not_configuration(cgroup, bpffs):
    options = dict(rules=[{"dest": LOOPBACK, "rto_ms": "auto"}, {"dest": "10.0.0.0/8", "rto_ms": 300}], **AUTO)
    apply(cgroup, bpffs, **options)
    workload(cgroup, "loopback", 3)
    again = apply(cgroup, bpffs, **options)
    assert not again["changed"] and again["drift"] == []
    (reported,) = info.gather(os.path.join(bpffs, "tcp_rto"))["instances"]
    assert reported["state"] == "ok" and reported["problems"] == []
    changed = apply(cgroup, bpffs, **dict(options, auto_factor=3))
    assert changed["actions"] == ["update default and direction"] and changed["drift"] == []
    assert learned_hosts(bpffs)["127.0.0.1"]["samples"] == 6  # a settings change keeps what was learned


def test_the_learned_table_survives_an_upgrade_and_a_new_size_starts_afresh(cgroup, bpffs, second_object):
    """The learned table and the answers connect()s keep (auto_conn: a connect() whose SYN was
    retransmitted and that never completed leaves its record) are carried across an upgrade."""
    options = dict(rules=[{"dest": LOOPBACK, "rto_ms": "auto"}], **AUTO)
    apply(cgroup, bpffs, **options)
    workload(cgroup, "loopback", 3)
    workload(cgroup, "drop-syns", 1, 0.3)  # one SYN retransmit, at 200 ms
    started_with = loopback_records(bpffs)
    assert started_with == [-(-MIN_MS * hz.kernel_hz() // 1000)]
    before = instance(bpffs)
    try:
        carried_ids, prog_id = [before.map_ids[name] for name in rto_program.CARRIED_MAPS], before.prog_info.id
    finally:
        before.close()
    upgraded = apply(cgroup, bpffs, src=second_object, **options)
    assert any("(keeping the maps learned, auto_conn, syn_rtx_time)" in action for action in upgraded["actions"]), (
        upgraded["actions"]
    )
    after = instance(bpffs)
    try:
        assert [after.map_ids[name] for name in rto_program.CARRIED_MAPS] == carried_ids
        assert after.prog_info.id != prog_id and after.program_intact
    finally:
        after.close()
    assert loopback_records(bpffs) == started_with
    assert learned_hosts(bpffs)["127.0.0.1"]["samples"] == 6
    assert syn_rto_ms(cgroup) == jiffy_ms(MIN_MS)  # the new program answers from the carried table
    resized = apply(cgroup, bpffs, src=second_object, auto_table_size=64, **options)
    assert "resize the learned table from 4096 to 64 entries (what it learned starts afresh)" in resized["actions"]
    assert learned_hosts(bpffs) == {}
    assert syn_rto_ms(cgroup) == jiffy_ms(MAX_MS)


def test_check_mode_diff_and_verification_show_auto(cgroup, bpffs):
    params = reconcile_run.sandbox_params(
        "auto",
        cgroup,
        bpffs,
        rules=[{"dest": LOOPBACK, "rto_ms": "auto"}],
        rto_ms=300,
        **AUTO,
    )
    planned = reconcile.run(params, check_mode=True, diff=True)
    assert planned["changed"] and not os.path.exists(os.path.join(bpffs, "tcp_rto", "auto"))
    max_jiffies = -(-MAX_MS * hz.kernel_hz() // 1000)
    assert planned["diff"]["after"]["rules"] == [{"dest": LOOPBACK, "rto_ms": "auto", "rto_jiffies": max_jiffies}]
    assert planned["diff"]["after"]["auto"]["max_ms"] == jiffy_ms(MAX_MS)
    applied = reconcile.run(params, diff=True)  # verify: true, before anything was learned
    checks = applied["verification"]["checks"]
    assert [check["direction"] for check in checks] == ["outgoing", "incoming"]
    for check in checks:
        assert check["ok"] and check["expected_ms"] == "auto"
        assert check["expected_range_ms"] == [jiffy_ms(MIN_MS), jiffy_ms(MAX_MS)]
    workload(cgroup, "loopback", 2)
    rerun = reconcile.run(params, check_mode=True, diff=True)
    assert not rerun["changed"] and rerun["diff"]["before"] == rerun["diff"]["after"]
    assert reconcile.run(params, diff=True)["verification"]["ok"]  # verified with the learned minimum
