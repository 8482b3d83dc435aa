# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading the program's handshake telemetry (the stats map, see rto_program.STATS_VALUE): the
per-CPU counters summed, the RTT histogram made cumulative, its percentiles.

What each counter means, and how the spurious estimate is made, is in docs/tcp_initial_rto.md.
Plain stdlib, usable without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_maps, rto_program

PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
# Upper bound (µs, inclusive) of each RTT bucket: bucket b counts samples in (2^(b-1), 2^b].
BUCKET_BOUNDS_US = tuple(2**bucket for bucket in range(rto_program.RTT_BUCKETS))
_MIN_FIELD = rto_program.STATS_FIELDS.index("rtt_min_us")


def sum_cpus(per_cpu_values):
    """[raw STATS_VALUE bytes of each CPU] -> {field: total, ..., "rtt_buckets": [count per
    bucket]}. Counters add up; rtt_min_us is the smallest of the CPUs that have a sample (0: none)."""
    rows = [rto_program.STATS_VALUE.unpack(bytes(value)[: rto_program.STATS_VALUE.size]) for value in per_cpu_values]
    width = len(rto_program.STATS_FIELDS) + rto_program.RTT_BUCKETS
    totals = [sum(row[index] for row in rows) for index in range(width)]
    minima = [row[_MIN_FIELD] for row in rows if row[_MIN_FIELD]]
    totals[_MIN_FIELD] = min(minima) if minima else 0
    summed = dict(zip(rto_program.STATS_FIELDS, totals))
    summed["rtt_buckets"] = totals[len(rto_program.STATS_FIELDS) :]
    return summed


def cumulative(buckets):
    """Counts per bucket -> [[upper bound µs, samples at or below it], ...], one pair per bucket
    (Prometheus' `le` buckets; the last one's count is the number of samples)."""
    pairs, running = [], 0
    for bound, count in zip(BUCKET_BOUNDS_US, buckets):
        running += count
        pairs.append([bound, running])
    return pairs


def quantile(histogram, fraction):
    """The fraction (0..1) quantile of a cumulative histogram, interpolated linearly inside its
    bucket as Prometheus' histogram_quantile() does; None without samples. A log2 bucket spans a
    factor of 2: the value is good to that bucket, not better."""
    total = histogram[-1][1] if histogram else 0
    if not total:
        return None
    rank = fraction * total
    below, lower = 0, 0
    for upper, count in histogram:
        if count >= rank and count > below:
            value = lower + (upper - lower) * (rank - below) / float(count - below)
            return int(value) if float(value).is_integer() else round(value, 1)
        below, lower = count, upper
    return histogram[-1][0]


def slot_telemetry(summed):
    """sum_cpus() of one slot -> what the module reports for it:

        {"handshakes": {"outgoing": int, "incoming": int},
         "syn_retransmits": int|None, "synack_retransmits": int|None, "spurious_retransmits": int|None,
         "rtt_us": {"p50": num, "p90": num, "p99": num} or None when no samples,
         "rtt_samples": int, "rtt_sum_us": int,
         "rtt_histogram": [[upper_bound_us, cumulative_count], ...]}

    handshakes: completed handshakes (connect() outgoing, accept()'s child incoming);
    syn_retransmits: SYN retransmits of connect()s, whether they completed or not;
    synack_retransmits: SYN-ACK retransmits of incoming handshakes that completed;
    spurious_retransmits: handshakes whose last SYN retransmit was not needed (an estimate);
    rtt_us and rtt_histogram: round trips of handshakes that did not retransmit, in log2 buckets;
    rtt_samples: how many (the histogram's count), rtt_sum_us: their sum.
    None, not 0, marks a counter the kernel offers no source for: every kernel the program loads on
    (4.16+) has them all, so None appears only in the shape's contract, never from this program."""
    histogram = cumulative(summed["rtt_buckets"])
    samples = histogram[-1][1]
    return {
        "handshakes": {"outgoing": summed["handshakes_outgoing"], "incoming": summed["handshakes_incoming"]},
        "syn_retransmits": summed["syn_retransmits"],
        "synack_retransmits": summed["synack_retransmits"],
        "spurious_retransmits": summed["spurious_retransmits"],
        "rtt_us": {name: quantile(histogram, fraction) for name, fraction in PERCENTILES} if samples else None,
        "rtt_samples": samples,
        "rtt_sum_us": summed["rtt_sum_us"],
        "rtt_histogram": histogram,
    }


def read_slots(stats_fd, slots):
    """{slot: slot_telemetry()} for the given slots (rule slot 0..1023, DEFAULT_HIT_SLOT) of the
    stats map stats_fd."""
    found = {}
    for slot in slots:
        values = bpf_maps.percpu_lookup(stats_fd, rto_program.HIT_KEY.pack(slot), rto_program.STATS_VALUE.size)
        if values is not None:
            found[slot] = slot_telemetry(sum_cpus(values))
    return found
