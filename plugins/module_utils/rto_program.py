# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract between files/bpf/tcp_initial_rto.bpf.c and the Python side.

Every name, size and byte layout the program and the loader must agree on lives here and in
the C source, nowhere else. Plain stdlib: the boot-time restore imports it without Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import struct

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import uapi

PROGRAM_SECTION = "sockops"
PROGRAM_NAME = "tcp_initial_rto"

# Capacity of the rules map. The hits map has one more slot, DEFAULT_HIT_SLOT, which counts
# connections that got the default value.
MAX_RULES = 1024
DEFAULT_HIT_SLOT = MAX_RULES


def too_many_rules(count):
    """The error for a rules list longer than the map (the module and its action plugin say it)."""
    return (
        "%d rules given; the program's rules map holds at most %d: merge neighbouring networks into "
        "shorter prefixes (the longest matching prefix wins) or give the rest with rto_ms" % (count, MAX_RULES)
    )


DIRECTION_OUTGOING = 1  # SYN of connect(): full socket in SYN_SENT
DIRECTION_INCOMING = 2  # SYN-ACK of accept(): request socket (or TFO child in SYN_RECV)
DIRECTIONS = {
    "outgoing": DIRECTION_OUTGOING,
    "incoming": DIRECTION_INCOMING,
    "both": DIRECTION_OUTGOING | DIRECTION_INCOMING,
}

# Map names as in the C source, and the kernel map types they must have.
RULES_MAP = "rules"
CONFIG_MAP = "config"
HITS_MAP = "hits"
STATS_MAP = "stats"  # per slot and CPU: what the handshakes did (telemetry.py reads it)
SYN_RTX_TIME_MAP = "syn_rtx_time"  # the program's own: when a connect() last retransmitted its SYN
LEARNED_MAP = "learned"  # rto_ms: auto: what each remote host's handshakes taught (learned.py reads it)
AUTO_CONN_MAP = "auto_conn"  # the program's own: the learned answer each connect() started with

# struct rule_key { __u32 prefixlen; __u32 addr[4]; }: prefixlen in host order, address bytes in
# network order. IPv4 lives in the IPv4-mapped IPv6 range (::ffff:0:0/96) so that one trie serves
# both families and a dual-stack socket talking to a mapped address matches the IPv4 rule.
RULE_KEY = struct.Struct("=I16s")
# struct rule_value { __u32 rto_jiffies; __u32 hit_slot; __u32 syn_retries; __u32 flags; }:
# syn_retries is the TCP_SYNCNT the program sets on connect()s the rule answers, 0 leaves the
# socket's own; flags RTO_AUTO: rto_ms auto, rto_jiffies is the learned value's upper bound.
RULE_VALUE = struct.Struct("=IIII")
RTO_AUTO = 1
# struct config_value { __u32 default_rto_jiffies, directions, default_syn_retries, default_flags;
# __u32 auto_min_jiffies, auto_factor_pct, auto_min_samples, auto_ttl_s, auto_retransmit_budget, hz; }:
# 0 jiffies = no default; default_syn_retries and default_flags as a rule's, for the default; the
# AUTO_CONFIG fields (all 0 without rto_ms: auto) hold for every auto rule and default.
CONFIG_KEY = struct.Struct("=I")
AUTO_CONFIG_FIELDS = ("min_jiffies", "factor_pct", "min_samples", "ttl_s", "retransmit_budget", "hz")
CONFIG_VALUE = struct.Struct("=%dI" % (4 + len(AUTO_CONFIG_FIELDS)))
HIT_KEY = struct.Struct("=I")
HIT_VALUE = struct.Struct("=Q")
# TCP_SYNCNT takes 1..MAX_TCP_SYNCNT (include/net/tcp.h).
MAX_SYN_RETRIES = 127

