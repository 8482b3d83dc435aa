"""Coexistence with sock_ops programs of other teams (issue 6, item 3).

First, how this kernel runs several sock_ops programs for one socket (the facts the module's
conflict analysis relies on), proven with foreign programs alone. Then the matrix: a foreign
program (variant x where it is attached x how x before or after ours) x our operations (apply,
update rules, upgrade to another object, absent). After every operation the foreign attachments
are exactly as before (bpftool, in order, with their flags), and the operation's outcome is the
one the row names:

    ok        the run succeeds, verify passes, no conflicts
    conflict  verify fails, and `conflicts` names the foreign program, its cgroup and why
    refused   the run fails before any change, naming the program in the way; nothing changed

The module's run() is called in this process (as the boot-time restore calls it) to keep the
matrix fast; test_conflict_through_ansible shows the same fields in a task result."""

import collections
import os
import subprocess

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall, desired, plan, probe, reconcile, uapi
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current
from ansible_collections.netbpf.tcp_rto.tests.support import aids, foreign_sockops
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import bpftool
from ansible_collections.netbpf.tcp_rto.tests.support.foreign_sockops import OWN_JIFFIES, ForeignProgram
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz
from ansible_collections.netbpf.tcp_rto.tests.support.reconcile_run import module_params

pytestmark = pytest.mark.kernel

HZ = kernel_hz()


def jiffies_ms(jiffies):
    return desired.jiffies_to_ms(jiffies, HZ)


def observed_jiffies(cgroup):
    return probe.outgoing_rto_us(cgroup) * HZ // 1000000


def attachments(cgroup):
    """(id, flags) of cgroup's own sock_ops programs, in the order the kernel runs them (bpftool)."""
    return [
        (entry["id"], entry.get("attach_flags", ""))
        for entry in bpftool("cgroup", "show", cgroup)
        if entry.get("attach_type") in ("sock_ops", "cgroup_sock_ops")
    ]


# ---------------------------------------------------------------- how the kernel runs them


def test_kernel_runs_own_cgroup_first_in_attach_order_then_ancestors(cgroup, bpffs):
    """The order and the one shared reply on this kernel: the last writer wins."""
    child = os.path.join(cgroup, "child")
    os.mkdir(child)
    first = foreign_sockops.ForeignProgram(bpffs, "own", "first", jiffies=100)
    second = foreign_sockops.ForeignProgram(bpffs, "own", "second", jiffies=300)
    parent = foreign_sockops.ForeignProgram(bpffs, "own", "parent", jiffies=200)
    first.attach(child, "multi")
    parent.attach(cgroup, "multi")
    second.attach(child, "multi")
    with bpf_syscall.closing_fd(os.open(child, os.O_RDONLY)) as fd:
        effective = bpf_syscall.prog_query(fd, uapi.BPF_CGROUP_SOCK_OPS, effective=True)[1]
    assert effective == [first.id, second.id, parent.id]
    assert observed_jiffies(child) == 200  # the ancestor ran last
    for program in (first, second, parent):
        program.detach_all()

    # An ancestor attached with override is left out once the cgroup below has programs of its own.
    parent.attach(cgroup, "override")
    first.attach(child, "multi")
    assert (observed_jiffies(child), observed_jiffies(cgroup)) == (100, 200)
    first.detach_all()
    parent.detach_all()

    # An exclusive ancestor forbids attaching below it; an exclusive descendant does not forbid
    # attaching above it, and the ancestor (multi) still runs after it.
    parent.attach(cgroup, "exclusive")
    with pytest.raises(subprocess.CalledProcessError):
        first.attach(child, "multi")
    parent.detach_all()
    first.attach(child, "exclusive")
    parent.attach(cgroup, "multi")
    assert observed_jiffies(child) == 200

    # A program returning 0 anywhere in the array discards every reply: the kernel default.
    zero = foreign_sockops.ForeignProgram(bpffs, "zero", "zero")
    zero.attach(cgroup, "multi")
    assert observed_jiffies(child) == HZ


def test_preorder_ancestor_runs_before_the_cgroup_below(cgroup, bpffs):
    """BPF_F_PREORDER (6.15+): an ancestor's program runs before the programs of the cgroups below."""
    child = os.path.join(cgroup, "child")
    os.mkdir(child)
    below = foreign_sockops.ForeignProgram(bpffs, "own", "below", jiffies=100)
    above = foreign_sockops.ForeignProgram(bpffs, "own", "above", jiffies=200)
    below.attach(child, "multi")
    try:
        above.attach(cgroup, "multi_preorder")
    except bpf_syscall.BpfError as exc:
        pytest.skip("kernel without BPF_F_PREORDER: %s" % exc)
    with bpf_syscall.closing_fd(os.open(child, os.O_RDONLY)) as fd:
        assert bpf_syscall.prog_query(fd, uapi.BPF_CGROUP_SOCK_OPS, effective=True)[1] == [above.id, below.id]
    assert observed_jiffies(child) == 100


