"""Harm warnings and the metrics textfile on this kernel (issue 13 items 2, 3): handshakes with a
known round trip (a wire that delays each packet 10 ms each way, between two private network
namespaces: tests/integration/handshake_workload.py) made in the instance's cgroup, then the
module's and the info module's warnings, and the textfile parsed with Prometheus' own parser."""

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_telemetry import workload

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import info, metrics
from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run

pytestmark = pytest.mark.kernel

WIRE = "10.99.0.0/24"  # both ends of the delayed wire: outgoing to .2, incoming from .1
DELAY_MS = 10  # each way: a handshake round trip of about 20 ms
CONNECTIONS = 40  # 80 round-trip samples: each connection is counted outgoing and incoming
INFO = "netbpf.tcp_rto.tcp_initial_rto_info"


def apply(cgroup, bpffs, **options):
    return reconcile_run.applied("harm", cgroup, bpffs, **options)


def test_a_rule_below_the_safety_factor_warns_in_both_modules(cgroup, bpffs, playbook):
    rules = [{"dest": WIRE, "rto_ms": 40}]
    apply(cgroup, bpffs, rules=rules)
    assert workload(cgroup, "delayed", CONNECTIONS, DELAY_MS) == {"connections": CONNECTIONS}
    result = apply(cgroup, bpffs, rules=rules, min_samples=50)
    assert not result["changed"]
    [warning] = result["harm_warnings"]
    samples = result["instance"]["rules"][0]["rtt_samples"]
    assert samples >= 50  # handshakes that retransmitted (a late thread) give no sample
    assert warning["instance"] == "harm" and warning["dest"] == WIRE and warning["rto_ms"] == 40
    assert warning["samples"] == samples
    assert 2 * DELAY_MS * 1000 <= warning["p99_us"] < 65536  # 20 ms and the wire's own lateness
    assert "raise rto_ms to" in warning["message"].lower() and "harm: rule 10.99.0.0/24" in warning["message"]
    assert result["warnings"] == [warning["message"]]

    reported = playbook.run([{"name": "info", INFO: {"pin_dir": os.path.join(bpffs, "tcp_rto"), "min_samples": 50}}])
    info_result = reported.results[-1]
    assert info_result["status"] == "ok", reported.output
    [instance] = info_result["instances"]
    assert [(each["dest"], each["rto_ms"]) for each in instance["harm_warnings"]] == [(WIRE, 40)]
    assert info_result["warnings"] == [instance["harm_warnings"][0]["message"]]
    assert "[WARNING]" in reported.output and "harm: rule 10.99.0.0/24" in reported.output

    # The same measurements: fewer samples than asked for, or a value above the bound, warn not.
    assert apply(cgroup, bpffs, rules=rules, min_samples=samples + 1)["harm_warnings"] == []
    quiet = apply(cgroup, bpffs, rules=[{"dest": WIRE, "rto_ms": 400}], min_samples=50)
    assert quiet["harm_warnings"] == [] and "warnings" not in quiet
    assert quiet["instance"]["rules"][0]["rtt_samples"] == samples  # a new value keeps the rule's slot


def test_the_default_warns_too_and_a_loopback_rule_does_not(cgroup, bpffs):
    rules = [{"dest": "127.0.0.0/8", "rto_ms": 20}]
    apply(cgroup, bpffs, rules=rules, rto_ms=40)
    workload(cgroup, "delayed", CONNECTIONS, DELAY_MS)  # 10.99.0.0/24 has no rule: the default
    workload(cgroup, "loopback", CONNECTIONS)
    result = apply(cgroup, bpffs, rules=rules, rto_ms=40, min_samples=50)
    [warning] = result["harm_warnings"]
    assert warning["dest"] == "default" and warning["rto_ms"] == 40
    assert "the default (rto_ms)" in warning["message"]
    loopback = result["instance"]["rules"][0]
    assert loopback["rtt_samples"] >= 50 and loopback["rtt_us"]["p99"] * 3 < 20000  # measured, and far below


def test_thresholds_that_mean_nothing_are_refused(cgroup, bpffs):
    for options, message in (
        ({"safety_factor": 0}, "safety_factor must be above 0"),
        ({"min_samples": 0}, "min_samples"),
    ):
        params = reconcile_run.module_params(
            name="harm", cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, **options
        )
        returncode, result, _err = reconcile_run.run(params)
        assert returncode == 1 and message in result["error"]
        assert not os.path.exists(os.path.join(bpffs, "tcp_rto", "harm"))


def families(path):
    with open(path) as handle:
        return {family.name: family for family in text_string_to_metric_families(handle.read())}