# struct slot_stats, one per slot (as hits) and CPU: handshakes_outgoing, handshakes_incoming,
# syn_retransmits, synack_retransmits, spurious_retransmits, rtt_sum_us, rtt_min_us (this CPU's
# smallest sample, 0: none), then RTT_BUCKETS counters of handshake RTT: bucket b counts samples
# in (2^(b-1), 2^b] µs (bucket 0: <= 1 µs).
RTT_BUCKETS = 32
STATS_FIELDS = (
    "handshakes_outgoing",
    "handshakes_incoming",
    "syn_retransmits",
    "synack_retransmits",
    "spurious_retransmits",
    "rtt_sum_us",
    "rtt_min_us",
)
STATS_VALUE = struct.Struct("=%dQ" % (len(STATS_FIELDS) + RTT_BUCKETS))
# struct conn_key { __u32 remote[4], local[4], remote_port, local_port; } -> __u64 ktime ns
SYN_RTX_TIME_KEY = struct.Struct("=16s16sII")
SYN_RTX_TIME_VALUE = struct.Struct("=Q")
SYN_RTX_TIME_ENTRIES = 4096
# remote host (as RULE_KEY's address) -> struct learned_value { __u64 updated_ns, srtt_us8,
# rttvar_us4; __u32 samples, retransmits; }: 8 SRTT and 4 RTTVAR in µs (RFC 6298, scaled as
# the kernel's tcp_rtt_estimator()). The object declares LEARNED_ENTRIES; the loader creates the
# map with auto_table_size entries.
LEARNED_KEY = struct.Struct("=16s")
LEARNED_VALUE = struct.Struct("=QQQII")
LEARNED_ENTRIES = 4096
# SYN_RTX_TIME_KEY -> struct auto_conn_value { __u32 rto_jiffies, isn; }: the answer a connect()
# whose SYN was retransmitted keeps, and its initial sequence number
AUTO_CONN_VALUE = struct.Struct("=II")
AUTO_CONN_ENTRIES = 4096

# What a loadable object must declare: name -> (map type, key size, value size, max entries, flags)
MAP_CONTRACT = {
    RULES_MAP: (uapi.BPF_MAP_TYPE_LPM_TRIE, RULE_KEY.size, RULE_VALUE.size, MAX_RULES, uapi.BPF_F_NO_PREALLOC),
    CONFIG_MAP: (uapi.BPF_MAP_TYPE_ARRAY, CONFIG_KEY.size, CONFIG_VALUE.size, 1, 0),
    HITS_MAP: (uapi.BPF_MAP_TYPE_PERCPU_ARRAY, HIT_KEY.size, HIT_VALUE.size, MAX_RULES + 1, 0),
    STATS_MAP: (uapi.BPF_MAP_TYPE_PERCPU_ARRAY, HIT_KEY.size, STATS_VALUE.size, MAX_RULES + 1, 0),
    SYN_RTX_TIME_MAP: (
        uapi.BPF_MAP_TYPE_LRU_HASH,
        SYN_RTX_TIME_KEY.size,
        SYN_RTX_TIME_VALUE.size,
        SYN_RTX_TIME_ENTRIES,
        0,
    ),
    LEARNED_MAP: (uapi.BPF_MAP_TYPE_LRU_HASH, LEARNED_KEY.size, LEARNED_VALUE.size, LEARNED_ENTRIES, 0),
    AUTO_CONN_MAP: (uapi.BPF_MAP_TYPE_LRU_HASH, SYN_RTX_TIME_KEY.size, AUTO_CONN_VALUE.size, AUTO_CONN_ENTRIES, 0),
}
# Maps whose entries outlive an upgrade: the new program is loaded on the pinned map. What was
# learned, and what each connection in its handshake keeps: the answer it started with (so a SYN
# retransmitted across the upgrade keeps its base) and when its SYN was last retransmitted.
CARRIED_MAPS = (LEARNED_MAP, AUTO_CONN_MAP, SYN_RTX_TIME_MAP)

