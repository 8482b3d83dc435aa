# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How long connect() to a peer that never answers tries before it fails: it scales with the
initial RTO the program gives. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host

TCP_RTO_MAX_SECONDS = 120.0


def shortest_rto_jiffies(desired, rto_jiffies, auto):
    """The smallest initial RTO a rule (or the default) can give: for rto_ms: auto, auto_min_ms
    (a host that taught a low value and then stops answering keeps it)."""
    return desired.auto.min_jiffies if auto else rto_jiffies


def give_up_seconds(desired):
    """The soonest any connect() the instance answers gives up (the kernel's 1 s for the rest)."""
    values = [(shortest_rto_jiffies(desired, rule.rto_jiffies, rule.auto), rule.syn_retries) for rule in desired.rules]
    values.append(
        (shortest_rto_jiffies(desired, desired.default_jiffies, desired.default_auto), desired.default_syn_retries)
        if desired.default_jiffies
        else (desired.hz, None)
    )
    return min(rule_give_up_seconds(jiffies, retries, desired.hz) for jiffies, retries in values)


def rule_give_up_seconds(rto_jiffies, syn_retries, hz):
    """When connect() with this initial RTO gives up on a peer that never answers: with the SYN
    retries the program sets (syn_give_up_s), else the host's tcp_syn_retries."""
    return round(
        syn_give_up_seconds(
            rto_jiffies / float(hz),
            syn_retries or host.read_sysctl("net.ipv4.tcp_syn_retries", 6),
            host.read_sysctl("net.ipv4.tcp_syn_linear_timeouts", 0),
        ),
        3,
    )


def recorded_give_up_seconds(rto_jiffies, syn_retries, hz):
    """The syn_give_up_s that gives a rule (or the default) syn_retries again, for a history record:
    its deadline cut to whole milliseconds, so that it does not pass that deadline and ask for one
    retry more. None when the program sets no TCP_SYNCNT there (syn_retries 0)."""
    if not syn_retries:
        return None
    seconds = syn_give_up_seconds(
        rto_jiffies / float(hz), syn_retries, host.read_sysctl("net.ipv4.tcp_syn_linear_timeouts", 0)
    )
    return math.floor(seconds * 1000 + 1e-6) / 1000.0


def sets_syn_retries(desired):
    """Whether the program is to set TCP_SYNCNT on some connections (syn_give_up_s given)."""
    return bool(desired.default_syn_retries or any(rule.syn_retries for rule in desired.rules))


def _model_timeout(boundary, rto_base, rto_max):
    """tcp_model_timeout(): how long `boundary` exponentially backed-off retransmits take."""
    ratio = int(rto_max // rto_base) if rto_base > 0 else 1
    thresh = max(ratio, 1).bit_length() - 1  # ilog2
    if boundary <= thresh:
        return ((2 << boundary) - 1) * rto_base
    return ((2 << thresh) - 1) * rto_base + (boundary - thresh) * rto_max


def syn_give_up_seconds(
    rto_seconds: float, syn_retries: int, linear_timeouts: int = 0, rto_max_seconds: float = TCP_RTO_MAX_SECONDS
) -> float:
    """Seconds after which connect() to a peer that never answers fails with ETIMEDOUT.

    rto_seconds is the initial RTO R (what the program gives, 1 s without it); syn_retries is
    net.ipv4.tcp_syn_retries (or TCP_SYNCNT) N; linear_timeouts is net.ipv4.tcp_syn_linear_timeouts L
    on 6.5+ (pass 0 before: the sysctl does not exist there).

    The kernel (tcp_retransmit_timer / tcp_write_timeout) re-arms the SYN timer with R for the first
    L + 1 intervals, then doubles it (capped at TCP_RTO_MAX, 120 s). At each expiry after the first
    retransmit it gives up when N + L retransmits were sent, or when the time since the first SYN
    reaches tcp_model_timeout(N, R) = (2^(N+1) - 1)·R (while uncapped). So:
        L = 0 (before 6.5):           (2^(N+1) - 1)·R                 N = 6: 127·R
        L > 0: the first expiry at or after (2^(N+1) - 1)·R, where expiries fall at
               R, 2R, ..., (L+1)R, (L+3)R, (L+7)R, ...                N = 6, L = 4: 131·R
    (with L = 4 on this kernel: N = 1 gives 3·R, N = 2 gives 7·R, N = 3 gives 19·R: measured).
    """
    rto = float(rto_seconds)
    limit = _model_timeout(syn_retries, rto, float(rto_max_seconds))
    elapsed = 0.0
    retransmits = 0
    while True:
        elapsed += rto  # the timer expires
        if retransmits and (retransmits >= syn_retries + linear_timeouts or elapsed >= limit * (1 - 1e-9)):
            return elapsed
        retransmits += 1
        if retransmits > linear_timeouts:
            rto = min(rto * 2, rto_max_seconds)


def syn_retries_for_give_up(give_up_s, rto_seconds, linear_timeouts=0, max_retries=127):
    """The fewest SYN retries N (TCP_SYNCNT, 1..max_retries) with which connect() to a peer that
    never answers keeps trying for at least give_up_s: it then gives up at the first retransmission
    deadline at or past give_up_s (syn_give_up_seconds(rto_seconds, N, linear_timeouts)). None when
    even max_retries give up sooner."""
    for retries in range(1, max_retries + 1):
        if syn_give_up_seconds(rto_seconds, retries, linear_timeouts) >= give_up_s * (1 - 1e-9):
            return retries
    return None
