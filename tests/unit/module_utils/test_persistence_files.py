"""persistence.py's files under a test root, in this process: every file is synced before it is
renamed into place and its directory after, and the persistence lock keeps the last instance's
remove from taking the shared files while another instance installs (deterministic interleavings
at fault points, one run in a thread). tests/integration/test_persistence.py runs them with the
module and a real unit."""

import hashlib
import os
import sys
import threading

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import fault, lock, persistence

OBJECT = b"\x7fELF stand-in: persistence copies the object without reading it"


def params(name):
    return dict(
        name=name,
        cgroup="/sys/fs/cgroup/unified/tcp_rto_test",
        rules=[{"dest": "10.0.0.0/8", "rto_ms": 200}],
        rto_ms=None,
        direction="both",
        pin_dir="/sys/fs/bpf/tcp_rto",
        mount_bpffs=True,
        hz=None,
        verify=True,
        force_legacy_attach=False,
    )


@pytest.fixture
def root(tmp_path):
    path = os.path.realpath(str(tmp_path / "root"))
    os.mkdir(path)
    yield path
    assert not os.path.exists(lock.persistence_lock_path(path))  # released with its file


@pytest.fixture
def object_path(tmp_path):
    path = str(tmp_path / "tcp_initial_rto.bpf.o")
    with open(path, "wb") as handle:
        handle.write(OBJECT)
    return path


def install(name, root, object_path):
    return persistence.install(
        params(name), object_path, hashlib.sha256(OBJECT).hexdigest(), root=root, python=sys.executable
    )


def shared_files(layout):
    code = [os.path.join(layout.code_dir, module + ".py") for module in persistence.CODE_FILES]
    return [*code, layout.script, layout.unit]


def assert_installed_alone(name, root):
    """name's record reads back (its object matches), every shared file is there, nothing else is recorded."""
    layout = persistence.Layout(root)
    assert layout.recorded_names() == [name]
    assert persistence.read_record(name, root)["name"] == name
    assert [path for path in shared_files(layout) if not os.path.isfile(path)] == []
    assert os.path.islink(layout.wants_link(name))


# ---------------------------------------------------------------- fsync before rename


def test_files_are_synced_before_rename_and_their_directory_after(root, object_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink("/proc/self/fd/%d" % fd)))
        real_fsync(fd)

    def rename(source, destination, *args, **kwargs):
        events.append(("rename", source, destination))
        real_rename(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    install("dc", root, object_path)

    layout = persistence.Layout(root)
    renames = [(index, event) for index, event in enumerate(events) if event[0] == "rename"]
    assert sorted(event[2] for _index, event in renames) == sorted(
        [*shared_files(layout), layout.record("dc"), layout.object("dc")]
    )
    for index, (_rename, source, destination) in renames:
        assert ("fsync", source) in events[:index], destination
        assert ("fsync", os.path.dirname(destination)) in events[index + 1 :], destination


# ---------------------------------------------------------------- install and remove at once


def interleave(monkeypatch, at_point, first, second):
    """Run first(); when it reaches the fault point at_point, run second() in a thread, and let
    first go on once second has finished or is waiting for a lock. -> second's result."""
    waiting = threading.Event()
    outcome = {}
    real_try_lock = lock.FileLock._try_lock

    def try_lock(self):
        fd = real_try_lock(self)
        if fd is None:
            waiting.set()
        return fd

    def run_second():
        try:
            outcome["result"] = second()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc
        finally:
            waiting.set()

    threads = []
    real_point = fault.point

    def point(name):
        real_point(name)
        if name == at_point and not threads:
            threads.append(threading.Thread(target=run_second))
            threads[0].start()
            assert waiting.wait(60), "the second run neither finished nor waited for a lock"

    monkeypatch.setattr(lock.FileLock, "_try_lock", try_lock)
    monkeypatch.setattr(fault, "point", point)
    first()
    assert threads, "first never reached %s" % at_point
    threads[0].join(120)
    assert not threads[0].is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_remove_of_the_last_instance_keeps_what_an_install_copied(root, object_path, monkeypatch):
    """A's install has copied the shared code but not yet written its record when B, the only
    recorded instance, is removed: B's remove waits, then sees A's record and keeps the shared files."""
    install("b", root, object_path)
    removed = interleave(
        monkeypatch,
        "persist_code_copied",
        lambda: install("a", root, object_path),
        lambda: persistence.remove("b", root),
    )
    assert_installed_alone("a", root)
    assert "remove %s" % persistence.Layout(root).lib_dir not in removed


def test_install_waits_for_the_last_remove(root, object_path, monkeypatch):
    """B, the only recorded instance, is being removed (its unit is gone, the code not yet) when A
    installs: A's install waits, then puts back every shared file."""
    install("b", root, object_path)
    interleave(
        monkeypatch,
        "unpersist_unit_removed",
        lambda: persistence.remove("b", root),
        lambda: install("a", root, object_path),
    )
    assert_installed_alone("a", root)


def test_persistence_lock_names():
    assert lock.persistence_lock_path("/") == "/run/tcp_rto/persistence.lock"
    assert lock.persistence_lock_path("//") == "/run/tcp_rto/persistence.lock"
    assert lock.persistence_lock_path("/tmp/root/") == lock.persistence_lock_path("/tmp/root")
    assert lock.persistence_lock_path("/tmp/root").startswith("/run/tcp_rto/persistence@")
