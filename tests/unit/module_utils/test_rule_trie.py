"""The rule model against the kernel: for random IPv4/IPv6 rule sets and addresses, the value
desired.rule_for() (what verification expects) gives is the one the kernel's LPM trie finds for
the key the program looks up. The trie is a real BPF_MAP_TYPE_LPM_TRIE made with the rules map's
contract and filled with rto_program's key encoding; BPF_MAP_LOOKUP_ELEM on it does the longest
prefix match the program's bpf_map_lookup_elem() does. The same rule sets read back from the
trie (keys and values, with the meta record's note of the rules given as IPv6 inside
::ffff:0:0/96) are the rules written, in their family."""

import ipaddress
import os
import random

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_maps, desired, pins, rto_program

pytestmark = pytest.mark.kernel

SEED = 20261201
RULE_SETS = 150
ADDRESSES_PER_SET = 60

# Networks that overlap the IPv4-mapped range in every way: all of IPv6, the range itself, IPv4
# /0 (the same trie entry as ::ffff:0:0/96), ranges around it that cover or just miss it.
SPECIAL_NETWORKS = [
    "::/0",
    "::/80",
    "::ffff:0:0/96",
    "::ffff:0:0/97",
    "::ffff:8000:0/97",
    "::fffe:0:0/96",
    "::/96",
    "64:ff9b::/96",
    "0.0.0.0/0",
    "0.0.0.0/1",
    "128.0.0.0/1",
]
IPV4_BASES = ["10.0.0.0", "10.1.2.3", "127.0.0.1", "192.0.2.77", "255.255.255.255", "0.0.0.0"]
IPV6_BASES = ["2001:db8::1", "fd00::abcd", "::1", "::", "::ffff:10.1.2.3", "::fffe:10.1.2.3", "64:ff9b::10.1.2.3"]


def random_network(rng):
    """One rule network, often overlapping the others: around a few bases, with /0, /32, /128,
    and IPv4 networks written as IPv6 inside ::ffff:0:0/96."""
    kind = rng.random()
    if kind < 0.2:
        return ipaddress.ip_network(rng.choice(SPECIAL_NETWORKS))
    if kind < 0.5:
        base = ipaddress.IPv4Address(rng.choice(IPV4_BASES))
        prefixlen = rng.choice([0, 1, 8, 16, 24, 31, 32, rng.randint(0, 32)])
        return ipaddress.IPv4Network((int(base), prefixlen), strict=False)
    if kind < 0.75:
        base = ipaddress.IPv4Address(rng.choice(IPV4_BASES))
        prefixlen = rng.choice([96, 104, 112, 120, 127, 128, rng.randint(96, 128)])
        mapped = int(rto_program.V4_MAPPED.network_address) | int(base)
        return ipaddress.IPv6Network((mapped, prefixlen), strict=False)
    base = ipaddress.IPv6Address(rng.choice(IPV6_BASES))
    prefixlen = rng.choice([0, 1, 32, 64, 80, 95, 96, 97, 120, 127, 128, rng.randint(0, 128)])
    return ipaddress.IPv6Network((int(base), prefixlen), strict=False)


def random_rules(rng):
    """A valid rules list (no two rules on one trie key, as parse_rules demands)."""
    rules, keys = [], set()
    for _attempt in range(rng.randint(1, 24)):
        network = random_network(rng)
        key = rto_program.encode_rule_key(network)
        if key not in keys:
            keys.add(key)
            rules.append(desired.Rule(network, len(rules) + 1))  # jiffies tell the rules apart
    return rules


def random_address(rng, rules):
    kind = rng.random()
    if kind < 0.4 and rules:
        network = rng.choice(rules).dest  # somewhere inside a rule, its first or last address too
        offset = rng.choice([0, network.num_addresses - 1, rng.randrange(network.num_addresses)])
        return network.network_address + offset
    if kind < 0.6:
        near = int(ipaddress.IPv4Address(rng.choice(IPV4_BASES))) + rng.choice([0, 1, -1])
        return ipaddress.IPv4Address(near % 2**32)
    if kind < 0.7:
        return ipaddress.IPv4Address(rng.getrandbits(32))
    if kind < 0.9:
        return ipaddress.IPv6Address(rng.choice(IPV6_BASES)) + rng.choice([0, 1])
    return ipaddress.IPv6Address(rng.getrandbits(128))


