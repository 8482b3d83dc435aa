# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Harm warnings: an initial RTO the instance sets that its own handshakes show to be too small.

A rule (or the instance's default) warns when its RTO is below safety_factor x the p99 handshake
round trip measured on its connections, with at least min_samples round-trip samples behind that
p99. Below that many samples a p99 is little more than the largest sample seen. Why these
defaults: docs/tcp_initial_rto.md. The module and the info module both report with this code.
Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math

from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import AUTO, ConfigError

DEFAULT_SAFETY_FACTOR = 3.0
DEFAULT_MIN_SAMPLES = 100
# The dest of a warning about the instance's default (rto_ms), as the metrics label it.
DEFAULT_RULE = "default"


def check_thresholds(safety_factor, min_samples):
    """ConfigError for thresholds that cannot mean anything."""
    if not safety_factor or safety_factor <= 0:
        raise ConfigError("safety_factor must be above 0 (3 is the default), not %s" % safety_factor)
    if min_samples is None or min_samples < 1:
        raise ConfigError("min_samples must be 1 or more (100 is the default), not %s" % min_samples)


def _slots(instance):
    """(dest, rto_ms, telemetry) of each rule and of the default when the instance sets a fixed
    value: a connection the instance leaves at the kernel default (1 s) is not the instance's doing,
    and rto_ms auto follows each host's own round trips (learned.py)."""
    for rule in instance.get("rules", []):
        if rule.get("rto_ms") != AUTO:
            yield rule["dest"], rule.get("rto_ms"), rule
    if instance.get("default_rto_ms") not in (None, AUTO):
        yield DEFAULT_RULE, instance["default_rto_ms"], instance.get("default_telemetry") or {}


def harm_warnings(instance, safety_factor=DEFAULT_SAFETY_FACTOR, min_samples=DEFAULT_MIN_SAMPLES):
    """instance as views.with_hits shows it -> [{instance, dest, rto_ms, p99_us, samples, message}],
    one per rule (dest DEFAULT_RULE for the default) whose RTO is below safety_factor x its p99
    handshake round trip, measured on at least min_samples handshakes."""
    found = []
    for dest, rto_ms, telemetry in _slots(instance):
        samples = telemetry.get("rtt_samples") or 0
        p99_us = (telemetry.get("rtt_us") or {}).get("p99")
        if rto_ms is None or p99_us is None or samples < min_samples:
            continue
        bound_us = safety_factor * p99_us
        if rto_ms * 1000 >= bound_us:
            continue
        what = "the default (rto_ms)" if dest == DEFAULT_RULE else "rule %s" % dest
        message = (
            "%s: %s: initial RTO %s ms is below %s x the p99 handshake round trip %.1f ms (%.1f ms), measured on "
            "%d handshakes: a handshake slower than usual retransmits its SYN or SYN-ACK for nothing. Raise "
            "rto_ms to %d or more, or lower safety_factor if the path's round trip is known to be steady"
            % (
                instance["name"],
                what,
                rto_ms,
                safety_factor,
                p99_us / 1000.0,
                bound_us / 1000.0,
                samples,
                math.ceil(bound_us / 1000.0),
            )
        )
        found.append(
            dict(instance=instance["name"], dest=dest, rto_ms=rto_ms, p99_us=p99_us, samples=samples, message=message)
        )
    return found
