"""Crash safety: a run killed with SIGKILL right after each step boundary the code marks
(plugins/module_utils/fault.py, TCP_RTO_FAULT_AT), in each kind of run that meets it. The next run
converges to the requested state, checked on the kernel with bpftool and a separate TCP_INFO probe,
with no object beyond the instance's; `state: absent` then leaves the kernel inventory, the bpffs
and the persistence root exactly as they were before."""

import ast
import glob
import os
import time

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import fault
from ansible_collections.netbpf.tcp_rto.tests.support import bpf_inventory, reconcile_run, sandbox
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import bpftool, cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz
from ansible_collections.netbpf.tcp_rto.tests.support.paths import MODULE, REPO
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import observed_rto_us

pytestmark = pytest.mark.kernel

HZ = kernel_hz()
SIGKILLED = -9
RULES_A = [{"dest": "127.0.0.0/8", "rto_ms": 200}, {"dest": "10.0.0.0/8", "rto_ms": 300}]
# Against RULES_A: slot 0 counts another network (hit counter reset), 127/8 changes value, 10/8 goes.
RULES_B = [{"dest": "10.1.0.0/16", "rto_ms": 400}, {"dest": "127.0.0.0/8", "rto_ms": 252}]
LEGACY = dict(_legacy_attach=True)
# 600 rules each, only 127.0.0.0/8 in common: together more than the rules map's 1024 entries, so
# the swap takes new maps and a new program.
SWAP_A = [{"dest": "127.0.0.0/8", "rto_ms": 200}] + [
    {"dest": "10.%d.%d.0/24" % divmod(index, 256), "rto_ms": 50} for index in range(599)
]
SWAP_B = [{"dest": "127.0.0.0/8", "rto_ms": 252}] + [
    {"dest": "172.%d.%d.0/24" % (16 + index // 256, index % 256), "rto_ms": 60} for index in range(599)
]

# Each kind of run: the runs before it (options, fault point or None), then the request that is
# killed and then repeated. "cgroup": "other" and "src": "second" stand for a second cgroup and a
# new object version.
SCENARIOS = {
    "create": dict(before=[], request=dict(rules=RULES_A)),
    "create_legacy": dict(before=[], request=dict(rules=RULES_A, **LEGACY)),
    "update": dict(before=[(dict(rules=RULES_A), None)], request=dict(rules=RULES_B, rto_ms=500)),
    "upgrade": dict(before=[(dict(rules=RULES_A), None)], request=dict(rules=RULES_B, src="second")),
    "upgrade_legacy": dict(
        before=[(dict(rules=RULES_A, **LEGACY), None)], request=dict(rules=RULES_B, src="second", **LEGACY)
    ),
    "upgrade_legacy_no_replace": dict(
        before=[(dict(rules=RULES_A, **LEGACY), None)],
        request=dict(rules=RULES_B, src="second", _no_prog_replace=True, **LEGACY),
    ),
    "swap": dict(before=[(dict(rules=SWAP_A), None)], request=dict(rules=SWAP_B)),
    "swap_legacy": dict(before=[(dict(rules=SWAP_A, **LEGACY), None)], request=dict(rules=SWAP_B, **LEGACY)),
    "move": dict(before=[(dict(rules=RULES_A), None)], request=dict(rules=RULES_A, cgroup="other")),
    "move_legacy": dict(
        before=[(dict(rules=RULES_A, **LEGACY), None)], request=dict(rules=RULES_A, cgroup="other", **LEGACY)
    ),
    "link_to_legacy": dict(before=[(dict(rules=RULES_A), None)], request=dict(rules=RULES_A, **LEGACY)),
    # the legacy attachment of a run killed before its commit, left for this run to detach
    "interrupted_legacy": dict(
        before=[(dict(rules=RULES_A, **LEGACY), "attached")], request=dict(rules=RULES_B, **LEGACY)
    ),
    "absent": dict(before=[(dict(rules=RULES_A), None)], request=dict(state="absent")),
    "absent_legacy": dict(before=[(dict(rules=RULES_A, **LEGACY), None)], request=dict(state="absent")),
    "persist": dict(before=[], request=dict(rules=RULES_A, persistent=True)),
    "persist_update": dict(
        before=[(dict(rules=RULES_A, persistent=True), None)], request=dict(rules=RULES_B, persistent=True)
    ),
    "unpersist": dict(before=[(dict(rules=RULES_A, persistent=True), None)], request=dict(state="absent")),
}

# (fault point, scenario): every point at least once, in each kind of run where it means something else.
CASES = [
    ("lock_taken", "create"),
    ("instance_dir_made", "create"),
    ("maps_created", "create"),
    ("maps_created", "upgrade"),
    ("first_rule_written", "create"),
    ("maps_filled", "create"),
    ("maps_filled", "upgrade_legacy"),
    ("maps_filled", "swap"),
    ("hit_counter_reset", "update"),
    ("first_rule_updated", "update"),
    ("config_updated", "update"),
    ("first_rule_deleted", "update"),
    ("meta_created", "create"),
    ("meta_created", "move"),
    ("first_map_pinned", "create"),
    ("first_map_pinned", "upgrade_legacy"),
    ("maps_pinned", "create"),
    ("program_loaded", "create_legacy"),
    ("program_loaded", "upgrade"),
    ("program_pinned", "create_legacy"),
    ("program_pinned", "upgrade_legacy"),
    ("attached", "create"),
    ("attached", "create_legacy"),
    ("attached", "upgrade"),
    ("attached", "upgrade_legacy"),
    ("attached", "upgrade_legacy_no_replace"),
    ("attached", "swap"),
    ("attached", "swap_legacy"),
    ("attached", "move"),
    ("attached", "move_legacy"),
    ("link_pinned", "create"),
    ("link_pinned", "move"),
    ("old_program_detached", "upgrade_legacy_no_replace"),
    ("old_program_detached", "move_legacy"),
    ("stale_link_unpinned", "link_to_legacy"),
    ("first_pin_renamed", "create_legacy"),
    ("first_pin_renamed", "upgrade"),
    ("first_pin_renamed", "upgrade_legacy_no_replace"),
    ("first_pin_renamed", "move_legacy"),
    ("pins_renamed", "upgrade"),
    ("pins_renamed", "move"),
    ("pins_renamed", "link_to_legacy"),
    ("orphans_detached", "interrupted_legacy"),
    ("absent_detached", "absent"),
    ("absent_detached", "absent_legacy"),
    ("absent_first_pin_removed", "absent"),
    ("absent_pins_removed", "absent_legacy"),
    ("converged", "update"),
    ("converged", "absent"),
    ("persist_temp_file_written", "persist"),
    ("persist_temp_file_written", "persist_update"),
    ("persist_object_copied", "persist"),
    ("persist_code_copied", "persist"),
    ("persist_unit_written", "persist"),
    ("persist_record_written", "persist"),
    ("persist_enabled", "persist"),
    ("unpersist_first_file_removed", "unpersist"),
    ("unpersist_unit_removed", "unpersist"),
]


def fault_point_calls():
    """The names every fault.point(...) call in plugins/module_utils passes (a literal, or a
    conditional between literals); None for a call whose name is not written out."""
    names = []
    for path in sorted(glob.glob(os.path.join(REPO, "plugins", "module_utils", "*.py"))):
        with open(path) as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "point"
                and getattr(node.func.value, "id", None) == "fault"
            ):
                argument = node.args[0]
                choices = [argument.body, argument.orelse] if isinstance(argument, ast.IfExp) else [argument]
                for choice in choices:
                    literal = isinstance(choice, ast.Constant) and isinstance(choice.value, str)
                    names.append(choice.value if literal else None)
    return names


def test_every_fault_point_in_the_code_is_listed_and_tested():
    in_code = fault_point_calls()
    assert None not in in_code, "every fault.point() call names its point literally"
    assert sorted(set(in_code)) == sorted(fault.POINTS)
    assert sorted({point for point, _scenario in CASES}) == sorted(fault.POINTS)
    assert {scenario for _point, scenario in CASES} == set(SCENARIOS)


def test_an_unlisted_fault_point_is_refused():
    with pytest.raises(ValueError, match="not listed"):
        fault.point("no_such_step")


def files_under(root):
    return sorted(
        os.path.relpath(os.path.join(directory, name), root)
        for directory, _dirs, names in os.walk(root)
        for name in names
    )


def expected_rto_us(request):
    """What a connect() to 127.0.0.1 from the cgroup starts with under request's rules."""
    rules = [rule for rule in request.get("rules", []) if rule["dest"] == "127.0.0.0/8"]
    ms = rules[0]["rto_ms"] if rules else request.get("rto_ms") or 1000
    return -(-ms * HZ // 1000) * (1000000 // HZ)


def instance_objects(instance_dir):
    """{progs, maps, links} ids of the instance, read by bpftool from its pins."""
    prog = bpftool("prog", "show", "pinned", os.path.join(instance_dir, "prog"))
    meta = bpftool("map", "show", "pinned", os.path.join(instance_dir, "meta"))
    links = set()
    if os.path.exists(os.path.join(instance_dir, "link")):
        links.add(bpftool("link", "show", "pinned", os.path.join(instance_dir, "link"))["id"])
    return {"progs": {prog["id"]}, "maps": set(prog["map_ids"]) | {meta["id"]}, "links": links}


NOTHING = {"progs": set(), "maps": set(), "links": set()}


def settle_unaccounted(before, expected, cgroups, bpffs, timeout=5.0):
    """bpf_inventory.unaccounted() once it equals expected (what a killed run held goes after an
    RCU grace period), or the last one after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        now = bpf_inventory.unaccounted(before, cgroups, bpffs)
        if now == expected or time.monotonic() >= deadline:
            return now
        time.sleep(0.05)


@pytest.mark.parametrize("point,scenario", CASES, ids=["%s-%s" % case for case in CASES])
def test_killed_run_is_repaired(point, scenario, cgroup, bpffs, tmp_path, second_object):
    with sandbox.sandbox_cgroup(label="other") as other:
        persist_root = str(tmp_path / "root")
        os.mkdir(persist_root)
        pin_dir = os.path.join(bpffs, "tcp_rto")
        instance_dir = os.path.join(pin_dir, "crash")
        places = {"other": other}

        def params(options):
            options = dict(options)
            options["cgroup"] = places.get(options.get("cgroup"), cgroup)
            if options.get("src") == "second":
                options["src"] = second_object
            return reconcile_run.module_params(
                name="crash", pin_dir=pin_dir, mount_bpffs=False, _persist_root=persist_root, **options
            )

        cgroups = [cgroup, other]
        bpffs_entries = sorted(os.listdir(bpffs))  # a fresh bpffs may show progs.debug, maps.debug
        before = bpf_inventory.steady(cgroups, quiet=0.1, timeout=3)
        for options, killed_at in SCENARIOS[scenario]["before"]:
            returncode, result, err = reconcile_run.run(params(options), fault=killed_at)
            assert returncode == (SIGKILLED if killed_at else 0), (result, err)
        request = SCENARIOS[scenario]["request"]

        returncode, result, err = reconcile_run.run(params(request), fault=point)
        assert returncode == SIGKILLED, "the run was not killed at %s: %s %s" % (point, result, err)

        returncode, result, err = reconcile_run.run(params(request))
        assert returncode == 0, (result, err)
        if request.get("state") != "absent":
            target = places.get(request.get("cgroup"), cgroup)
            assert result["verification"]["ok"] is True
            program_id = result["instance"]["program_id"]
            assert cgroup_program_ids(target) == [program_id]
            assert [cgroup_program_ids(place) for place in cgroups if place != target] == [[]]
            assert observed_rto_us(target) == expected_rto_us(request)
            link_mode = not request.get("_legacy_attach")
            assert sorted(os.listdir(instance_dir)) == bpf_inventory.instance_pins(link=link_mode)
            ours = instance_objects(instance_dir)
            assert ours["progs"] == {program_id}
            assert settle_unaccounted(before, ours, cgroups, bpffs) == ours
            persisted = files_under(persist_root)
            assert not [path for path in persisted if path.endswith(".tmp")]
            if request.get("persistent"):
                assert "etc/tcp_rto/crash.json" in persisted
            else:
                assert persisted == []
            returncode, result, err = reconcile_run.run(params(dict(state="absent")))
            assert returncode == 0, (result, err)

        assert settle_unaccounted(before, NOTHING, cgroups, bpffs) == NOTHING
        assert bpf_inventory.snapshot(cgroups)["cgroups"] == before["cgroups"]
        assert sorted(os.listdir(bpffs)) == bpffs_entries
        assert files_under(persist_root) == []
        returncode, result, err = reconcile_run.run(params(dict(state="absent")))
        assert (returncode, result["changed"]) == (0, False), (result, err)


def test_fault_point_through_ansible(playbook, cgroup, bpffs):
    """The switch as a playbook sets it: `environment:` on the task."""
    args = dict(name="crash", cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, rules=RULES_A)
    killed = playbook.run(
        [{"name": "killed", MODULE: args, "environment": {fault.ENVIRONMENT: "attached"}, "ignore_errors": True}]
    )
    assert killed.results[-1]["status"] == "failed", killed.output
    assert killed.results[-1].get("rc") == 128 + 9, killed.results[-1]  # the shell reports SIGKILL
    assert sorted(os.listdir(os.path.join(args["pin_dir"], "crash"))) == bpf_inventory.instance_pins(
        link=False, prefix="new_"
    )
    repaired = playbook.module(**args)
    assert repaired["changed"] is True, repaired["_output"]
    assert repaired["actions"][0].startswith("remove what an interrupted run left (new_")
    assert cgroup_program_ids(cgroup) == [repaired["instance"]["program_id"]]
    assert observed_rto_us(cgroup) == expected_rto_us(args)
    assert playbook.module(state="absent", **args)["changed"] is True