# ---------------------------------------------------------------- the matrix

Row = collections.namedtuple("Row", "variant place mode when ours outcomes")
OPERATIONS = ("apply", "update", "upgrade", "absent")
OK4 = ("ok", "ok", "ok", "ok")
CONFLICT = ("conflict", "conflict", "conflict", "ok")
REFUSED = ("refused", "refused", "refused", "ok")
AFTER_CONFLICT = ("ok", "conflict", "conflict", "ok")

# variant: pass (returns 1, reply untouched) | zero (returns 0) | minus1 (reply = -1) | own (reply = 625)
# place: where the foreign program is, seen from our cgroup; mode: how it is attached;
# when: attached before our first apply, or after it; ours: our attach mode (link, or multi by
# _legacy_attach, tests/support/aids.py); outcomes: of apply, update, upgrade, absent.
MATRIX = {
    "pass-same-multi-before": Row("pass", "same", "multi", "before", "link", OK4),
    "pass-same-link-after": Row("pass", "same", "link", "after", "multi", OK4),
    "zero-same-multi-before": Row("zero", "same", "multi", "before", "link", CONFLICT),
    "minus1-same-multi-before": Row("minus1", "same", "multi", "before", "link", OK4),
    "minus1-same-link-after": Row("minus1", "same", "link", "after", "link", AFTER_CONFLICT),
    "own-same-multi-before": Row("own", "same", "multi", "before", "multi", CONFLICT),
    "own-same-multi-after": Row("own", "same", "multi", "after", "link", AFTER_CONFLICT),
    "pass-same-exclusive-before": Row("pass", "same", "exclusive", "before", "link", REFUSED),
    "pass-same-override-before": Row("pass", "same", "override", "before", "multi", REFUSED),
    "pass-ancestor-exclusive-before": Row("pass", "ancestor", "exclusive", "before", "link", REFUSED),
    "own-ancestor-exclusive-after-link": Row("own", "ancestor", "exclusive", "after", "link", OK4),
    "own-ancestor-exclusive-after-multi": Row(
        "own", "ancestor", "exclusive", "after", "multi", ("ok", "ok", "refused", "ok")
    ),
    "own-ancestor-override-before": Row("own", "ancestor", "override", "before", "link", OK4),
    "own-ancestor-multi-before": Row("own", "ancestor", "multi", "before", "link", CONFLICT),
    "zero-ancestor-link-after": Row("zero", "ancestor", "link", "after", "multi", AFTER_CONFLICT),
    "own-ancestor-preorder-before": Row("own", "ancestor", "multi_preorder", "before", "link", CONFLICT),
    "own-descendant-multi-before": Row("own", "descendant", "multi", "before", "link", CONFLICT),
    "own-descendant-link-after": Row("own", "descendant", "link", "after", "multi", AFTER_CONFLICT),
    "pass-descendant-exclusive-before": Row("pass", "descendant", "exclusive", "before", "link", OK4),
    "minus1-descendant-multi-before": Row("minus1", "descendant", "multi", "before", "link", OK4),
}
# What `conflicts` says about the foreign program for each place and variant.
RUNS = {"same-before": "before", "same-after": "after", "ancestor": "after", "descendant": "before"}


class Scene:
    """Our target cgroup between an ancestor and a descendant, all inside the test's cgroup."""

    def __init__(self, sandbox_cgroup, bpffs, persist_root):
        self.persist_root = persist_root
        self.ancestor = sandbox_cgroup
        self.target = os.path.join(sandbox_cgroup, "target")
        self.descendant = os.path.join(self.target, "descendant")
        os.makedirs(self.descendant)
        self.pin_dir = os.path.join(bpffs, "tcp_rto")

    def cgroup_of(self, place):
        return {"same": self.target, "ancestor": self.ancestor, "descendant": self.descendant}[place]

    def foreign_attachments(self, own_ids):
        return {
            path: [entry for entry in attachments(path) if entry[0] not in own_ids]
            for path in (self.ancestor, self.target, self.descendant)
        }

    def pins(self):
        return sorted(
            os.path.relpath(os.path.join(d, f), self.pin_dir) for d, _dirs, fs in os.walk(self.pin_dir) for f in fs
        )

    def params(self, ours, **changes):
        mine = dict(
            name="coexist",
            cgroup=self.target,
            rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}],
            direction="outgoing",
            pin_dir=self.pin_dir,
            mount_bpffs=False,
            _legacy_attach=ours == "multi",
            _persist_root=self.persist_root,
        )
        mine.update(changes)
        return module_params(**mine)


def run_operation(scene, row, operation, second_object):
    """One of our operations -> (outcome, result or exception)."""
    steps = {
        "apply": {},
        "update": {"rules": [{"dest": "127.0.0.0/8", "rto_ms": 300}]},
        "upgrade": {"rules": [{"dest": "127.0.0.0/8", "rto_ms": 300}], "src": second_object},
        "absent": {"state": "absent"},
    }
    try:
        with aids.applied(scene.params(row.ours, **steps[operation])) as params:
            result = reconcile.run(params)
    except reconcile.VerificationFailed as exc:
        return "conflict", exc.result
    except plan.InstanceError as exc:
        return "refused", exc
    assert operation == "absent" or result["verification"]["ok"] is True, result
    assert result["conflicts"] == []
    return "ok", result


