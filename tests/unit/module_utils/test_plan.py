"""The plan between what the kernel holds and what the parameters ask for. No kernel needed:
the current state is a stand-in with the attributes plan_present reads."""

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import pins, plan, rto_program
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import desired_state


class FakeObject:
    def __init__(self, sha256="a" * 64):
        self.sha256 = sha256


def desired(rules=(), default=None, direction="both", cgroup="/cg", attach_mode="link", sha256="a" * 64, hz=250):
    return desired_state("t", "/pins", cgroup, hz, list(rules), default, direction, attach_mode, FakeObject(sha256))


class FakeCurrent:
    """The attributes of current.Current that plan_present reads."""

    def __init__(
        self, want, attached=True, intact=True, cgroup=None, attach_mode=None, sha256=None, leftovers=(), lacks=()
    ):
        self.exists = True
        self.missing_pins = []
        self.maps_of_newer_object = list(lacks)
        self.of_earlier_object = bool(lacks)
        self.interrupted_cgroups = []
        self.interrupted_prog_id = None
        self.leftovers = list(leftovers)
        self.program_intact = intact
        self.meta_problem = None
        self.meta = {"object_sha256": sha256 or want.object.sha256}
        self.rules = [(rule, slot) for slot, rule in enumerate(want.rules)]
        self.default_jiffies = want.default_jiffies
        self.default_syn_retries = want.default_syn_retries
        self.default_auto = want.default_auto
        self.auto_config = want.auto_config()
        self.learned_info = None
        self.directions = rto_program.DIRECTIONS[want.direction]
        self.attached = attached
        self.cgroup = cgroup or want.cgroup
        self.attach_mode = attach_mode or want.attach_mode

    def carried_maps(self, _table_size):
        return ()


def test_plan_nothing_to_do():
    want = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 50}], default=500)
    planned = plan.plan_present(want, FakeCurrent(want))
    assert planned.steps == [] and not (planned.load_maps or planned.load_program or planned.attach)


def test_plan_removes_what_a_killed_run_left():
    want = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 50}], default=500)
    planned = plan.plan_present(want, FakeCurrent(want, leftovers=["new_meta", "new_prog"]))
    assert planned.steps == ["remove what an interrupted run left (new_meta, new_prog)"]
    assert not (planned.load_maps or planned.load_program or planned.attach)


def test_an_instance_of_an_earlier_object_is_upgraded_not_repaired():
    want = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 50}])
    held = FakeCurrent(want, intact=False, sha256="0" * 64, lacks=["stats", "syn_rtx_time"])
    planned = plan.plan_present(want, held)
    assert planned.steps == [
        "upgrade the instance from an earlier object (its program has no maps stats, syn_rtx_time)",
        "create maps and load program from object %s" % want.object.sha256[:12],
        "replace the attached program atomically (link)",
    ]
    assert planned.load_maps and planned.attach == plan.ATTACH_UPDATE_LINK


def test_plan_values_only_touch_maps():
    held = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 50}])
    want = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 60}], default=500)
    planned = plan.plan_present(want, FakeCurrent(held))
    assert planned.steps == ["update rules", "update default and direction"]
    assert not (planned.load_maps or planned.load_program or planned.attach)


def test_plan_new_object_replaces_in_place():
    want = desired(sha256="b" * 64)
    planned = plan.plan_present(want, FakeCurrent(want, sha256="a" * 64))
    assert planned.load_maps and planned.load_program and planned.attach == plan.ATTACH_UPDATE_LINK
    assert "replace the attached program atomically (link)" in planned.steps


def test_plan_move_loads_second_program_then_detaches():
    held = desired(cgroup="/old")
    want = desired(cgroup="/new")
    planned = plan.plan_present(want, FakeCurrent(held))
    assert not planned.load_maps and planned.load_program and planned.attach
    assert planned.steps == [
        "load a second copy of the program on the same maps",
        "attach to /new (link)",
        "detach from /old (link)",
    ]


def test_plan_reattaches_same_program_after_drift():
    want = desired()
    planned = plan.plan_present(want, FakeCurrent(want, attached=False))
    assert planned.steps == ["attach to /cg (link)"]
    assert not planned.load_program


