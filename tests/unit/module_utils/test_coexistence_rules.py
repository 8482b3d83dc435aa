"""coexistence: which foreign sock_ops programs block an attach, where they run relative to ours,
and which explain a failed check, on a stand-in kernel: the cgroup tree is temporary directories,
and the attachments and effective arrays the kernel would report are tables. No kernel needed;
tests/integration/test_coexistence.py checks the same rules against the kernel's own behaviour."""

import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import cgroups, coexistence, uapi

EXCLUSIVE, OVERRIDE, MULTI = 0, uapi.BPF_F_ALLOW_OVERRIDE, uapi.BPF_F_ALLOW_MULTI
OURS = 10


class FakeKernel:
    """Attachments {cgroup: (flags, [ids])}, effective arrays {cgroup: [ids]}, bpf_links {(cgroup, id)}."""

    def __init__(self, root):
        self.root = root
        self.attached, self.effective, self.links = {}, {}, set()

    def cgroup(self, *names):
        path = os.path.join(self.root, *names)
        os.makedirs(path, exist_ok=True)
        return path

    def query(self, cgroup, effective=False):
        if effective:
            return 0, self.effective.get(cgroup, [])
        return self.attached.get(cgroup, (0, []))


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    fake = FakeKernel(str(tmp_path))
    monkeypatch.setattr(coexistence, "_query", fake.query)
    monkeypatch.setattr(coexistence, "_program_names", lambda prog_id: ("prog%d" % prog_id, "tag%d" % prog_id))
    monkeypatch.setattr(coexistence, "_sock_ops_links", lambda: {(cgroups.cgroup_id(c), i) for c, i in fake.links})
    monkeypatch.setattr(cgroups, "cgroup_id", hash)
    return fake


# ---------------------------------------------------------------- attach blockers


@pytest.mark.parametrize("flags, blocks", [(EXCLUSIVE, True), (OVERRIDE, True), (MULTI, False)])
def test_programs_on_the_cgroup_itself_block_unless_multi(kernel, flags, blocks):
    target = kernel.cgroup("a")
    kernel.attached[target] = (flags, [1])
    blockers = coexistence.attach_blockers(target, kernel.root)
    assert blockers == (
        [dict(id=1, name="prog1", cgroup=target, attach=coexistence._attach_word(flags))] if blocks else []
    )


@pytest.mark.parametrize("flags, blocks", [(EXCLUSIVE, True), (OVERRIDE, False), (MULTI, False)])
def test_the_nearest_ancestor_with_programs_blocks_only_when_exclusive(kernel, flags, blocks):
    target = kernel.cgroup("a", "b", "c")
    kernel.attached[os.path.dirname(target)] = (flags, [2])
    kernel.attached[kernel.root] = (EXCLUSIVE, [3])  # further up: the nearer one decides
    blockers = coexistence.attach_blockers(target, kernel.root)
    assert [blocker["id"] for blocker in blockers] == ([2] if blocks else [])


def test_an_exclusive_ancestor_above_empty_cgroups_blocks(kernel):
    target = kernel.cgroup("a", "b", "c")
    kernel.attached[os.path.join(kernel.root, "a")] = (EXCLUSIVE, [4])
    [blocker] = coexistence.attach_blockers(target, kernel.root)
    assert blocker == dict(id=4, name="prog4", cgroup=os.path.join(kernel.root, "a"), attach="exclusive")


def test_blockers_are_described_with_what_to_do(kernel):
    target = kernel.cgroup("a", "b")
    message = coexistence.describe_blockers(
        target,
        [
            dict(id=1, name="", cgroup=target, attach="exclusive"),
            dict(id=2, name="fw", cgroup=kernel.root, attach="override"),
        ],
    )
    assert "program 1 (no name) is attached exclusive to it; " in message
    assert "program 2 (fw) is attached override to the ancestor %s." % kernel.root in message
    assert "tcp_rto never detaches programs it did not attach and changed nothing" in message
    assert "'multi' (BPF_F_ALLOW_MULTI) or as a bpf_link, or choose another cgroup" in message


# ---------------------------------------------------------------- survey


