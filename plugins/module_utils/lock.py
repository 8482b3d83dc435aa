# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One run at a time per instance: an flock on /run/tcp_rto/<name>.lock. One persistence
install or remove at a time: an flock on /run/tcp_rto/persistence.lock.

Runs on the same instance (same name and pin_dir) queue up, for at most lock_timeout seconds;
runs on other instances never wait for each other. The kernel drops an flock with its process, so
a killed run never leaves the instance locked. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import hashlib
import os
import stat
import time

LOCK_DIR = "/run/tcp_rto"
DEFAULT_PIN_DIR = "/sys/fs/bpf/tcp_rto"
DEFAULT_TIMEOUT = 60
POLL_SECONDS = 0.05


class LockedError(Exception):
    """Another run holds the instance's lock; the message says to retry."""


def lock_path(name, pin_dir, lock_dir=LOCK_DIR):
    """/run/tcp_rto/<name>.lock; an instance under another pin_dir is another instance and gets
    <name>@<hash of pin_dir>.lock. pin_dir counts by its real path: every spelling of one directory
    (a trailing slash, //, a symlinked parent) is one instance and takes one lock."""
    real = os.path.realpath(pin_dir)
    if real == DEFAULT_PIN_DIR:
        return os.path.join(lock_dir, name + ".lock")
    digest = hashlib.sha256(real.encode("utf-8")).hexdigest()[:16]
    return os.path.join(lock_dir, "%s@%s.lock" % (name, digest))


def _lock_dir(path):
    """Create the lock directory (0755) or check that it is a real directory, not a symlink."""
    try:
        os.mkdir(path, 0o755)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise LockedError("%s is not a directory (a symlink?): remove it so that tcp_rto can lock instances" % path)


def _holder(path):
    """The first line the holder wrote: "pid N"."""
    try:
        with open(path) as handle:
            return handle.readline().strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def persistence_lock_path(root, lock_dir=LOCK_DIR):
    """/run/tcp_rto/persistence.lock for the persistence files under /; another root (tests) gets
    persistence@<hash of its real path>.lock."""
    real = os.path.realpath(root)
    if real == "/":
        return os.path.join(lock_dir, "persistence.lock")
    return os.path.join(lock_dir, "persistence@%s.lock" % hashlib.sha256(real.encode("utf-8")).hexdigest()[:16])


class FileLock:
    """with FileLock(path, what, timeout): the body runs while no other holder of the flock on path
    does; `what` names the locked thing in the error, `timeout_option` the option that sets the
    wait. remove_file() (it is gone) drops the lock file on release. The file holds "pid N" and
    then `details`."""

    def __init__(self, path, what, timeout=DEFAULT_TIMEOUT, details="", timeout_option=None):
        self.path = path
        self.what = what
        self.details = details
        self.timeout_option = timeout_option
        self.lock_dir = os.path.dirname(path)
        self.timeout = timeout
        self.fd = None
        self.remove = False

    def _try_lock(self):
        """-> an fd holding the lock on the file now at self.path, or None when another run holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LockedError("%s is a symlink, which tcp_rto never follows: remove it" % self.path)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder may have removed the file (state absent) after this open: a lock on that
            # unlinked file excludes nobody, so only a lock on the file that is there now counts.
            try:
                if os.lstat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        os.close(fd)
        return None

    def __enter__(self):
        if self.timeout < 0:
            raise LockedError("lock_timeout must be 0 or more seconds, got %s" % self.timeout)
        _lock_dir(self.lock_dir)
        deadline = time.monotonic() + self.timeout
        while True:
            self.fd = self._try_lock()
            if self.fd is not None:
                break
            if time.monotonic() >= deadline:
                raise LockedError(
                    "%s is locked by another run (%s, lock %s), still after %s s%s: retry when that run has finished"
                    % (
                        self.what,
                        _holder(self.path),
                        self.path,
                        self.timeout,
                        " (%s)" % self.timeout_option if self.timeout_option else "",
                    )
                )
            time.sleep(POLL_SECONDS)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, ("pid %d\n%s" % (os.getpid(), self.details)).encode("utf-8"))
        return self

    def remove_file(self):
        self.remove = True

    def __exit__(self, *exc_info):
        try:
            if self.remove:
                os.unlink(self.path)  # still holding the lock: waiters see the inode change and retry
        finally:
            os.close(self.fd)
            self.fd = None


class InstanceLock(FileLock):
    """with InstanceLock(name, pin_dir, timeout): the body runs while no other run of the
    instance does. remove_file() (the instance is gone) drops the lock file on release."""

    def __init__(self, name, pin_dir, timeout=DEFAULT_TIMEOUT, lock_dir=LOCK_DIR):
        super().__init__(
            lock_path(name, pin_dir, lock_dir),
            "the instance %s" % name,
            timeout,
            "pin_dir %s\n" % pin_dir,
            timeout_option="lock_timeout",
        )
        self.name = name
        self.pin_dir = pin_dir


def persistence_lock(root, lock_dir=LOCK_DIR):
    """The lock persistence.install and remove hold: the files instances share (restore code, unit)
    are removed with the last instance, never while another instance installs."""
    return FileLock(
        persistence_lock_path(root, lock_dir),
        "the persistence of tcp_rto instances under %s" % root,
        DEFAULT_TIMEOUT,
        "root %s\n" % root,
    )
