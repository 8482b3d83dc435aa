"""The metrics text, parsed with Prometheus' own parser, and its atomic write."""

import os

from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import metrics, rto_program, telemetry


def slot(buckets=None, **fields):
    counts = [0] * rto_program.RTT_BUCKETS
    for index, count in (buckets or {}).items():
        counts[index] = count
    summed = dict(dict.fromkeys(rto_program.STATS_FIELDS, 0), **fields)
    summed["rtt_buckets"] = counts
    return telemetry.slot_telemetry(summed)


VIEW = {
    "name": 'we"b',
    "rules": [{"dest": "10.0.0.0/8", "rto_ms": 52.5}, {"dest": "fd00::/8", "rto_ms": 100}],
    "default_rto_ms": None,
}
TELEMETRY = {
    0: slot({4: 3, 10: 1}, handshakes_outgoing=3, handshakes_incoming=1, syn_retransmits=2, rtt_sum_us=1100),
    1: slot(synack_retransmits=5, spurious_retransmits=1),
    rto_program.DEFAULT_HIT_SLOT: slot(handshakes_outgoing=9),
}


def parsed(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family, **labels):
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def test_counters_and_histogram_per_rule_and_default():
    found = parsed(metrics.render([(VIEW, TELEMETRY)]))
    assert sorted(found) == [
        "tcp_rto_handshakes",
        "tcp_rto_initial_rto_us",
        "tcp_rto_learned_estimate_us",
        "tcp_rto_learned_rto_us",
        "tcp_rto_learned_samples",
        "tcp_rto_rtt_us",
        "tcp_rto_spurious_retransmits",
        "tcp_rto_syn_retransmits",
        "tcp_rto_synack_retransmits",
    ]
    rule = {"name": 'we"b', "rule": "10.0.0.0/8"}  # the quote escaped and read back
    [out] = samples(found["tcp_rto_handshakes"], direction="outgoing", **rule)
    assert out.value == 3 and out.name == "tcp_rto_handshakes_total"
    assert samples(found["tcp_rto_handshakes"], direction="outgoing", rule="default")[0].value == 9
    assert samples(found["tcp_rto_syn_retransmits"], **rule)[0].value == 2
    assert samples(found["tcp_rto_synack_retransmits"], rule="fd00::/8")[0].value == 5
    assert samples(found["tcp_rto_spurious_retransmits"], rule="fd00::/8")[0].value == 1
    histogram = {s.labels.get("le", s.name): s.value for s in samples(found["tcp_rto_rtt_us"], **rule)}
    assert histogram["8"] == 0 and histogram["16"] == 3 and histogram["1024"] == 4 and histogram["+Inf"] == 4
    assert histogram["tcp_rto_rtt_us_count"] == 4 and histogram["tcp_rto_rtt_us_sum"] == 1100
    assert len(histogram) == rto_program.RTT_BUCKETS + 3
    rto = found["tcp_rto_initial_rto_us"]
    assert [(s.labels["rule"], s.value) for s in rto.samples] == [("10.0.0.0/8", 52500), ("fd00::/8", 100000)]


def test_an_auto_rule_has_counters_and_no_initial_rto_gauge():
    view = dict(VIEW, rules=[{"dest": "10.0.0.0/8", "rto_ms": "auto"}], default_rto_ms="auto")
    found = parsed(metrics.render([(view, TELEMETRY)]))
    assert samples(found["tcp_rto_syn_retransmits"], rule="10.0.0.0/8")[0].value == 2
    assert found["tcp_rto_initial_rto_us"].samples == []


def test_learned_hosts_are_gauges_per_host():
    learned = [
        dict(host="10.0.0.5", samples=120, estimate_us=42000, rto_ms=84.0, fallback=None),
        dict(host="fd00::7", samples=2, estimate_us=900, rto_ms=1000.0, fallback="too_few_samples"),
    ]
    view = dict(VIEW, rules=[{"dest": "10.0.0.0/8", "rto_ms": "auto"}], learned=learned)
    found = parsed(metrics.render([(view, TELEMETRY), (dict(VIEW, name="static"), TELEMETRY)]))

    def by_host(metric):
        return {s.labels["host"]: s.value for s in found[metric].samples if s.labels["name"] == 'we"b'}

    assert by_host("tcp_rto_learned_rto_us") == {"10.0.0.5": 84000, "fd00::7": 1000000}
    assert by_host("tcp_rto_learned_estimate_us") == {"10.0.0.5": 42000, "fd00::7": 900}
    assert by_host("tcp_rto_learned_samples") == {"10.0.0.5": 120, "fd00::7": 2}
    assert all(s.labels["name"] == 'we"b' for s in found["tcp_rto_learned_samples"].samples)


def test_an_instance_without_a_stats_map_has_no_series():
    assert parsed(metrics.render([(VIEW, {})]))["tcp_rto_handshakes"].samples == []


def test_write_is_atomic_and_changed_only_on_new_content(tmp_path):
    path = str(tmp_path / "tcp_rto.prom")
    assert metrics.write_textfile(path, "a 1\n", check_mode=True) is True
    assert not os.path.exists(path)
    assert metrics.write_textfile(path, "a 1\n") is True
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    inode = os.stat(path).st_ino
    assert metrics.write_textfile(path, "a 1\n") is False
    assert metrics.write_textfile(path, "a 2\n") is True
    assert os.stat(path).st_ino != inode  # replaced by rename, not rewritten in place
    assert os.listdir(str(tmp_path)) == ["tcp_rto.prom"]
