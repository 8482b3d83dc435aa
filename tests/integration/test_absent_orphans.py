"""`state: absent` leaves no orphan and nothing of others behind, on the real kernel.

Without its meta record (pin deleted or unreadable) the instance does not say where its legacy
(BPF_PROG_ATTACH) attachment is; such an attachment belongs to the cgroup and would run on,
untracked, once the pins are gone. Removal then searches the cgroup tree for the instance's
programs and detaches them, and nothing else. Entries of the instance directory that are not the
instance's pins are left alone, with a warning. Attachments are read with bpftool."""

import os
import subprocess

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_maps, bpf_syscall
from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import bpftool, cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.foreign_sockops import ForeignProgram

pytestmark = pytest.mark.kernel

RULES = [{"dest": "127.0.0.0/8", "rto_ms": 200}]


@pytest.fixture
def place(cgroup, bpffs):
    """The instance "orphan" in a cgroup one level below the test's, next to a foreign program
    attached with BPF_F_ALLOW_MULTI (never ours to detach)."""
    child = os.path.join(cgroup, "child")
    os.mkdir(child)
    foreign = ForeignProgram(bpffs, "pass", "neighbour")
    foreign.attach(child, "multi")

    class Place:
        cgroup = child
        pin_dir = os.path.join(bpffs, "tcp_rto")
        dir = os.path.join(bpffs, "tcp_rto", "orphan")
        neighbour = foreign

        @staticmethod
        def params(**options):
            return reconcile_run.module_params(
                name="orphan", cgroup=child, pin_dir=Place.pin_dir, mount_bpffs=False, **options
            )

    yield Place
    foreign.detach_all()


def run(params, check_mode=False):
    returncode, result, err = reconcile_run.run(dict(params, _check_mode=check_mode))
    assert returncode == 0, (result, err)
    return result


def spoil_meta(instance_dir):
    """Garbage in the meta record, as a damaged or foreign record would read."""
    with bpf_syscall.closing_fd(bpf_syscall.obj_get(os.path.join(instance_dir, "meta"))) as fd:
        bpf_maps.map_update(fd, b"\0" * 4, b"not json".ljust(4096, b"\0"))


DAMAGE = {
    "meta_missing": lambda place: os.unlink(os.path.join(place.dir, "meta")),
    "meta_unreadable": lambda place: spoil_meta(place.dir),
    "meta_and_prog_missing": lambda place: [os.unlink(os.path.join(place.dir, pin)) for pin in ("meta", "prog")],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_absent_finds_the_legacy_attachment_without_the_record(place, damage):
    applied = run(place.params(rules=RULES, _legacy_attach=True))
    ours = applied["instance"]["program_id"]
    assert sorted(cgroup_program_ids(place.cgroup)) == sorted([place.neighbour.id, ours])
    DAMAGE[damage](place)

    planned = run(place.params(state="absent"), check_mode=True)
    assert (
        "detach program %d from %s (multi, found by a search of the cgroup tree)"
        % (
            ours,
            place.cgroup,
        )
        in planned["actions"]
    ), planned["actions"]
    assert sorted(cgroup_program_ids(place.cgroup)) == sorted([place.neighbour.id, ours])

    removed = run(place.params(state="absent"))
    assert removed["actions"] == planned["actions"]
    assert cgroup_program_ids(place.cgroup) == [place.neighbour.id]
    assert not os.path.exists(place.dir)
    assert run(place.params(state="absent"))["changed"] is False


@pytest.mark.parametrize("mode", [dict(), dict(_legacy_attach=True)], ids=["link", "legacy"])
def test_absent_leaves_entries_it_did_not_make(place, mode):
    run(place.params(rules=RULES, **mode))
    notes = os.path.join(place.dir, "notes")
    subprocess.run(
        ["bpftool", "map", "create", notes, "type", "array", "key", "4", "value", "4", "entries", "1", "name", "notes"],
        check=True,
    )
    os.mkdir(os.path.join(place.dir, "other_tool"))
    notes_id = bpftool("map", "show", "pinned", os.path.join(place.dir, "notes"))["id"]

    removed = run(place.params(state="absent"))
    assert removed["changed"] is True
    assert cgroup_program_ids(place.cgroup) == [place.neighbour.id]
    assert sorted(os.listdir(place.dir)) == ["notes", "other_tool"]
    assert bpftool("map", "show", "pinned", os.path.join(place.dir, "notes"))["id"] == notes_id
    warning = (
        "%s holds entries that are not pins of the instance orphan (notes, other_tool): they and the "
        "directory were left as they are; remove them if nothing else uses them" % place.dir
    )
    assert removed["warnings"] == [warning]

    again = run(place.params(state="absent"))
    assert (again["changed"], again["actions"], again["warnings"]) == (False, [], [warning])


def test_absent_without_the_record_of_a_link_instance(place):
    """The bpf_link goes with its pin: nothing to search the cgroups for, nothing left attached."""
    run(place.params(rules=RULES))
    os.unlink(os.path.join(place.dir, "meta"))
    removed = run(place.params(state="absent"))
    assert removed["actions"] == ["remove pins of %s" % place.dir]
    assert cgroup_program_ids(place.cgroup) == [place.neighbour.id]
    assert not os.path.exists(place.dir)


@pytest.mark.slow  # a long scenario of many playbook runs: in tests/run, not in the -m 'not slow' loop
def test_unknown_entries_warning_through_ansible(playbook, place):
    args = dict(name="orphan", cgroup=place.cgroup, pin_dir=place.pin_dir, mount_bpffs=False)
    assert playbook.module(rules=RULES, **args)["changed"] is True
    os.mkdir(os.path.join(place.dir, "other_tool"))
    removed = playbook.module(state="absent", **args)
    assert removed["changed"] is True, removed["_output"]
    assert "not pins of the instance orphan (other_tool)" in removed["_output"]
    assert os.listdir(place.dir) == ["other_tool"]