def value(family, sample_name=None, **labels):
    found = [
        sample.value
        for sample in family.samples
        if (sample_name is None or sample.name == sample_name)
        and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (family, labels)
    return found[0]


def test_metrics_textfile_holds_the_counters_of_a_known_workload(cgroup, bpffs, playbook, tmp_path):
    pin_dir = os.path.join(bpffs, "tcp_rto")
    apply(
        cgroup, bpffs, rules=[{"dest": "127.0.0.0/8", "rto_ms": 20}, {"dest": "192.0.2.0/24", "rto_ms": 30}], rto_ms=300
    )
    workload(cgroup, "loopback", 7)
    outcome = workload(cgroup, "drop-syns", 2, 10)
    retransmits = sum(attempt["total_retrans"] for attempt in outcome["attempts"])
    textfile = tmp_path / "tcp_rto.prom"
    task = {"name": "info", INFO: {"pin_dir": pin_dir, "metrics_textfile": str(textfile)}}

    first = playbook.run([task])
    assert first.results[-1]["status"] == "ok" and first.results[-1]["changed"] is True, first.output
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"
    assert [entry for entry in os.listdir(str(tmp_path)) if entry.startswith(".tcp_rto.prom.")] == []
    found = families(str(textfile))
    loopback = {"name": "harm", "rule": "127.0.0.0/8"}
    handshakes = found["tcp_rto_handshakes"]
    assert handshakes.type == "counter"
    assert value(handshakes, direction="outgoing", **loopback) == 7
    assert value(handshakes, direction="incoming", **loopback) == 7
    assert value(handshakes, direction="outgoing", name="harm", rule="192.0.2.0/24") == 0
    assert value(handshakes, direction="outgoing", name="harm", rule="default") == 0
    assert value(found["tcp_rto_syn_retransmits"], **loopback) == retransmits > 0
    assert value(found["tcp_rto_synack_retransmits"], **loopback) == 0
    rtt = found["tcp_rto_rtt_us"]
    assert rtt.type == "histogram"
    assert value(rtt, "tcp_rto_rtt_us_count", **loopback) == 14  # every handshake without a retransmit
    assert value(rtt, "tcp_rto_rtt_us_bucket", le="+Inf", **loopback) == 14
    assert value(rtt, "tcp_rto_rtt_us_bucket", le="1", **loopback) == 0
    assert 0 < value(rtt, "tcp_rto_rtt_us_sum", **loopback) < 14 * 100000
    buckets = [s.value for s in rtt.samples if s.name.endswith("_bucket") and s.labels["rule"] == "127.0.0.0/8"]
    assert buckets == sorted(buckets)  # cumulative
    assert value(found["tcp_rto_initial_rto_us"], **loopback) == 20000
    assert value(found["tcp_rto_initial_rto_us"], name="harm", rule="default") == 300000

    # The same content: nothing written, not changed; new handshakes: changed.
    mtime = textfile.stat().st_mtime_ns
    assert playbook.run([task]).results[-1]["changed"] is False
    assert textfile.stat().st_mtime_ns == mtime
    workload(cgroup, "loopback", 1)
    assert playbook.run([task], check=True).results[-1]["changed"] is True
    assert value(families(str(textfile))["tcp_rto_handshakes"], direction="outgoing", **loopback) == 7  # check mode
    assert playbook.run([task]).results[-1]["changed"] is True
    assert value(families(str(textfile))["tcp_rto_handshakes"], direction="outgoing", **loopback) == 8


def test_the_timers_entry_point_writes_what_the_info_module_writes(cgroup, bpffs, tmp_path):
    pin_dir = os.path.join(bpffs, "tcp_rto")
    apply(cgroup, bpffs, rules=[{"dest": "127.0.0.0/8", "rto_ms": 20}])
    workload(cgroup, "loopback", 3)
    textfile = str(tmp_path / "tcp_rto.prom")
    assert metrics.main([pin_dir, textfile]) == 0
    with open(textfile) as handle:
        written = handle.read()
    assert written == metrics.render(info.read_host(pin_dir)[1])
    assert metrics.main([pin_dir]) == 2
    assert metrics.main([pin_dir, str(tmp_path / "missing" / "x.prom")]) == 1


def test_the_metrics_timer_needs_persistence(cgroup, bpffs, tmp_path):
    params = reconcile_run.sandbox_params(
        "harm",
        cgroup,
        bpffs,
        rto_ms=300,
        metrics_textfile=str(tmp_path / "tcp_rto.prom"),
        _persist_root=str(tmp_path / "root"),
    )
    returncode, result, _err = reconcile_run.run(params)
    assert returncode == 1 and "set persistent: true" in result["error"]
    assert not os.path.exists(os.path.join(bpffs, "tcp_rto", "harm"))
    returncode, result, _err = reconcile_run.run(dict(params, persistent=True))
    assert returncode == 0, result
    assert "enable tcp-rto-metrics.timer" in result["actions"]
    returncode, result, _err = reconcile_run.run(dict(params, state="absent"))
    assert returncode == 0, result
    assert (
        "remove %s" % os.path.join(str(tmp_path / "root"), "etc/systemd/system/tcp-rto-metrics.timer")
        in result["actions"]
    )