def own_program_ids(scene):
    current = Current(os.path.join(scene.pin_dir, "coexist"))
    try:
        return [current.prog_info.id] if current.prog_info else []
    finally:
        current.close()


@pytest.mark.parametrize("row", list(MATRIX.values()), ids=list(MATRIX))
def test_matrix(cgroup, bpffs, tmp_path, second_object, row):
    scene = Scene(cgroup, bpffs, str(tmp_path))
    foreign = ForeignProgram(bpffs, row.variant, "x")
    foreign_cgroup = scene.cgroup_of(row.place)
    try:
        if row.when == "before":
            foreign.attach(foreign_cgroup, row.mode)
        for operation, expected in zip(OPERATIONS, row.outcomes):
            before = scene.foreign_attachments(own_program_ids(scene))
            pins_before = scene.pins()
            outcome, detail = run_operation(scene, row, operation, second_object)
            assert scene.foreign_attachments(own_program_ids(scene)) == before, operation
            assert outcome == expected, (operation, detail)
            if outcome == "conflict":
                assert_conflict(scene, row, foreign, detail)
            elif outcome == "refused":
                assert "program %d (%s) is attached %s" % (foreign.id, foreign.name, row.mode) in str(detail)
                assert "changed nothing" in str(detail)
                assert scene.pins() == pins_before
            if operation == "apply" and row.when == "after":
                foreign.attach(foreign_cgroup, row.mode)
        assert not os.path.exists(os.path.join(scene.pin_dir, "coexist"))
        assert [entry[0] for entry in attachments(foreign_cgroup)] == [foreign.id]
    finally:
        foreign.detach_all()


def assert_conflict(scene, row, foreign, result):
    position = RUNS.get(row.place) or RUNS["same-" + row.when]
    if row.mode == "multi_preorder":
        position = "before"
    sockets_in = scene.descendant if row.place == "descendant" else scene.target
    assert result["verification"]["ok"] is False
    assert result["conflicts"] == [
        {
            "id": foreign.id,
            "name": foreign.name,
            "cgroup": scene.cgroup_of(row.place),
            "relation": row.place,
            "attach": "multi" if row.mode == "multi_preorder" else row.mode,
            "runs": position,
            "sockets_in": sockets_in,
            "why": result["conflicts"][0]["why"],
        }
    ]
    failed = [check for check in result["verification"]["checks"] if not check["ok"]]
    expected_ms = {"zero": 1000, "minus1": 1000, "own": jiffies_ms(OWN_JIFFIES)}[row.variant]
    assert [check["observed_ms"] for check in failed] == [expected_ms]
    assert [check.get("cgroup", scene.target) for check in failed] == [sockets_in]
    assert position in result["conflicts"][0]["why"] or "returning 0" in result["conflicts"][0]["why"]
    assert result["instance"]["program_id"] is not None  # applied all the same


def test_conflict_through_ansible(playbook, cgroup, bpffs, tmp_path):
    """The task fails with the explanation, and conflicts and foreign_programs reach the result."""
    scene = Scene(cgroup, bpffs, str(tmp_path))
    foreign = ForeignProgram(bpffs, "own", "x")
    foreign.attach(scene.ancestor, "multi")
    try:
        args = scene.params("link")
        args = {key: value for key, value in args.items() if value is not None and key != "src"}
        result = playbook.module(**args)
        assert result["status"] == "failed", result["_output"]
        assert (
            "program %d (%s) attached multi to %s (ancestor cgroup)"
            % (
                foreign.id,
                foreign.name,
                scene.ancestor,
            )
            in result["msg"]
        )
        assert [entry["id"] for entry in result["conflicts"]] == [foreign.id]
        assert [(entry["id"], entry["relation"], entry["runs"]) for entry in result["foreign_programs"]] == [
            (foreign.id, "ancestor", "after")
        ]
        assert playbook.module(**dict(args, state="absent"))["status"] == "ok"
        assert [entry[0] for entry in attachments(scene.ancestor)] == [foreign.id]
    finally:
        foreign.detach_all()


def test_check_mode_refuses_blocked_attach(cgroup, bpffs, tmp_path):
    """Check mode already says that the kernel would refuse: it would not attach either."""
    scene = Scene(cgroup, bpffs, str(tmp_path))
    foreign = ForeignProgram(bpffs, "pass", "x")
    foreign.attach(scene.target, "exclusive")
    try:
        with pytest.raises(plan.InstanceError, match="program %d" % foreign.id):
            with aids.applied(scene.params("link")) as params:
                reconcile.run(params, check_mode=True)
        assert not os.path.exists(scene.pin_dir)
    finally:
        foreign.detach_all()
