"""Rules changes against the capacity of the rules map (1024 entries), on the real kernel.

New rules are written into the live map before the old ones go, so that no connection falls to the
kernel default in between: a change whose old and new rules do not fit together, or that changes a
value in a full map (kernels without the 6.13 fix refuse any update to a full LPM trie), takes new maps and
a new program that replaces the attached one atomically. The kernel map is read with bpftool; a
stream of SYN_SENT sockets in the cgroup shows that none started with the kernel default."""

import ipaddress
import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program
from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import bpftool, cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.hz import jiffies_us, kernel_hz
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import KERNEL_DEFAULT_US, RtoStream, observed_rto_us

pytestmark = pytest.mark.kernel

HZ = kernel_hz()
NEW_MAPS_STEP = "rules do not fit the live rules map"


def rules(count, loopback_dest, loopback_ms, first_octets, rto_ms=50):
    """A rule for loopback_dest (127.0.0.0/8 or a part of it), then count - 1 /24 networks that
    start at first_octets (a, b): a.b.0.0/24, a.b.1.0/24 ..."""
    first, second = first_octets
    return [{"dest": loopback_dest, "rto_ms": loopback_ms}] + [
        {"dest": "%d.%d.%d.0/24" % (first, second + index // 256, index % 256), "rto_ms": rto_ms}
        for index in range(count - 1)
    ]


OLD_600 = rules(600, "127.0.0.0/8", 200, (10, 0))
NEW_600 = rules(600, "127.0.0.0/9", 300, (172, 16), rto_ms=60)  # no network in common with OLD_600
FULL = rules(rto_program.MAX_RULES, "127.0.0.0/8", 200, (10, 0))
FULL_CHANGED = [dict(FULL[0], rto_ms=300), *FULL[1:]]


def kernel_rules(instance_dir):
    """{key bytes: value bytes} of the instance's pinned rules map, as bpftool reads it."""
    return {
        bytes(int(byte, 16) for byte in entry["key"]): bytes(int(byte, 16) for byte in entry["value"])
        for entry in bpftool("map", "dump", "pinned", os.path.join(instance_dir, "rules"))
    }


def map_entries(given):
    """What the rules map holds for the rules list given (hit slot = list position)."""
    return {
        rto_program.encode_rule_key(ipaddress.ip_network(rule["dest"])): rto_program.encode_rule_value(
            -(-rule["rto_ms"] * HZ // 1000), slot
        )
        for slot, rule in enumerate(given)
    }


@pytest.fixture
def instance(cgroup, bpffs):
    """params(**options) -> module parameters of the instance "swap"; .dir: its pins."""

    class Instance:
        dir = os.path.join(bpffs, "tcp_rto", "swap")

        @staticmethod
        def params(**options):
            return reconcile_run.module_params(
                name="swap", cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, **options
            )

    yield Instance
    reconcile_run.run(Instance.params(state="absent"))


def apply(params, check_mode=False):
    returncode, result, err = reconcile_run.run(dict(params, _check_mode=check_mode))
    assert returncode == 0, (result, err)
    return result


@pytest.mark.parametrize(
    "mode",
    [dict(), dict(_legacy_attach=True), dict(_legacy_attach=True, _no_prog_replace=True)],
    ids=["link_update", "legacy_replace", "legacy_attach_then_detach"],
)
def test_swap_beyond_capacity_replaces_maps_without_a_gap(instance, cgroup, mode):
    """600 rules replaced by 600 others: 1200 together, more than the map holds."""
    first = apply(instance.params(rules=OLD_600, **mode))
    planned = apply(instance.params(rules=NEW_600, **mode), check_mode=True)
    assert [step for step in planned["actions"] if step.startswith(NEW_MAPS_STEP)], planned["actions"]
    assert kernel_rules(instance.dir) == map_entries(OLD_600)

    stream = RtoStream(cgroup)
    try:
        assert stream.wait_for(jiffies_us(200)), stream.values[-5:]
        swapped = apply(instance.params(rules=NEW_600, **mode))
        assert stream.wait_for(jiffies_us(300)), stream.values[-5:]
    finally:
        assert stream.stop() == 0
    assert KERNEL_DEFAULT_US not in stream.values
    assert set(stream.values) == {jiffies_us(200), jiffies_us(300)}

    assert swapped["actions"] == planned["actions"]
    assert kernel_rules(instance.dir) == map_entries(NEW_600)
    assert swapped["instance"]["program_id"] != first["instance"]["program_id"]
    assert cgroup_program_ids(cgroup) == [swapped["instance"]["program_id"]]
    assert swapped["verification"]["ok"] is True

    again = apply(instance.params(rules=NEW_600, **mode))
    assert (again["changed"], again["actions"]) == (False, [])
    assert again["instance"]["program_id"] == swapped["instance"]["program_id"]


def test_swap_that_fits_stays_in_place(instance, cgroup):
    """512 old and 512 new rules fit together: the live map is rewritten, the program stays."""
    old = rules(512, "127.0.0.0/8", 200, (10, 0))
    new = rules(512, "127.0.0.0/9", 300, (172, 16))
    first = apply(instance.params(rules=old))
    changed = apply(instance.params(rules=new))
    assert changed["actions"] == ["update rules"]
    assert changed["instance"]["program_id"] == first["instance"]["program_id"]
    assert kernel_rules(instance.dir) == map_entries(new)
    assert observed_rto_us(cgroup) == jiffies_us(300)


def test_value_change_in_a_full_map_replaces_maps(instance, cgroup):
    """Kernels without the 6.13 fix refuse to change a value in a full LPM trie: new maps instead,
    on every kernel (this one has the fix; tests/kernels runs it on older ones)."""
    first = apply(instance.params(rules=FULL))
    assert kernel_rules(instance.dir) == map_entries(FULL)
    changed = apply(instance.params(rules=FULL_CHANGED))
    assert [step for step in changed["actions"] if step.startswith(NEW_MAPS_STEP)], changed["actions"]
    assert kernel_rules(instance.dir) == map_entries(FULL_CHANGED)
    assert cgroup_program_ids(cgroup) == [changed["instance"]["program_id"]] != [first["instance"]["program_id"]]
    assert observed_rto_us(cgroup) == jiffies_us(300)
    assert apply(instance.params(rules=FULL_CHANGED))["changed"] is False


def test_more_rules_than_the_map_holds_touch_nothing(instance, cgroup):
    first = apply(instance.params(rules=FULL))
    pins = sorted(os.listdir(instance.dir))
    too_many = [*FULL, {"dest": "192.168.0.0/16", "rto_ms": 50}]
    returncode, result, _err = reconcile_run.run(instance.params(rules=too_many))
    assert returncode == 1
    assert result["error"].startswith("1025 rules given; the program's rules map holds at most 1024")
    assert kernel_rules(instance.dir) == map_entries(FULL)
    assert sorted(os.listdir(instance.dir)) == pins
    assert cgroup_program_ids(cgroup) == [first["instance"]["program_id"]]


def kernel_state(instance, cgroup):
    """What a failed run must leave as it found: pins, the attached program, the rules."""
    return dict(
        pins=sorted(os.listdir(instance.dir)),
        attached=cgroup_program_ids(cgroup),
        prog=bpftool("prog", "show", "pinned", os.path.join(instance.dir, "prog"))["id"],
        rules=kernel_rules(instance.dir),
        rto_us=observed_rto_us(cgroup),
    )


# A value change of every rule (fits in place: the live maps are rewritten) and the 600 -> 600 swap
# (new maps and program), with the step boundaries each passes.
IN_PLACE_POINTS = ["hit_counter_reset", "first_rule_updated", "config_updated", "first_rule_deleted"]
NEW_MAPS_POINTS = [
    "maps_created",
    "first_rule_written",
    "maps_filled",
    "meta_created",
    "first_map_pinned",
    "maps_pinned",
    "program_loaded",
    "program_pinned",
    "attached",
    "first_pin_renamed",
    "pins_renamed",
]
FAILURES = (
    [("in_place", point, dict()) for point in IN_PLACE_POINTS]
    + [("new_maps", point, dict()) for point in NEW_MAPS_POINTS]
    + [("new_maps", point, dict(_legacy_attach=True)) for point in NEW_MAPS_POINTS]
)


@pytest.mark.parametrize(
    "change,point,mode",
    FAILURES,
    ids=["%s-%s%s" % (change, point, "-legacy" if mode else "") for change, point, mode in FAILURES],
)
def test_failed_change_leaves_the_previous_rules(instance, cgroup, change, point, mode):
    old = OLD_600
    if change == "new_maps":
        new = NEW_600
    else:  # other values, other hit slots, a new rule, half of the old ones gone
        new = [{"dest": "192.168.0.0/16", "rto_ms": 70}, dict(old[0], rto_ms=300)]
        new += [dict(rule, rto_ms=rule["rto_ms"] + 100) for rule in old[1:300]]
    apply(instance.params(rules=old, rto_ms=400, **mode))
    before = kernel_state(instance, cgroup)

    returncode, result, err = reconcile_run.run(instance.params(rules=new, rto_ms=500, **mode), fail_at=point)
    assert returncode == 1, (result, err)
    assert result["error"] == (
        "[Errno 5] failure injected at step %s (TCP_RTO_FAIL_AT). This run's changes were undone: the "
        "instance is as it was before the run." % point
    )
    assert kernel_state(instance, cgroup) == before

    applied = apply(instance.params(rules=new, rto_ms=500, **mode))
    assert kernel_rules(instance.dir) == map_entries(new)
    assert applied["verification"]["ok"] is True
