# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module's verification (verify: true): real handshakes from inside the cgroup, compared
with the initial RTO the instance should give them. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import probe, rto_program
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import (
    AUTO,
    KERNEL_DEFAULT_RTO_MS,
    jiffies_to_ms,
    matching_rule,
    plain_number,
)

PROBE_ADDRESS = "127.0.0.1"


def _check(direction, expected_jiffies, observed_ms, low_ms, high_ms, hz, auto_min_jiffies=None):
    """One handshake: ok when the value the rules give lies within what was observed. With
    auto_min_jiffies (rto_ms: auto), what the rules give is a range up to expected_jiffies: ok when
    it meets what was observed (the learned value itself is no configuration)."""
    check = {"direction": direction, "address": PROBE_ADDRESS, "observed_ms": plain_number(observed_ms)}
    if auto_min_jiffies is not None:
        expected_range = [jiffies_to_ms(auto_min_jiffies, hz), jiffies_to_ms(expected_jiffies, hz)]
        return dict(
            check,
            expected_ms=AUTO,
            expected_range_ms=expected_range,
            ok=low_ms <= expected_range[1] and expected_range[0] <= high_ms,
        )
    expected_ms = jiffies_to_ms(expected_jiffies, hz) if expected_jiffies else KERNEL_DEFAULT_RTO_MS
    return dict(check, expected_ms=expected_ms, ok=low_ms <= expected_ms <= high_ms)


def verify(desired, descendants=()):
    """Real handshakes from inside the cgroup compared with what the instance should give them:
    always a connect() (the kernel default when direction leaves it out), and an accept() when
    direction includes incoming; a connect() in each of descendants too (checks with a cgroup key)."""
    directions = rto_program.DIRECTIONS[desired.direction]
    rule = matching_rule(PROBE_ADDRESS, desired.rules)
    jiffies = rule.rto_jiffies if rule else desired.default_jiffies
    auto_min = desired.auto.min_jiffies if (rule.auto if rule else desired.default_auto) else None
    jiffy_ms = 1000.0 / desired.hz

    def outgoing_check(cgroup):
        observed_ms = probe.outgoing_rto_us(cgroup, PROBE_ADDRESS) / 1000.0  # exact: tcpi_rto
        answered = directions & rto_program.DIRECTION_OUTGOING
        return _check(
            "outgoing",
            jiffies if answered else None,
            observed_ms,
            observed_ms - jiffy_ms / 2,
            observed_ms + jiffy_ms / 2,
            desired.hz,
            auto_min if answered else None,
        )

    checks = [outgoing_check(desired.cgroup)]
    if directions & rto_program.DIRECTION_INCOMING:
        incoming = probe.incoming_rto_ms(desired.cgroup, PROBE_ADDRESS)
        # The timer was armed somewhere between the connect and the read, so its full length lies in
        # [remaining, remaining + elapsed], give or take a jiffy of timer granularity; a busy VM's
        # clock can make the "exact" reading one jiffy off.
        checks.append(
            _check(
                "incoming",
                jiffies,
                incoming.rto_ms,
                incoming.remaining_ms - jiffy_ms,
                incoming.remaining_ms + incoming.elapsed_ms + jiffy_ms,
                desired.hz,
                auto_min,
            )
        )
    checks.extend(dict(outgoing_check(descendant), cgroup=descendant) for descendant in descendants)
    return {"ok": all(check["ok"] for check in checks), "checks": checks}


def failure_message(desired, failed, conflicts):
    """Why verification failed, for people: the failed checks and the conflicts that explain them."""
    return (
        "verification failed: %s. %s The instance stays applied; the programs that run for the cgroup show "
        "with 'bpftool cgroup tree'."
        % (
            "; ".join(
                "an %s handshake with %s in %s started with an initial RTO of %s ms, the rules give %s ms"
                % (
                    check["direction"],
                    check["address"],
                    check.get("cgroup", desired.cgroup),
                    check["observed_ms"],
                    "%s to %s" % tuple(check["expected_range_ms"])
                    if "expected_range_ms" in check
                    else check["expected_ms"],
                )
                for check in failed
            ),
            "Foreign sock_ops programs that can cause it (see conflicts): %s."
            % "; ".join(
                "program %d (%s) attached %s to %s (%s cgroup): %s"
                % (c["id"], c["name"] or "no name", c["attach"], c["cgroup"], c["relation"], c["why"])
                for c in conflicts
            )
            if conflicts
            else "No foreign sock_ops program runs for the cgroup: something outside BPF sets the value.",
        )
    )
