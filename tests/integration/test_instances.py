"""Several instances on one host, rules merged from inventory groups, rollback several changes back
and the role's phase tags, through the collection's rollout and rollback playbooks against this
machine (the fleet of test_fleet.py, one or two of its hosts). Checked against the kernel."""

import json
import os

import pytest
from test_fleet import Fleet

from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import observed_rto_us

pytestmark = pytest.mark.kernel


@pytest.fixture
def fleet(playbook, cgroup, bpffs, tmp_path):
    return Fleet(playbook, cgroup, bpffs, tmp_path)


def child_cgroups(fleet, host, names):
    paths = {}
    for name in names:
        paths[name] = os.path.join(fleet.cgroups[host], name)
        os.mkdir(paths[name])
    return paths


def rto_ms_of(cgroups):
    return {name: observed_rto_us(path) // 1000 for name, path in cgroups.items()}


def instances(cgroups, values, **extra):
    return [
        dict(name=name, cgroup=cgroups[name], rules=[{"dest": "127.0.0.0/8", "rto_ms": values[name]}], **extra)
        for name in sorted(cgroups)
    ]


def rollout_instances(fleet, cgroups, values, hosts="h1", **extra_vars):
    return fleet.play("rollout", tcp_rto_hosts=hosts, tcp_rto_instances=instances(cgroups, values), **extra_vars)


def changed(run):
    return [result["task"] for result in run.results if result.get("changed")]


def files_under(root):
    return sorted(
        os.path.relpath(os.path.join(directory, name), root)
        for directory, _sub, names in os.walk(root)
        for name in names
    )


def test_two_instances_applied_and_rolled_back_together(fleet):
    cgroups = child_cgroups(fleet, "h1", ["dc", "wan"])
    first = rollout_instances(fleet, cgroups, dict(dc=300, wan=200))
    assert first.returncode == 0, first.output
    assert rto_ms_of(cgroups) == dict(dc=300, wan=200)
    assert fleet.etc_files("h1") == ["dc.json", "dc.previous.json", "wan.json", "wan.previous.json"]
    assert all(len(cgroup_program_ids(path)) == 1 for path in cgroups.values())
    assert fleet.rto_ms(["h1"]) == dict(h1=1000)  # the host's own cgroup (tcp_rto_cgroup) is not an instance

    again = rollout_instances(fleet, cgroups, dict(dc=300, wan=200))
    assert again.returncode == 0, again.output
    assert [batch["unchanged"] for batch in again.custom_stats["_run"]["tcp_rto_rollout"]] == [["h1"]]

    second = rollout_instances(fleet, cgroups, dict(dc=240, wan=160))
    assert second.returncode == 0, second.output
    assert rto_ms_of(cgroups) == dict(dc=240, wan=160)

    # a failing health gate puts both instances back to the configuration before this run
    failed = rollout_instances(fleet, cgroups, dict(dc=100, wan=48), tcp_rto_health_command="exit 3")
    assert failed.returncode != 0
    [batch] = failed.custom_stats["_run"]["tcp_rto_rollout"]
    assert batch["failed"] == ["h1"] and batch["rolled_back"] == ["h1"], batch
    assert rto_ms_of(cgroups) == dict(dc=240, wan=160)

    # one rollback takes both back one change, in one run of the runbook: one module run per instance,
    # as a return to configurations needs no health gate
    # (the inventory names the single instance h1: tcp_rto_instances names the instances instead)
    back = fleet.play("rollback", tcp_rto_hosts="h1", tcp_rto_instances=instances(cgroups, dict(dc=1, wan=1)))
    assert back.returncode == 0, back.output
    assert rto_ms_of(cgroups) == dict(dc=300, wan=200)
    applied = [
        result
        for result in back.results
        # not the one-run task, which a run phase by phase skips (roles/tcp_rto/tasks/runbook.yml)
        if result["task"].endswith("Set the initial RTO of each instance")
        and not all(item.get("skipped") for item in result["results"])
    ]
    assert [sorted(item["item"]["name"] for item in result["results"]) for result in applied] == [["dc", "wan"]]
    assert fleet.etc_files("h1") == ["dc.json", "wan.json"]
    fleet.write_inventory({}, named=False)  # no name, no instances: every instance with history
    nothing = fleet.play("rollback", tcp_rto_hosts="h1")
    assert nothing.returncode == 0 and not changed(nothing), nothing.output
    assert "nothing to roll back" in nothing.output

    # removing: every instance of the list (their state comes from tcp_rto_state)
    gone = fleet.play(
        "rollback", tcp_rto_hosts="h1", tcp_rto_state="absent", tcp_rto_instances=instances(cgroups, dict(dc=1, wan=1))
    )
    assert gone.returncode == 0, gone.output
    assert [cgroup_program_ids(path) for path in cgroups.values()] == [[], []]
    assert files_under(fleet.roots["h1"]) == []


def test_instances_need_distinct_names(fleet):
    cgroups = child_cgroups(fleet, "h1", ["dc", "wan"])
    listed = instances(cgroups, dict(dc=300, wan=200))
    listed[1]["name"] = "dc"
    run = fleet.play("rollout", tcp_rto_hosts="h1", tcp_rto_instances=listed)
    assert run.returncode != 0
    assert "each entry of tcp_rto_instances needs a name, and a different one" in run.output, run.output
    assert [cgroup_program_ids(path) for path in cgroups.values()] == [[], []]


def test_instance_with_a_cgroup_does_not_take_the_unit_variable(fleet):
    """cgroup and unit are exclusive: an instance that gives one takes neither from the variables."""
    cgroups = child_cgroups(fleet, "h1", ["dc"])
    run = rollout_instances(fleet, cgroups, dict(dc=300), tcp_rto_unit="api.service", tcp_rto_persistent=False)
    assert run.returncode == 0, run.output
    assert rto_ms_of(cgroups) == dict(dc=300)


def write_groups(fleet, tmp_path, groups):
    """The fleet's inventory, with h1 also in each group of groups ({group: {variable: value}}),
    whose variables come from group_vars/<group>.yml next to the inventory."""
    fleet.write_inventory({})
    with open(fleet.inventory, "a") as handle:
        for group in groups:
            handle.write("[%s]\nh1\n" % group)
    group_vars = tmp_path / "group_vars"
    group_vars.mkdir(exist_ok=True)
    for group, variables in groups.items():
        (group_vars / (group + ".yml")).write_text(json.dumps(variables))


def live_rules(fleet, host, name):
    run = fleet.playbook.run_playbook(
        "netbpf.tcp_rto.report", fleet.inventory, ["-e", json.dumps(dict(tcp_rto_hosts=host))]
    )
    [info] = [result for result in run.results if result["task"] == "Read each host"]
    [instance] = [instance for instance in info["instances"] if instance["name"] == name]
    return {rule["dest"]: rule["rto_ms"] for rule in instance["rules"]}


def test_rules_from_two_groups_merge_in_variable_name_order(fleet, tmp_path):
    """tcp_rto_rules, then tcp_rto_rules__dc (group dc), then tcp_rto_rules__web (group web): the
    later rule for the same dest wins, whatever the groups' inventory order or depth."""
    write_groups(
        fleet,
        tmp_path,
        {
            "web": dict(
                tcp_rto_rules__web=[{"dest": "127.0.0.0/8", "rto_ms": 200}, {"dest": "192.168.0.0/16", "rto_ms": 60}]
            ),
            "dc": dict(
                tcp_rto_rules__dc=[{"dest": "127.0.0.0/8", "rto_ms": 300}, {"dest": "10.0.0.0/8", "rto_ms": 40}]
            ),
        },
    )
    run = fleet.play(
        "rollout",
        tcp_rto_hosts="h1",
        tcp_rto_rules=[{"dest": "127.0.0.0/8", "rto_ms": 500}, {"dest": "172.16.0.0/12", "rto_ms": 80}],
    )
    assert run.returncode == 0, run.output
    assert fleet.rto_ms(["h1"]) == dict(h1=200)
    assert live_rules(fleet, "h1", "h1") == {
        "127.0.0.0/8": 200,
        "172.16.0.0/12": 80,
        "10.0.0.0/8": 40,
        "192.168.0.0/16": 60,
    }

    # an instance of tcp_rto_instances takes group rules only through its rules_vars
    cgroups = child_cgroups(fleet, "h1", ["dc", "plain"])
    listed = [
        dict(name="dc", cgroup=cgroups["dc"], rules_vars="^tcp_rto_rules__dc$"),
        dict(name="plain", cgroup=cgroups["plain"], rules=[{"dest": "127.0.0.0/8", "rto_ms": 160}]),
    ]
    run = fleet.play("rollout", tcp_rto_hosts="h1", tcp_rto_instances=listed)
    assert run.returncode == 0, run.output
    assert rto_ms_of(cgroups) == dict(dc=300, plain=160)
    assert live_rules(fleet, "h1", "dc") == {"127.0.0.0/8": 300, "10.0.0.0/8": 40}
    assert live_rules(fleet, "h1", "plain") == {"127.0.0.0/8": 160}


def test_rollback_two_steps(fleet):
    steps = dict(tcp_rto_rollback_steps=2, tcp_rto_hosts="h1")
    for rto_ms in (300, 200, 160):
        run = fleet.rollout(rto_ms, **steps)
        assert run.returncode == 0, run.output
    assert fleet.etc_files("h1") == ["h1.json", "h1.previous.2.json", "h1.previous.json"]
    for expected, files in ((200, ["h1.json", "h1.previous.json"]), (300, ["h1.json"])):
        back = fleet.play("rollback", **steps)
        assert back.returncode == 0, back.output
        assert fleet.rto_ms(["h1"]) == dict(h1=expected)
        assert fleet.etc_files("h1") == files
    # two steps kept: the record of the first rollout (no instance) was dropped by the third
    nothing = fleet.play("rollback", **steps)
    assert nothing.returncode == 0 and not changed(nothing), nothing.output
    assert fleet.rto_ms(["h1"]) == dict(h1=300)


def test_fewer_steps_drop_the_older_records(fleet):
    """A host that kept two steps and is then run with the default (1) keeps one record."""
    for rto_ms, steps in ((300, 2), (200, 2), (160, 1)):
        run = fleet.rollout(rto_ms, tcp_rto_hosts="h1", tcp_rto_rollback_steps=steps)
        assert run.returncode == 0, run.output
    assert fleet.etc_files("h1") == ["h1.json", "h1.previous.json"]
    back = fleet.play("rollback", tcp_rto_hosts="h1")
    assert back.returncode == 0, back.output
    assert fleet.rto_ms(["h1"]) == dict(h1=200)
    assert fleet.etc_files("h1") == ["h1.json"]


def test_phase_tags(fleet):
    preflight = fleet.rollout(300, tcp_rto_hosts="h1", extra_args=["--tags", "preflight"])
    assert preflight.returncode == 0, preflight.output
    assert "Read whether the host can run the program" in preflight.output
    assert not changed(preflight), preflight.output
    assert fleet.program_ids()["h1"] == [] and files_under(fleet.roots["h1"]) == []

    no_persist = fleet.rollout(300, tcp_rto_hosts="h1", extra_args=["--skip-tags", "persist"])
    assert no_persist.returncode == 0, no_persist.output
    assert fleet.rto_ms(["h1"]) == dict(h1=300)
    assert files_under(fleet.roots["h1"]) == []  # no boot record, unit or history
    assert not os.path.exists(os.path.join(fleet.roots["h1"], "etc", "systemd"))

    persist = fleet.rollout(300, tcp_rto_hosts="h1", extra_args=["--tags", "persist"])
    assert persist.returncode == 0, persist.output
    assert "h1.json" in fleet.etc_files("h1")


def test_rollback_steps_below_one_are_refused(fleet):
    run = fleet.rollout(300, tcp_rto_hosts="h1", tcp_rto_rollback_steps=0)
    assert run.returncode != 0
    assert "tcp_rto_rollback_steps must be 1 or more" in run.output, run.output
    assert fleet.program_ids()["h1"] == [] and files_under(fleet.roots["h1"]) == []


def applied_settings(run):
    """{name: what a rollback must put back besides the values} from the module results of the run's
    last "Set the initial RTO" task: the auto settings, each rule's syn_give_up_s deadline and the
    soonest of the instance (the default's, where it gives up first)."""
    [*_earlier, last] = [
        result for result in run.results if result["task"].endswith("Set the initial RTO of each instance")
    ]
    return {
        item["item"]["name"]: dict(
            auto=item["instance"]["auto"],
            give_up={rule["dest"]: rule["syn_give_up_s"] for rule in item["instance"]["rules"]},
            soonest_give_up=item["syn_give_up_s"],
        )
        for item in last["results"]
    }


@pytest.mark.parametrize(
    "gate",
    [{}, dict(tcp_rto_health_command="true")],
    ids=["one-run", "phase-by-phase"],  # the history record from the module, or from preflight's info
)
def test_rollback_puts_back_the_auto_settings_and_give_up_deadlines(fleet, gate):
    """A rollback takes an instance back to all of its configuration: the auto_* settings and the
    syn_give_up_s of the instance and of each rule, not only the values (issue 14; the history
    record held rules and rto_ms only, and the role applied its current auto variables)."""
    cgroups = child_cgroups(fleet, "h1", ["learn", "fixed"])

    def listed(min_ms, rule_give_up_s, instance_give_up_s):
        return [
            dict(
                name="learn",
                cgroup=cgroups["learn"],
                rules=[
                    {"dest": "127.0.0.0/8", "rto_ms": "auto"},
                    {"dest": "10.0.0.0/8", "rto_ms": 200, "syn_give_up_s": rule_give_up_s},
                ],
                auto_min_ms=min_ms,
                auto_max_ms=800,
            ),
            dict(name="fixed", cgroup=cgroups["fixed"], rto_ms=300, syn_give_up_s=instance_give_up_s),
        ]

    first = fleet.play("rollout", tcp_rto_hosts="h1", tcp_rto_instances=listed(100, 3, 5), **gate)
    assert first.returncode == 0, first.output
    before = applied_settings(first)
    assert before["learn"]["auto"]["min_ms"] == 100 and before["learn"]["give_up"]["10.0.0.0/8"] >= 3
    second = fleet.play("rollout", tcp_rto_hosts="h1", tcp_rto_instances=listed(200, 6, 10), **gate)
    assert second.returncode == 0, second.output
    assert applied_settings(second) != before

    # the rollback play names the instances only: all the rest comes from the history records
    names = [dict(name="learn"), dict(name="fixed")]
    back = fleet.play("rollback", tcp_rto_hosts="h1", tcp_rto_instances=names)
    assert back.returncode == 0, back.output
    assert applied_settings(back) == before
    again = fleet.play("rollout", tcp_rto_hosts="h1", tcp_rto_instances=listed(100, 3, 5), **gate)
    assert again.returncode == 0 and not changed(again), again.output
