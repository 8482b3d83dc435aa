"""Pure logic of the domain: rule validation, jiffies conversion, the plan. No kernel needed:
the current state is a stand-in with the attributes plan_present reads."""

import ipaddress

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import instance as model
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program as abi


class FakeObject:
    def __init__(self, sha256="a" * 64):
        self.sha256 = sha256


def desired(rules=(), default=None, direction="both", cgroup="/cg", attach_mode="link", sha256="a" * 64, hz=250):
    return model.desired_state(
        "t", "/pins", cgroup, hz, list(rules), default, direction, attach_mode, FakeObject(sha256)
    )


class FakeCurrent:
    """The attributes of instance.Current that plan_present reads."""

    def __init__(self, want, attached=True, intact=True, cgroup=None, attach_mode=None, sha256=None, leftovers=()):
        self.exists = True
        self.leftovers = list(leftovers)
        self.program_intact = intact
        self.meta_problem = None
        self.meta = {"object_sha256": sha256 or want.object.sha256}
        self.rules = [(rule, slot) for slot, rule in enumerate(want.rules)]
        self.default_jiffies = want.default_jiffies
        self.default_syn_retries = want.default_syn_retries
        self.directions = abi.DIRECTIONS[want.direction]
        self.attached = attached
        self.cgroup = cgroup or want.cgroup
        self.attach_mode = attach_mode or want.attach_mode


@pytest.mark.parametrize(
    "rto_ms, hz, jiffies",
    [(200, 250, 50), (50, 250, 13), (4, 250, 1), (1, 1000, 1), (120000, 250, 30000), (10, 100, 1), (52, 300, 16)],
)
def test_rto_rounds_up_to_whole_jiffies(rto_ms, hz, jiffies):
    assert model.rto_ms_to_jiffies(rto_ms, hz, "x") == jiffies


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
    with pytest.raises(model.ConfigError, match=message):
        model.rto_ms_to_jiffies(rto_ms, 250, "x")


def test_effective_ms_shown_back():
    assert model.jiffies_to_ms(13, 250) == 52
    assert model.jiffies_to_ms(16, 300) == 53.333


@pytest.mark.parametrize(
    "rules, message",
    [
        ([{"dest": "10.0.0.0/33", "rto_ms": 50}], "not a network"),
        ([{"dest": "10.0.0.1/8", "rto_ms": 50}], "host bits set"),
        ([{"dest": "10.0.0.0/8", "rto_ms": 50}, {"dest": "10.0.0.0/8", "rto_ms": 60}], r"same network as rules\[0\]"),
        ([{"dest": "10.0.0.0/8", "rto_ms": 50}, {"dest": "::ffff:10.0.0.0/104", "rto_ms": 60}], "same network"),
        ([{"dest": "10.0.0.0/8"}], "the keys dest and rto_ms"),
        ([{"dest": "10.0.0.0/8", "rto_ms": 50, "x": 1}], r"the keys dest and rto_ms \(and optionally syn_give_up_s\)"),
        ([{"dest": "10.%d.0.0/16" % (i % 256), "rto_ms": 50} for i in range(abi.MAX_RULES + 1)], "holds at most 1024"),
    ],
)
def test_bad_rules(rules, message):
    with pytest.raises(model.ConfigError, match=message):
        model.parse_rules(rules, 250)


@pytest.mark.parametrize("name", ["", "a/b", "..", "a b", "a.b", "-x", "x" * 65, "r\u00e9gion"])
def test_bad_names(name):
    with pytest.raises(model.ConfigError, match="not a valid instance name"):
        model.validate_name(name)


def test_longest_prefix_and_default():
    rules = model.parse_rules(
        [
            {"dest": "127.0.0.0/8", "rto_ms": 200},
            {"dest": "127.0.0.1/32", "rto_ms": 100},
            {"dest": "::1/128", "rto_ms": 40},
        ],
        250,
    )
    assert model.rule_for("127.0.0.1", rules, None) == 25
    assert model.rule_for("127.0.0.2", rules, None) == 50
    assert model.rule_for("::1", rules, 7) == 10
    assert model.rule_for("192.0.2.1", rules, 7) == 7
    assert model.rule_for("192.0.2.1", rules, None) is None


def test_rule_keys_round_trip():
    for text in ("10.0.0.0/8", "0.0.0.0/0", "192.0.2.7/32", "fd00::/8", "::/0"):
        network = ipaddress.ip_network(text)
        assert abi.decode_rule_key(abi.encode_rule_key(network)) == network


@pytest.mark.parametrize("text", ["::ffff:10.0.0.0/104", "::ffff:0:0/96", "::ffff:192.0.2.7/128", "::ffff:0:0/97"])
def test_rules_in_the_mapped_range_share_the_ipv4_key_and_keep_their_family(text):
    network = ipaddress.ip_network(text)
    ipv4 = ipaddress.ip_network("%s/%d" % (network.network_address.ipv4_mapped, network.prefixlen - 96))
    key = abi.encode_rule_key(network)
    assert key == abi.encode_rule_key(ipv4)  # one trie entry: the kernel cannot tell them apart
    assert abi.decode_rule_key(key) == ipv4
    assert abi.decode_rule_key(key, mapped_as_ipv6=True) == network


@pytest.mark.parametrize("text", ["::/0", "::/80", "::fffe:0:0/95", "::fffe:0:0/96", "10.0.0.0/8", "0.0.0.0/0"])
def test_rules_outside_the_mapped_range_read_back_as_given(text):
    network = ipaddress.ip_network(text)
    for mapped_as_ipv6 in (False, True):
        expected = network if network.version == 6 or not mapped_as_ipv6 else abi.trie_network(network)
        assert abi.decode_rule_key(abi.encode_rule_key(network), mapped_as_ipv6=mapped_as_ipv6) == expected


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
    assert model.network_text(ipaddress.ip_network(text)) == shown


