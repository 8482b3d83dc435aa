"""The role_targets filter: how the role's variables become the instances of a run."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.netbpf.tcp_rto.plugins.filter.role_targets import role_targets

DEFAULTS = dict(
    state="present",
    cgroup="/sys/fs/cgroup/web",
    unit=None,
    rules=[],
    rto_ms=None,
    direction="both",
    history=True,
    syn_give_up_s=None,
    auto_min_ms=None,
    rules_vars=None,
)
SINGLE = dict(name="default", rules=[dict(dest="10.0.0.0/8", rto_ms=300)], rules_vars="^tcp_rto_rules__.+")


def test_the_single_instance_merges_the_group_rules_by_dest_in_name_order():
    rules_vars = {
        "tcp_rto_rules__b_dc": [dict(dest="10.0.0.0/8", rto_ms=200, syn_give_up_s=5)],
        "tcp_rto_rules__a_wan": [dict(dest="0.0.0.0/0", rto_ms=800)],
        "other_rules": [dict(dest="192.0.2.0/24", rto_ms=100)],
    }
    [target] = role_targets([], SINGLE, DEFAULTS, rules_vars=rules_vars)
    # the instance's own rule keeps its place; the later variable's rule replaces it whole
    assert target["rules"] == [dict(dest="10.0.0.0/8", rto_ms=200, syn_give_up_s=5), dict(dest="0.0.0.0/0", rto_ms=800)]
    assert target["name"] == "default" and target["cgroup"] == "/sys/fs/cgroup/web"


def test_an_instance_with_a_unit_takes_no_cgroup_from_the_defaults():
    instances = [dict(name="api", unit="api.service"), dict(name="dc", rto_ms=200)]
    api, dc = role_targets(instances, SINGLE, DEFAULTS)
    assert (api["unit"], api["cgroup"]) == ("api.service", None)
    assert (dc["cgroup"], dc["rto_ms"], dc["rules"]) == ("/sys/fs/cgroup/web", 200, [])


def test_an_instance_takes_only_the_rules_its_own_pattern_matches():
    rules_vars = {"dc_rules": [dict(dest="10.0.0.0/8", rto_ms=200)], "wan_rules": dict(dest="0.0.0.0/0", rto_ms=900)}
    instances = [dict(name="dc", rules_vars="^dc_"), dict(name="wan", rules_vars="^wan_")]
    dc, wan = role_targets(instances, SINGLE, DEFAULTS, rules_vars=rules_vars)
    assert dc["rules"] == [dict(dest="10.0.0.0/8", rto_ms=200)]
    assert wan["rules"] == [dict(dest="0.0.0.0/0", rto_ms=900)]


def test_history_steps_follow_rollback_steps_and_history():
    targets = role_targets([dict(name="a"), dict(name="b", history="false")], SINGLE, DEFAULTS, rollback_steps="3")
    assert [target["history_steps"] for target in targets] == [3, 0]


def test_a_return_to_previous_takes_the_record_over_the_variables():
    declared = [
        dict(name="dc", cgroup="/sys/fs/cgroup/dc", rules=[dict(dest="10.0.0.0/8", rto_ms=100)], auto_min_ms=20)
    ]
    previous = {"dc": dict(cgroup="/sys/fs/cgroup/dc", rto_ms=300), "gone": dict(state="absent")}
    dc, gone = role_targets(declared, SINGLE, DEFAULTS, previous=previous)
    assert dc["rules"] == [] and dc["rto_ms"] == 300 and dc["auto_min_ms"] == 20 and dc["direction"] == "both"
    assert gone["name"] == "gone" and gone["state"] == "absent" and gone["cgroup"] is None


@pytest.mark.parametrize(
    "instances",
    [[dict(name="a"), dict(name="a")], [dict(name="a"), dict(rto_ms=200)]],
    ids=["same name", "no name"],
)
def test_instances_need_names_of_their_own(instances):
    with pytest.raises(AnsibleFilterError, match="each entry of tcp_rto_instances needs a name, and a different one"):
        role_targets(instances, SINGLE, DEFAULTS)


@pytest.mark.parametrize("steps", [0, "0", "x", None])
def test_rollback_steps_below_one_fail(steps):
    with pytest.raises(AnsibleFilterError, match="tcp_rto_rollback_steps must be 1 or more"):
        role_targets([], SINGLE, DEFAULTS, rollback_steps=steps)
