"""The parameters' validation and the units: rules, names, milliseconds to jiffies, how rules
are shown and looked up. No kernel needed."""

import ipaddress

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import desired, pins, rto_program


@pytest.mark.parametrize(
    "rto_ms, hz, jiffies",
    [(200, 250, 50), (50, 250, 13), (4, 250, 1), (1, 1000, 1), (120000, 250, 30000), (10, 100, 1), (52, 300, 16)],
)
def test_rto_rounds_up_to_whole_jiffies(rto_ms, hz, jiffies):
    assert desired.rto_ms_to_jiffies(rto_ms, hz, "x") == jiffies


@pytest.mark.parametrize(
    "rto_ms, message",
    [
        (0, "must be positive"),
        (-5, "must be positive"),
        (120001, "TCP_RTO_MAX"),
        (3, "below one jiffy at HZ 250"),
        (1.5, "whole number"),
        ("200", "whole number"),
        (True, "whole number"),
    ],
)
def test_bad_rto(rto_ms, message):
    with pytest.raises(desired.ConfigError, match=message):
        desired.rto_ms_to_jiffies(rto_ms, 250, "x")


def test_effective_ms_shown_back():
    assert desired.jiffies_to_ms(13, 250) == 52
    assert desired.jiffies_to_ms(16, 300) == 53.333


@pytest.mark.parametrize(
    "rules, message",
    [
        ([{"dest": "10.0.0.0/33", "rto_ms": 50}], "not a network"),
        ([{"dest": "10.0.0.1/8", "rto_ms": 50}], "host bits set"),
        ([{"dest": "10.0.0.0/8", "rto_ms": 50}, {"dest": "10.0.0.0/8", "rto_ms": 60}], r"same network as rules\[0\]"),
        ([{"dest": "10.0.0.0/8", "rto_ms": 50}, {"dest": "::ffff:10.0.0.0/104", "rto_ms": 60}], "same network"),
        ([{"dest": "10.0.0.0/8"}], "the keys dest and rto_ms"),
        ([{"dest": "10.0.0.0/8", "rto_ms": 50, "x": 1}], r"the keys dest and rto_ms \(and optionally syn_give_up_s\)"),
        (
            [{"dest": "10.%d.0.0/16" % (i % 256), "rto_ms": 50} for i in range(rto_program.MAX_RULES + 1)],
            "holds at most 1024",
        ),
    ],
)
def test_bad_rules(rules, message):
    with pytest.raises(desired.ConfigError, match=message):
        desired.parse_rules(rules, 250)


@pytest.mark.parametrize("name", ["", "a/b", "..", "a b", "a.b", "-x", "x" * 65, "r\u00e9gion"])
def test_bad_names(name):
    with pytest.raises(desired.ConfigError, match="not a valid instance name"):
        desired.validate_name(name)


def test_longest_prefix_and_default():
    rules = desired.parse_rules(
        [
            {"dest": "127.0.0.0/8", "rto_ms": 200},
            {"dest": "127.0.0.1/32", "rto_ms": 100},
            {"dest": "::1/128", "rto_ms": 40},
        ],
        250,
    )
    assert desired.rule_for("127.0.0.1", rules, None) == 25
    assert desired.rule_for("127.0.0.2", rules, None) == 50
    assert desired.rule_for("::1", rules, 7) == 10
    assert desired.rule_for("192.0.2.1", rules, 7) == 7
    assert desired.rule_for("192.0.2.1", rules, None) is None


def test_rule_keys_round_trip():
    for text in ("10.0.0.0/8", "0.0.0.0/0", "192.0.2.7/32", "fd00::/8", "::/0"):
        network = ipaddress.ip_network(text)
        assert rto_program.decode_rule_key(rto_program.encode_rule_key(network)) == network


@pytest.mark.parametrize("text", ["::ffff:10.0.0.0/104", "::ffff:0:0/96", "::ffff:192.0.2.7/128", "::ffff:0:0/97"])
def test_rules_in_the_mapped_range_share_the_ipv4_key_and_keep_their_family(text):
    network = ipaddress.ip_network(text)
    ipv4 = ipaddress.ip_network("%s/%d" % (network.network_address.ipv4_mapped, network.prefixlen - 96))
    key = rto_program.encode_rule_key(network)
    assert key == rto_program.encode_rule_key(ipv4)  # one trie entry: the kernel cannot tell them apart
    assert rto_program.decode_rule_key(key) == ipv4
    assert rto_program.decode_rule_key(key, mapped_as_ipv6=True) == network


@pytest.mark.parametrize("text", ["::/0", "::/80", "::fffe:0:0/95", "::fffe:0:0/96", "10.0.0.0/8", "0.0.0.0/0"])
def test_rules_outside_the_mapped_range_read_back_as_given(text):
    network = ipaddress.ip_network(text)
    for mapped_as_ipv6 in (False, True):
        expected = network if network.version == 6 or not mapped_as_ipv6 else rto_program.trie_network(network)
        assert (
            rto_program.decode_rule_key(rto_program.encode_rule_key(network), mapped_as_ipv6=mapped_as_ipv6) == expected
        )


@pytest.mark.parametrize(
    "text, shown",
    [
        ("::ffff:a00:0/104", "::ffff:10.0.0.0/104"),
        ("::ffff:0:0/96", "::ffff:0.0.0.0/96"),
        ("::ffff:192.0.2.7/128", "::ffff:192.0.2.7/128"),
        ("::fffe:0:0/96", "::fffe:0:0/96"),
        ("::/0", "::/0"),
        ("10.0.0.0/8", "10.0.0.0/8"),
    ],
)
def test_networks_are_shown_the_same_on_every_python(text, shown):
    assert desired.network_text(ipaddress.ip_network(text)) == shown


def test_the_meta_record_names_the_slots_given_as_ipv6_in_the_mapped_range():
    rules = desired.parse_rules(
        [
            {"dest": "10.0.0.0/8", "rto_ms": 200},
            {"dest": "::ffff:10.1.0.0/112", "rto_ms": 200},
            {"dest": "::/0", "rto_ms": 200},
            {"dest": "::ffff:0:0/96", "rto_ms": 200},
        ],
        250,
    )
    assert pins.ipv6_mapped_slots(rules) == "a"  # slots 1 and 3
    assert pins.ipv6_mapped_slots(rules[:1]) == "0"
    full = [{"dest": "::ffff:10.%d.%d.0/120" % divmod(i, 256), "rto_ms": 200} for i in range(rto_program.MAX_RULES)]
    assert pins.ipv6_mapped_slots(desired.parse_rules(full, 250)) == "f" * 256  # a full map: 256 digits