def test_the_meta_record_names_the_slots_given_as_ipv6_in_the_mapped_range():
    rules = model.parse_rules(
        [
            {"dest": "10.0.0.0/8", "rto_ms": 200},
            {"dest": "::ffff:10.1.0.0/112", "rto_ms": 200},
            {"dest": "::/0", "rto_ms": 200},
            {"dest": "::ffff:0:0/96", "rto_ms": 200},
        ],
        250,
    )
    assert model.ipv6_mapped_slots(rules) == "a"  # slots 1 and 3
    assert model.ipv6_mapped_slots(rules[:1]) == "0"
    full = [{"dest": "::ffff:10.%d.%d.0/120" % divmod(i, 256), "rto_ms": 200} for i in range(abi.MAX_RULES)]
    assert model.ipv6_mapped_slots(model.parse_rules(full, 250)) == "f" * 256  # a full map: 256 digits


def test_plan_nothing_to_do():
    want = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 50}], default=500)
    plan = model.plan_present(want, FakeCurrent(want))
    assert plan.steps == [] and not (plan.load_maps or plan.load_program or plan.attach)


def test_plan_removes_what_a_killed_run_left():
    want = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 50}], default=500)
    plan = model.plan_present(want, FakeCurrent(want, leftovers=["new_meta", "new_prog"]))
    assert plan.steps == ["remove what an interrupted run left (new_meta, new_prog)"]
    assert not (plan.load_maps or plan.load_program or plan.attach)


def test_plan_values_only_touch_maps():
    held = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 50}])
    want = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 60}], default=500)
    plan = model.plan_present(want, FakeCurrent(held))
    assert plan.steps == ["update rules", "update default and direction"]
    assert not (plan.load_maps or plan.load_program or plan.attach)


def test_plan_new_object_replaces_in_place():
    want = desired(sha256="b" * 64)
    plan = model.plan_present(want, FakeCurrent(want, sha256="a" * 64))
    assert plan.load_maps and plan.load_program and plan.attach
    assert "replace the attached program atomically (link)" in plan.steps


def test_plan_move_loads_second_program_then_detaches():
    held = desired(cgroup="/old")
    want = desired(cgroup="/new")
    plan = model.plan_present(want, FakeCurrent(held))
    assert not plan.load_maps and plan.load_program and plan.attach
    assert plan.steps == [
        "load a second copy of the program on the same maps",
        "attach to /new (link)",
        "detach from /old (link)",
    ]


def test_plan_reattaches_same_program_after_drift():
    want = desired()
    plan = model.plan_present(want, FakeCurrent(want, attached=False))
    assert plan.steps == ["attach to /cg (link)"]
    assert not plan.load_program


def test_plan_fresh_instance():
    want = desired()
    current = FakeCurrent(want, attached=False, intact=False)
    current.exists = False
    plan = model.plan_present(want, current)
    assert plan.load_maps and plan.load_program and plan.attach
    assert not any(step.startswith("repair") for step in plan.steps)


def many_rules(count, first_octet, rto_ms=50):
    return [
        {"dest": "%d.%d.%d.0/24" % (first_octet, index // 256, index % 256), "rto_ms": rto_ms} for index in range(count)
    ]


@pytest.mark.parametrize(
    "held, wanted, obstacle",
    [
        (many_rules(512, 10), many_rules(512, 11), None),  # 1024 together: fits
        (many_rules(600, 10), many_rules(600, 11), "600 old and 600 new rules make 1200 entries together"),
        (many_rules(1024, 10), many_rules(1024, 10, rto_ms=60), "the map is full (1024 entries)"),
        (many_rules(1024, 10), many_rules(1023, 10), None),  # only deletions: no update in the full map
        (many_rules(1023, 10), many_rules(1023, 10, rto_ms=60) + many_rules(1, 11), None),  # changes go first
    ],
    ids=["union-fits", "union-too-big", "full-value-change", "full-deletions", "changes-then-fill"],
)
def test_plan_rules_that_do_not_fit_in_place_take_new_maps(held, wanted, obstacle):
    want = desired(rules=wanted)
    plan = model.plan_present(want, FakeCurrent(desired(rules=held)))
    if obstacle is None:
        assert plan.steps == ["update rules"]
        assert not (plan.load_maps or plan.load_program or plan.attach)
    else:
        assert plan.steps[0].startswith("rules do not fit the live rules map (%s" % obstacle)
        assert plan.load_maps and plan.load_program and plan.attach
        assert plan.steps[1:] == [
            "create maps and load program from object aaaaaaaaaaaa",
            "replace the attached program atomically (link)",
        ]


def test_cgroup_search_is_bounded(tmp_path):
    for path in ("a/a1", "a/a2", "b"):
        (tmp_path / path).mkdir(parents=True)
    (tmp_path / "cgroup.procs").write_text("")
    root = str(tmp_path)
    every = [root, *(str(tmp_path / name) for name in ("a", "b", "a/a1", "a/a2"))]
    assert model._cgroup_tree(root, 5) == (every, True)
    assert model._cgroup_tree(root, 3) == (every[:3], False)


def test_only_the_instance_pins_are_its_own():
    names = model.instance_pin_names()
    assert sorted(names) == sorted(
        [
            "prog",
            "rules",
            "config",
            "hits",
            "stats",
            "syn_rtx_time",
            "meta",
            "link",
            "new_prog",
            "new_rules",
            "new_config",
            "new_hits",
            "new_stats",
            "new_syn_rtx_time",
            "new_meta",
            "new_link",
        ]
    )