def test_plan_fresh_instance():
    want = desired()
    current = FakeCurrent(want, attached=False, intact=False)
    current.exists = False
    planned = plan.plan_present(want, current)
    assert planned.load_maps and planned.load_program and planned.attach
    assert not any(step.startswith("repair") for step in planned.steps)


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
    planned = plan.plan_present(want, FakeCurrent(desired(rules=held)))
    if obstacle is None:
        assert planned.steps == ["update rules"]
        assert not (planned.load_maps or planned.load_program or planned.attach)
    else:
        assert planned.steps[0].startswith("rules do not fit the live rules map (%s" % obstacle)
        assert planned.load_maps and planned.load_program and planned.attach
        assert planned.steps[1:] == [
            "create maps and load program from object aaaaaaaaaaaa",
            "replace the attached program atomically (link)",
        ]


def test_cgroup_search_is_bounded(tmp_path):
    for path in ("a/a1", "a/a2", "b"):
        (tmp_path / path).mkdir(parents=True)
    (tmp_path / "cgroup.procs").write_text("")
    root = str(tmp_path)
    every = [root, *(str(tmp_path / name) for name in ("a", "b", "a/a1", "a/a2"))]
    assert plan._cgroup_tree(root, 5) == (every, True)
    assert plan._cgroup_tree(root, 3) == (every[:3], False)


def test_only_the_instance_pins_are_its_own():
    names = pins.instance_pin_names()
    assert sorted(names) == sorted(
        [
            "prog",
            "rules",
            "config",
            "hits",
            "stats",
            "syn_rtx_time",
            "learned",
            "auto_conn",
            "meta",
            "link",
            "new_prog",
            "new_rules",
            "new_config",
            "new_hits",
            "new_stats",
            "new_syn_rtx_time",
            "new_learned",
            "new_auto_conn",
            "new_meta",
            "new_link",
        ]
    )


def test_plan_says_how_the_new_program_goes_on():
    """In place: a link update, or BPF_F_REPLACE; without BPF_F_REPLACE the new program goes on
    beside the old one, which then comes off: the steps say so, as a real run does it."""
    link = desired(sha256="b" * 64)
    assert plan.plan_present(link, FakeCurrent(link, sha256="a" * 64)).attach == plan.ATTACH_UPDATE_LINK
    multi = desired(sha256="b" * 64, attach_mode="multi")
    replaced = plan.plan_present(multi, FakeCurrent(multi, sha256="a" * 64))
    assert (replaced.attach, replaced.detach_old) == (plan.ATTACH_REPLACE, False)
    assert "replace the attached program atomically (multi)" in replaced.steps
    beside = plan.plan_present(multi, FakeCurrent(multi, sha256="a" * 64), can_replace=False)
    assert (beside.attach, beside.detach_old) == (plan.ATTACH_NEW, True)
    assert beside.steps[-2:] == ["attach to /cg (multi)", "detach from /cg (multi)"]


def test_plan_writes_a_new_record_for_a_new_attachment_only():
    held = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 50}])
    want = desired(rules=[{"dest": "10.0.0.0/8", "rto_ms": 60}])
    assert not plan.plan_present(want, FakeCurrent(held)).new_meta
    assert plan.plan_present(want, FakeCurrent(want, attached=False)).new_meta
    missing_meta = FakeCurrent(want)
    missing_meta.missing_pins = ["meta"]
    assert plan.plan_present(want, missing_meta).new_meta


def test_plan_detaches_what_an_interrupted_run_attached():
    want = desired()
    current = FakeCurrent(want, leftovers=["new_prog"])
    current.interrupted_cgroups, current.interrupted_prog_id = ["/cg"], 42
    planned = plan.plan_present(want, current)
    assert planned.detach_interrupted == ("/cg",)
    assert planned.steps[-1] == "detach program 42 of an interrupted run from /cg (multi)"


def test_plan_refuses_another_instance_and_blocked_attaches():
    want = desired(cgroup="/new")
    with pytest.raises(plan.InstanceError, match="already has the tcp_rto instance other"):
        plan.plan_present(want, FakeCurrent(desired(cgroup="/old")), others=["other"])
    blockers = [{"id": 7, "name": "x", "cgroup": "/new", "attach": "exclusive"}]
    with pytest.raises(plan.InstanceError, match="program 7"):
        plan.plan_present(want, FakeCurrent(desired(cgroup="/old")), blockers=blockers)
    upgraded = desired(sha256="b" * 64)  # a link update attaches nothing anew
    assert plan.plan_present(upgraded, FakeCurrent(upgraded, sha256="a" * 64), blockers=blockers).attach


def test_plan_mounts_bpffs_first():
    want = desired()
    current = FakeCurrent(want, attached=False, intact=False)
    current.exists = False
    planned = plan.plan_present(want, current, mount_bpffs=True)
    assert planned.mount_bpffs and planned.steps[0] == "mount bpffs on /sys/fs/bpf"