# The program looks every connection up with the full address: IPv4 as ::ffff:a.b.c.d.
LOOKUP_PREFIX = 128
V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def trie_network(network):
    """The network as the rules trie holds it: an IPv4 network as its IPv4-mapped IPv6 network. So
    an IPv6 rule covering ::ffff:0:0/96 (::/0, for one) matches IPv4 connections too, and an IPv6
    rule inside it is the same trie entry as the IPv4 rule it maps."""
    if network.version == 4:
        return ipaddress.IPv6Network(
            (int(V4_MAPPED.network_address) | int(network.network_address), V4_MAPPED.prefixlen + network.prefixlen)
        )
    return network


def trie_address(address):
    """The address the program looks up for a connection to address."""
    if address.version == 4:
        return ipaddress.IPv6Address(int(V4_MAPPED.network_address) | int(address))
    return address


def in_v4_mapped(network):
    """Whether an IPv6 network lies inside ::ffff:0:0/96, where its key is an IPv4 network's."""
    return network.version == 6 and network.prefixlen >= V4_MAPPED.prefixlen and network.network_address in V4_MAPPED


def encode_rule_key(network):
    """ipaddress network -> rules map key bytes."""
    held = trie_network(network)
    return RULE_KEY.pack(held.prefixlen, held.network_address.packed)


def encode_lookup_key(address):
    """ipaddress address -> the key the program looks up for a connection to it."""
    return RULE_KEY.pack(LOOKUP_PREFIX, trie_address(address).packed)


def decode_rule_key(key, mapped_as_ipv6=False):
    """rules map key bytes -> ipaddress network. The key cannot tell whether a network inside
    ::ffff:0:0/96 was given as IPv4 or as IPv6: IPv4 unless mapped_as_ipv6."""
    prefixlen, addr = RULE_KEY.unpack(key)
    # strict=False: a key edited outside tcp_rto may carry bits past its prefix, which the trie ignores
    network = ipaddress.IPv6Network((int.from_bytes(addr, "big"), prefixlen), strict=False)
    if not mapped_as_ipv6 and in_v4_mapped(network):
        return ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - V4_MAPPED.prefixlen)
        )
    return network


def encode_rule_value(rto_jiffies, hit_slot, syn_retries=None, auto=False):
    return RULE_VALUE.pack(rto_jiffies, hit_slot, syn_retries or 0, RTO_AUTO if auto else 0)


def decode_rule_value(value):
    """-> (rto_jiffies, hit_slot, syn_retries or None, auto). A value of an earlier object (no
    flags) reads with trailing zeros: not auto."""
    rto_jiffies, hit_slot, syn_retries, flags = RULE_VALUE.unpack(value)
    return rto_jiffies, hit_slot, syn_retries or None, bool(flags & RTO_AUTO)


def encode_config(default_rto_jiffies, directions, default_syn_retries=None, default_auto=False, auto_config=None):
    """auto_config: the AUTO_CONFIG_FIELDS values in order, or None (no auto rule or default)."""
    return CONFIG_VALUE.pack(
        default_rto_jiffies or 0,
        directions,
        default_syn_retries or 0,
        RTO_AUTO if default_auto else 0,
        *(auto_config or (0,) * len(AUTO_CONFIG_FIELDS)),
    )


def decode_config(value):
    """-> (default_rto_jiffies or None, directions bitmask, default_syn_retries or None, default_auto,
    the AUTO_CONFIG_FIELDS values or None when all are 0). A value of an earlier object reads with
    trailing zeros."""
    fields = CONFIG_VALUE.unpack(value)
    default_rto_jiffies, directions, default_syn_retries, default_flags = fields[:4]
    auto_config = tuple(fields[4:])
    return (
        default_rto_jiffies or None,
        directions,
        default_syn_retries or None,
        bool(default_flags & RTO_AUTO),
        auto_config if any(auto_config) else None,
    )
