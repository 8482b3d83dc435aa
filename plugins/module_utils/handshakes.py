# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module's verification (verify: true): real handshakes from inside the cgroup, compared
with the initial RTO the instance should give them. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import probe, rto_program
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import (
    KERNEL_DEFAULT_RTO_MS,
    jiffies_to_ms,
    plain_number,
    rule_for,
)

PROBE_ADDRESS = "127.0.0.1"


def _check(direction, expected_jiffies, observed_ms, low_ms, high_ms, hz):
    """One handshake: ok when the value the rules give lies within what was observed."""
    expected_ms = jiffies_to_ms(expected_jiffies, hz) if expected_jiffies else KERNEL_DEFAULT_RTO_MS
    return {
        "direction": direction,
        "address": PROBE_ADDRESS,
        "expected_ms": expected_ms,
        "observed_ms": plain_number(observed_ms),
        "ok": low_ms <= expected_ms <= high_ms,
    }


def verify(desired, descendants=()):
    """Real handshakes from inside the cgroup compared with what the instance should give them:
    always a connect() (the kernel default when direction leaves it out), and an accept() when
    direction includes incoming; a connect() in each of descendants too (checks with a cgroup key)."""
    directions = rto_program.DIRECTIONS[desired.direction]
    jiffies = rule_for(PROBE_ADDRESS, desired.rules, desired.default_jiffies)
    jiffy_ms = 1000.0 / desired.hz

    def outgoing_check(cgroup):
        observed_ms = probe.outgoing_rto_us(cgroup, PROBE_ADDRESS) / 1000.0  # exact: tcpi_rto
        expected = jiffies if directions & rto_program.DIRECTION_OUTGOING else None
        return _check(
            "outgoing", expected, observed_ms, observed_ms - jiffy_ms / 2, observed_ms + jiffy_ms / 2, desired.hz
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
                    check["expected_ms"],
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
