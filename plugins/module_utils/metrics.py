# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The handshake telemetry as a Prometheus text-format file, for node_exporter's textfile
collector: written by the info module (metrics_textfile) and by the host's timer
(tcp-rto-metrics.timer, see metrics_timer.py), which runs main() without Ansible.

Every series has the label name (the instance; `instance` is the label Prometheus gives the
scraped target), and rule (the rule's dest, or "default" for the instance's default) or, for what
rto_ms: auto learned, host (one of the info module's learned hosts: the 20 with the most samples
per instance, so the series stay few). Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import sys
import tempfile

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import harm, info, rto_program
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import AUTO

# (counter, help, slot telemetry -> [(extra labels, value)])
COUNTERS = (
    (
        "tcp_rto_handshakes_total",
        "Completed TCP handshakes of the rule's connections (outgoing: connect(), incoming: accept()).",
        lambda slot: [
            ({"direction": "outgoing"}, slot["handshakes"]["outgoing"]),
            ({"direction": "incoming"}, slot["handshakes"]["incoming"]),
        ],
    ),
    (
        "tcp_rto_syn_retransmits_total",
        "SYN retransmits of the rule's connect()s, completed or not.",
        lambda slot: [({}, slot["syn_retransmits"])],
    ),
    (
        "tcp_rto_synack_retransmits_total",
        "SYN-ACK retransmits of the rule's completed incoming handshakes.",
        lambda slot: [({}, slot["synack_retransmits"])],
    ),
    (
        "tcp_rto_spurious_retransmits_total",
        "Handshakes whose last SYN retransmit was not needed (an estimate, see docs/tcp_initial_rto.md).",
        lambda slot: [({}, slot["spurious_retransmits"])],
    ),
)
HISTOGRAM = "tcp_rto_rtt_us"
HISTOGRAM_HELP = "Round trip (microseconds) of the rule's handshakes that did not retransmit, log2 buckets."
# (gauge, help, learned host as learned.host_view() shows it -> value)
LEARNED = (
    (
        "tcp_rto_learned_rto_us",
        "The initial RTO (microseconds) rto_ms: auto gives a SYN to the remote host now.",
        lambda host: host["rto_ms"] * 1000,
    ),
    (
        "tcp_rto_learned_estimate_us",
        "SRTT + 4 RTTVAR (microseconds) of the remote host's clean handshakes, before auto_factor and the bounds.",
        lambda host: host["estimate_us"],
    ),
    (
        "tcp_rto_learned_samples",
        "Clean handshakes the remote host's estimate comes from (since its entry was made).",
        lambda host: host["samples"],
    ),
)
RTO = "tcp_rto_initial_rto_us"
RTO_HELP = "The initial RTO (microseconds) the rule gives; the default's series only when the instance sets one."


def _labels(labels):
    def escaped(value):
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{%s}" % ",".join('%s="%s"' % (key, escaped(value)) for key, value in labels)


def _number(value):
    return repr(float(value)) if isinstance(value, float) and not float(value).is_integer() else str(int(value))


def _slots(view, telemetry):
    """(rule label, rto_ms or None, slot telemetry) of each rule and the default that the stats map
    counts (none for an instance without it, applied by an earlier object)."""
    for slot, rule in enumerate(view["rules"]):
        if slot in telemetry:
            yield rule["dest"], rule.get("rto_ms"), telemetry[slot]
    if rto_program.DEFAULT_HIT_SLOT in telemetry:
        yield harm.DEFAULT_RULE, view.get("default_rto_ms"), telemetry[rto_program.DEFAULT_HIT_SLOT]


def render(instances):
    """[(instance view as views.with_hits shows it, its current.telemetry())] -> the file's text."""
    slots = [
        (view["name"], rule, rto_ms, slot)
        for view, telemetry in instances
        for rule, rto_ms, slot in _slots(view, telemetry)
    ]
    lines = []
    for metric, text, values in COUNTERS:
        lines += ["# HELP %s %s" % (metric, text), "# TYPE %s counter" % metric]
        for name, rule, _rto_ms, slot in slots:
            for extra, value in values(slot):
                lines.append(
                    "%s%s %s" % (metric, _labels([("name", name), ("rule", rule), *sorted(extra.items())]), value)
                )
    lines += ["# HELP %s %s" % (HISTOGRAM, HISTOGRAM_HELP), "# TYPE %s histogram" % HISTOGRAM]
    for name, rule, _rto_ms, slot in slots:
        labels = [("name", name), ("rule", rule)]
        for bound, count in slot["rtt_histogram"]:
            lines.append("%s_bucket%s %d" % (HISTOGRAM, _labels([*labels, ("le", bound)]), count))
        lines.append("%s_bucket%s %d" % (HISTOGRAM, _labels([*labels, ("le", "+Inf")]), slot["rtt_samples"]))
        lines.append("%s_sum%s %d" % (HISTOGRAM, _labels(labels), slot["rtt_sum_us"]))
        lines.append("%s_count%s %d" % (HISTOGRAM, _labels(labels), slot["rtt_samples"]))
    lines += ["# HELP %s %s" % (RTO, RTO_HELP), "# TYPE %s gauge" % RTO]
    for name, rule, rto_ms, _slot in slots:
        if rto_ms not in (None, AUTO):  # auto: a value per remote host, not one per rule
            lines.append("%s%s %s" % (RTO, _labels([("name", name), ("rule", rule)]), _number(rto_ms * 1000)))
    for metric, text, value in LEARNED:
        lines += ["# HELP %s %s" % (metric, text), "# TYPE %s gauge" % metric]
        for view, _telemetry in instances:
            for host in view.get("learned") or []:
                labels = _labels([("name", view["name"]), ("host", host["host"])])
                lines.append("%s%s %s" % (metric, labels, _number(value(host))))
    return "\n".join(lines) + "\n"


def write_textfile(path, text, check_mode=False):
    """Replace path with text atomically (a temporary file in the same directory, mode 0644,
    renamed over it: the collector never reads half a file; its name does not end in .prom, so
    the collector skips it). -> whether the content changed (nothing is written when not)."""
    try:
        with open(path, "rb") as handle:
            if handle.read() == text.encode("utf-8"):
                return False
    except OSError:
        pass  # missing or unreadable: written anew
    if check_mode:
        return True
    directory, base = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix="." + base + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return True


USAGE = "usage: metrics.py PIN_DIR TEXTFILE\n"


def main(argv):
    """The timer's entry point: the metrics of every instance under PIN_DIR written to TEXTFILE."""
    if len(argv) != 2:
        sys.stderr.write(USAGE)
        return 2
    pin_dir, textfile = argv
    try:
        gathered, instances = info.read_host(pin_dir)
        write_textfile(textfile, render(instances))
    except (OSError, ValueError) as exc:
        sys.stderr.write("tcp-rto metrics: writing %s failed: %s\n" % (textfile, exc))
        return 1
    for problem in gathered["problems"] + gathered["unsupported_reasons"]:
        sys.stderr.write("tcp-rto metrics: %s\n" % problem)
    return 0