def test_survey_finds_programs_around_ours_and_where_they_run(kernel):
    target = kernel.cgroup("a", "b")
    parent = os.path.dirname(target)
    child = kernel.cgroup("a", "b", "c")
    other_instance = 11
    kernel.attached[target] = (MULTI, [5, OURS, 6, other_instance])
    kernel.attached[parent] = (MULTI, [7])
    kernel.attached[kernel.root] = (OVERRIDE, [8])  # left out of the effective array
    kernel.attached[child] = (MULTI, [9])
    kernel.effective[target] = [5, OURS, 6, other_instance, 7]
    kernel.effective[child] = [9, 5, OURS, 6, other_instance, 7]
    kernel.links.add((target, 6))

    found = coexistence.survey(target, kernel.root, [OURS], instance_ids=[other_instance])
    assert [(p["id"], p["relation"], p["attach"], p["runs"]) for p in found] == [
        (5, "same", "multi", "before"),
        (6, "same", "link", "after"),
        (7, "ancestor", "multi", "after"),
        (8, "ancestor", "override", "not"),
        (9, "descendant", "multi", "before"),
    ]
    assert found[0]["name"] == "prog5" and found[0]["tag"] == "tag5" and found[0]["cgroup"] == target


def test_survey_without_ours_attached_cannot_say_where_they_run(kernel):
    target = kernel.cgroup("a")
    kernel.attached[target] = (MULTI, [5])
    kernel.effective[target] = [5]
    [program] = coexistence.survey(target, kernel.root, [OURS])
    assert program["runs"] is None


def test_descendants_to_probe_once_each_and_bounded():
    programs = [dict(relation="same", cgroup="/cg")] + [
        dict(relation="descendant", cgroup="/cg/d%d" % (index // 2)) for index in range(40)
    ]
    probed = coexistence.descendants_to_probe(programs)
    assert probed == ["/cg/d%d" % index for index in range(coexistence.MAX_DESCENDANT_PROBES)]


# ---------------------------------------------------------------- conflicts


def program(prog_id, cgroup, relation="same"):
    return dict(id=prog_id, name="prog%d" % prog_id, tag="", cgroup=cgroup, relation=relation, attach="multi")


@pytest.mark.parametrize(
    "order, observed_ms, runs, why",
    [
        ([OURS, 5], 1000, "after", "runs after ours for sockets in {cg}: returning 0, or setting the reply to 0"),
        ([OURS, 5], 3000, "after", "runs after ours for sockets in {cg} and overwrites the reply ours set"),
        ([5, OURS], 1000, "before", "runs for sockets in {cg}: returning 0 discards the reply of every program"),
        ([5, OURS], 3000, "before", "runs before ours for sockets in {cg} and sets the reply"),
    ],
)
def test_conflicts_explain_a_failed_check(kernel, order, observed_ms, runs, why):
    target = kernel.cgroup("a")
    kernel.effective[target] = order
    failed = [dict(observed_ms=observed_ms)]
    [conflict] = coexistence.conflicts(failed, [program(5, target)], target, [OURS], default_ms=1000)
    assert conflict["runs"] == runs and conflict["sockets_in"] == target
    assert conflict["why"].startswith(why.format(cg=target)), conflict["why"]
    assert {key: conflict[key] for key in ("id", "name", "cgroup", "relation", "attach")} == {
        key: value for key, value in program(5, target).items() if key != "tag"
    }


def test_conflicts_leave_out_programs_that_do_not_run_for_the_probed_sockets(kernel):
    target = kernel.cgroup("a")
    sibling = kernel.cgroup("s")
    child = kernel.cgroup("a", "c")
    kernel.effective[target] = [OURS, 5]
    kernel.effective[child] = [6, OURS, 5]
    programs = [program(5, target), program(6, child, "descendant"), program(7, sibling), program(8, target)]
    failed = [dict(observed_ms=1000), dict(observed_ms=1000, cgroup=child), dict(observed_ms=1000)]
    found = coexistence.conflicts(failed, programs, target, [OURS], default_ms=1000)
    # 7 is on another cgroup, 8 not in any effective array; a repeated check adds no duplicate
    assert [(c["id"], c["sockets_in"]) for c in found] == [(5, target), (5, child), (6, child)]
