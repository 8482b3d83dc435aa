# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading what rto_ms: auto learned (the learned map, see rto_program.LEARNED_VALUE): per remote
host its samples, its RFC 6298 estimate and the initial RTO the program gives it now, worked out
as files/bpf/tcp_initial_rto.bpf.c's learned_rto() does. What the map holds is no configuration:
results show it, nothing compares it. docs/tcp_initial_rto.md says how it is learned.
Plain stdlib, usable without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import time

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_maps, rto_program

# Hosts the info module shows per instance: those with the most samples.
SHOWN = 20
NSEC_PER_SEC = 1000000000
USEC_PER_SEC = 1000000

# Why a host gets the upper bound instead of what it taught (None: it gets what it taught).
TOO_FEW_SAMPLES = "too_few_samples"
EXPIRED = "expired"
OVER_BUDGET = "over_retransmit_budget"


def monotonic_ns():
    """The clock of bpf_ktime_get_ns() (CLOCK_MONOTONIC); time.monotonic_ns is 3.7+."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * NSEC_PER_SEC)


def host_text(key):
    """A learned map key (16 address bytes, IPv4 mapped into IPv6) -> the address as people write it."""
    address = ipaddress.IPv6Address(rto_program.LEARNED_KEY.unpack(key)[0])
    return str(address.ipv4_mapped) if address.ipv4_mapped else str(address)


def host_view(key, value, auto_config, max_jiffies, now_ns):
    """One entry -> {host, samples, srtt_us, rttvar_us, estimate_us, retransmits, age_s, rto_ms,
    fallback}: the estimate is SRTT + 4 RTTVAR; rto_ms what a SYN to the host gets now; fallback
    why that is the upper bound (None: it is what the host taught)."""
    updated_ns, srtt_us8, rttvar_us4, samples, retransmits = rto_program.LEARNED_VALUE.unpack(
        bytes(value)[: rto_program.LEARNED_VALUE.size]
    )
    settings = dict(zip(rto_program.AUTO_CONFIG_FIELDS, auto_config))
    hz = settings["hz"]
    estimate_us = (srtt_us8 >> 3) + rttvar_us4
    age_ns = max(0, now_ns - updated_ns)
    fallback = None
    if samples < settings["min_samples"]:
        fallback = TOO_FEW_SAMPLES
    elif retransmits > settings["retransmit_budget"]:
        fallback = OVER_BUDGET
    elif age_ns > settings["ttl_s"] * NSEC_PER_SEC:
        fallback = EXPIRED
    if fallback:
        jiffies = max_jiffies
    else:
        scaled_us = estimate_us * settings["factor_pct"] // 100
        jiffies = min(max(-(-scaled_us * hz // USEC_PER_SEC), settings["min_jiffies"]), max_jiffies)
    rto_ms = jiffies * 1000.0 / hz
    return {
        "host": host_text(key),
        "samples": samples,
        "srtt_us": srtt_us8 >> 3,
        "rttvar_us": rttvar_us4 >> 2,
        "estimate_us": estimate_us,
        "retransmits": retransmits,
        "age_s": round(age_ns / float(NSEC_PER_SEC), 1),
        "rto_ms": int(rto_ms) if rto_ms.is_integer() else round(rto_ms, 3),
        "fallback": fallback,
    }


def upper_bound(rules, default_jiffies, default_auto):
    """The jiffies every auto rule and auto default shares as its upper bound (their rto_jiffies:
    auto_max_ms), or None without one. rules: [desired.Rule]."""
    bounds = [rule.rto_jiffies for rule in rules if rule.auto] + ([default_jiffies] if default_auto else [])
    return bounds[0] if bounds else None


def top_hosts(fd, auto_config, max_jiffies, limit=SHOWN, now_ns=None):
    """The limit hosts of the learned map fd with the most samples, as host_view() shows them
    (auto_config: the config map's AUTO_CONFIG_FIELDS values; max_jiffies: the upper bound)."""
    now_ns = monotonic_ns() if now_ns is None else now_ns
    found = []
    for key in bpf_maps.map_keys(fd, rto_program.LEARNED_KEY.size):
        value = bpf_maps.map_lookup(fd, key, rto_program.LEARNED_VALUE.size)
        if value is not None:  # evicted meanwhile
            found.append(host_view(key, value, auto_config, max_jiffies, now_ns))
    found.sort(key=lambda host: (-host["samples"], host["host"]))
    return found[:limit]
