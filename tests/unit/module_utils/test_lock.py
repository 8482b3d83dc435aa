"""The per-instance lock on its own (tests/integration/test_concurrency.py runs it with the module)."""

import os
import stat

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import lock


def test_lock_file_names():
    assert lock.lock_path("dc", "/sys/fs/bpf/tcp_rto") == "/run/tcp_rto/dc.lock"
    assert lock.lock_path("dc", "/sys/fs/bpf/tcp_rto/") == "/run/tcp_rto/dc.lock"
    assert lock.lock_path("dc", "//sys/fs/bpf/tcp_rto") == "/run/tcp_rto/dc.lock"
    other = lock.lock_path("dc", "/run/other/tcp_rto")
    assert other.startswith("/run/tcp_rto/dc@") and other.endswith(".lock")
    assert other != lock.lock_path("dc", "/run/third/tcp_rto")


def test_second_holder_is_told_to_retry(tmp_path):
    lock_dir = str(tmp_path / "locks")
    with lock.InstanceLock("dc", "/p", timeout=0, lock_dir=lock_dir) as held:
        assert stat.S_IMODE(os.stat(held.path).st_mode) == 0o600
        with pytest.raises(lock.LockedError, match=r"locked by another run \(pid %d, .*retry" % os.getpid()):
            lock.InstanceLock("dc", "/p", timeout=0, lock_dir=lock_dir).__enter__()
        with lock.InstanceLock("other", "/p", timeout=0, lock_dir=lock_dir):
            pass  # another instance does not wait
    with lock.InstanceLock("dc", "/p", timeout=0, lock_dir=lock_dir):
        pass  # released


def test_spellings_of_one_pin_dir_take_one_lock(tmp_path):
    lock_dir = str(tmp_path / "locks")
    pin_dir = tmp_path / "bpf" / "tcp_rto"
    pin_dir.mkdir(parents=True)
    os.symlink(str(tmp_path / "bpf"), str(tmp_path / "bpf_link"))
    spellings = [
        str(pin_dir) + "/",
        "/" + str(pin_dir),  # a leading // is a path of its own to normpath (POSIX)
        str(tmp_path) + "//bpf/./tcp_rto",
        str(tmp_path / "bpf_link" / "tcp_rto"),
        str(tmp_path / "bpf_link" / ".." / "bpf" / "tcp_rto"),
    ]
    with lock.InstanceLock("dc", str(pin_dir), timeout=0, lock_dir=lock_dir):
        for spelling in spellings:
            with pytest.raises(lock.LockedError, match="the instance dc is locked by another run"):
                lock.InstanceLock("dc", spelling, timeout=0, lock_dir=lock_dir).__enter__()
    assert len(os.listdir(lock_dir)) == 1


def test_remove_file_drops_the_lock_file(tmp_path):
    lock_dir = str(tmp_path / "locks")
    with lock.InstanceLock("dc", "/p", timeout=0, lock_dir=lock_dir) as held:
        held.remove_file()
    assert os.listdir(lock_dir) == []
    with lock.InstanceLock("dc", "/p", timeout=0, lock_dir=lock_dir) as again:
        assert os.path.exists(again.path)


def test_symlinked_lock_file_is_refused(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    target = tmp_path / "elsewhere"
    os.symlink(str(target), lock.lock_path("dc", "/p", str(lock_dir)))
    with pytest.raises(lock.LockedError, match="symlink"):
        lock.InstanceLock("dc", "/p", timeout=0, lock_dir=str(lock_dir)).__enter__()
    assert not target.exists()


def test_symlinked_lock_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(str(real), str(tmp_path / "locks"))
    with pytest.raises(lock.LockedError, match="not a directory"):
        lock.InstanceLock("dc", "/p", timeout=0, lock_dir=str(tmp_path / "locks")).__enter__()
    assert os.listdir(str(real)) == []