def kernel_lookup(trie_fd, address):
    """The jiffies of the rule the kernel's trie finds for a connection to address, or None."""
    value = bpf_maps.map_lookup(trie_fd, rto_program.encode_lookup_key(address), rto_program.RULE_VALUE.size)
    return None if value is None else rto_program.decode_rule_value(value)[0]


@pytest.fixture
def trie_fd():
    fd = bpf_maps.map_create(*rto_program.MAP_CONTRACT[rto_program.RULES_MAP], name="tcp_rto_test")
    try:
        yield fd
    finally:
        os.close(fd)


def fill(trie_fd, rules):
    for slot, rule in enumerate(rules):
        bpf_maps.map_update(
            trie_fd, rto_program.encode_rule_key(rule.dest), rto_program.encode_rule_value(rule.rto_jiffies, slot)
        )


def empty(trie_fd, rules):
    for rule in rules:
        assert bpf_maps.map_delete(trie_fd, rto_program.encode_rule_key(rule.dest))


def test_model_and_kernel_agree_on_random_rule_sets(trie_fd):
    rng = random.Random(SEED)
    compared = 0
    for _round in range(RULE_SETS):
        rules = random_rules(rng)
        fill(trie_fd, rules)
        try:
            for _lookup in range(ADDRESSES_PER_SET):
                address = random_address(rng, rules)
                kernel = kernel_lookup(trie_fd, address)
                assert desired.rule_for(str(address), rules, None) == kernel, (
                    "rules %s, address %s: the model says %s, the kernel %s"
                    % ([str(rule.dest) for rule in rules], address, desired.rule_for(str(address), rules, None), kernel)
                )
                compared += 1
        finally:
            empty(trie_fd, rules)
    assert compared == RULE_SETS * ADDRESSES_PER_SET


def read_back(trie_fd, rules):
    """The rules as current.Current reads them from the trie, with the meta record's mask."""
    mapped_slots = pins.mapped_slots(pins.ipv6_mapped_slots(rules))
    held = []
    for key in bpf_maps.map_keys(trie_fd, rto_program.RULE_KEY.size):
        jiffies, slot, _syn_retries, _auto = rto_program.decode_rule_value(
            bpf_maps.map_lookup(trie_fd, key, rto_program.RULE_VALUE.size)
        )
        held.append(
            (slot, desired.Rule(rto_program.decode_rule_key(key, mapped_as_ipv6=slot in mapped_slots), jiffies))
        )
    return [rule for _slot, rule in sorted(held)]


def test_random_rule_sets_read_back_as_written(trie_fd):
    rng = random.Random(SEED + 1)
    for _round in range(RULE_SETS):
        rules = random_rules(rng)
        fill(trie_fd, rules)
        try:
            assert read_back(trie_fd, rules) == rules
            assert pins.maps_fingerprint(read_back(trie_fd, rules), None, 3) == pins.maps_fingerprint(rules, None, 3)
        finally:
            empty(trie_fd, rules)


@pytest.mark.parametrize(
    "rules, address, want",
    [
        # an IPv6 rule over the mapped range matches IPv4 connections (the verification case)
        (["::/0", "10.0.0.0/8"], "127.0.0.1", "::/0"),
        (["::/0", "10.0.0.0/8"], "10.9.9.9", "10.0.0.0/8"),
        (["::ffff:0:0/96", "::/0"], "192.0.2.1", "::ffff:0:0/96"),
        (["::ffff:10.0.0.0/104", "10.1.0.0/16"], "10.1.0.1", "10.1.0.0/16"),
        (["::ffff:10.0.0.0/104", "10.1.0.0/16"], "10.2.0.1", "::ffff:10.0.0.0/104"),
        (["0.0.0.0/0", "::/0"], "::1", "::/0"),
        (["0.0.0.0/0", "::/0"], "::ffff:1.2.3.4", "0.0.0.0/0"),
        (["::/80"], "8.8.8.8", "::/80"),
        (["::fffe:0:0/96"], "8.8.8.8", None),
    ],
)
def test_known_cases_in_model_and_kernel(trie_fd, rules, address, want):
    parsed = [desired.Rule(ipaddress.ip_network(text), jiffies) for jiffies, text in enumerate(rules, 1)]
    fill(trie_fd, parsed)
    expected = rules.index(want) + 1 if want else None
    assert kernel_lookup(trie_fd, ipaddress.ip_address(address)) == expected
    assert desired.rule_for(address, parsed, None) == expected
