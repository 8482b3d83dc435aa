"""The telemetry reader: per-CPU values summed, the histogram made cumulative, its percentiles."""

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program, telemetry


def stats_value(buckets=None, **fields):
    """Raw STATS_VALUE bytes of one CPU: fields by name, buckets as {bucket index: count}."""
    counts = [0] * rto_program.RTT_BUCKETS
    for index, count in (buckets or {}).items():
        counts[index] = count
    return rto_program.STATS_VALUE.pack(*[fields.get(name, 0) for name in rto_program.STATS_FIELDS], *counts)


def test_counters_add_up_over_cpus_and_the_minimum_ignores_cpus_without_samples():
    summed = telemetry.sum_cpus(
        [
            stats_value({3: 2}, handshakes_outgoing=5, syn_retransmits=1, rtt_min_us=7, rtt_sum_us=13),
            stats_value(handshakes_incoming=4, synack_retransmits=2, rtt_min_us=0),
            stats_value({3: 1, 10: 1}, handshakes_outgoing=2, spurious_retransmits=1, rtt_min_us=5, rtt_sum_us=900),
        ]
    )
    assert summed["handshakes_outgoing"] == 7 and summed["handshakes_incoming"] == 4
    assert (summed["syn_retransmits"], summed["synack_retransmits"], summed["spurious_retransmits"]) == (1, 2, 1)
    assert summed["rtt_min_us"] == 5 and summed["rtt_sum_us"] == 913
    assert summed["rtt_buckets"][3] == 3 and summed["rtt_buckets"][10] == 1 and sum(summed["rtt_buckets"]) == 4


def test_per_cpu_values_may_carry_padding():
    """percpu_lookup gives each CPU's value at its size; a longer slice is cut to the layout."""
    summed = telemetry.sum_cpus([stats_value(handshakes_outgoing=1) + b"\0" * 8])
    assert summed["handshakes_outgoing"] == 1


def test_histogram_is_cumulative_with_log2_upper_bounds():
    histogram = telemetry.cumulative([0, 1, 0, 2] + [0] * (rto_program.RTT_BUCKETS - 4))
    assert histogram[:5] == [[1, 0], [2, 1], [4, 1], [8, 3], [16, 3]]
    assert len(histogram) == rto_program.RTT_BUCKETS and histogram[-1] == [2 ** (rto_program.RTT_BUCKETS - 1), 3]


@pytest.mark.parametrize(
    "buckets, fraction, expected",
    [
        ({10: 100}, 0.5, 768),  # all in (512, 1024]: the middle of the bucket
        ({10: 100}, 0.99, 1018.9),
        ({0: 1}, 0.5, 0.5),  # bucket 0 spans [0, 1]
        ({4: 50, 7: 50}, 0.5, 16),  # half the samples at or below 16 µs
        ({4: 50, 7: 50}, 0.9, 115.2),  # in (64, 128]: 40 of its 50 samples
        ({4: 99, 20: 1}, 0.99, 16),
        ({4: 98, 20: 2}, 0.99, 786432),  # the slowest 2 %: in (2^19, 2^20]
    ],
)
def test_quantile_interpolates_inside_its_bucket(buckets, fraction, expected):
    counts = [buckets.get(index, 0) for index in range(rto_program.RTT_BUCKETS)]
    assert telemetry.quantile(telemetry.cumulative(counts), fraction) == pytest.approx(expected)


def test_slot_without_samples_has_no_percentiles():
    shape = telemetry.slot_telemetry(telemetry.sum_cpus([stats_value(handshakes_outgoing=1, syn_retransmits=3)]))
    assert shape == {
        "handshakes": {"outgoing": 1, "incoming": 0},
        "syn_retransmits": 3,
        "synack_retransmits": 0,
        "spurious_retransmits": 0,
        "rtt_us": None,
        "rtt_samples": 0,
        "rtt_sum_us": 0,
        "rtt_histogram": telemetry.cumulative([0] * rto_program.RTT_BUCKETS),
    }


def test_slot_percentiles_are_ordered():
    summed = telemetry.sum_cpus([stats_value({5: 60, 6: 30, 9: 9, 12: 1}), stats_value({5: 40})])
    rtt = telemetry.slot_telemetry(summed)["rtt_us"]
    assert 16 < rtt["p50"] <= 32 < rtt["p90"] <= 64 < rtt["p99"] <= 512
