# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probe's process inside a cgroup: a forked child joins the cgroup (or a temporary leaf below
it, when the cgroup v2 "no internal processes" rule keeps processes out), runs a body there and
talks JSON lines with the parent over a pipe; the caller's own cgroup never changes. The sockets
it makes and the RTO reads are probe's.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import select
import signal
import time

LEAF_PREFIX = "tcp_rto-probe-"


class ProbeError(Exception):
    """The probe could not measure; the message says why."""


def _write_procs(cgroup):
    fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def _leaf_path(cgroup, pid):
    return os.path.join(cgroup, LEAF_PREFIX + str(pid))


def _join_cgroup(cgroup):
    """Move the calling process into cgroup, or into a leaf below it when the cgroup may not hold
    processes (EBUSY: controllers enabled in its subtree_control; EOPNOTSUPP: not a valid domain).
    A leaf inherits the cgroup's effective BPF programs. -> the cgroup joined."""
    try:
        _write_procs(cgroup)
        return cgroup
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EOPNOTSUPP):
            raise
        first = exc
    leaf = _leaf_path(cgroup, os.getpid())
    try:
        os.mkdir(leaf)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise ProbeError("cannot join cgroup %s (%s) nor create a leaf below it: %s" % (cgroup, first, exc))
    try:
        _write_procs(leaf)
    except OSError as exc:
        raise ProbeError("cannot join cgroup %s (%s) nor its temporary leaf %s (%s)" % (cgroup, first, leaf, exc))
    return leaf


def remove_empty_cgroup(path, attempts=100):
    """rmdir a cgroup whose processes were killed; EBUSY while they are still leaving it."""
    for _attempt in range(attempts):
        try:
            os.rmdir(path)
            return
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            if exc.errno != errno.EBUSY:
                raise
        time.sleep(0.01)
    os.rmdir(path)


def _describe(exc):
    if isinstance(exc, ProbeError):
        return str(exc)
    return "%s: %s" % (type(exc).__name__, exc)


class ProbeChild:
    """A forked process inside the cgroup, talking JSON lines over a pipe. The parent reads with a
    deadline; close() kills the child if needed, reaps it and removes its leaf, in every outcome."""

    def __init__(self, cgroup, body, timeout):
        self.cgroup = cgroup
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.buffer = b""
        if not os.path.isfile(os.path.join(cgroup, "cgroup.procs")):
            raise ProbeError("cgroup %s does not exist (no %s/cgroup.procs)" % (cgroup, cgroup))
        if not os.path.isfile(os.path.join(cgroup, "cgroup.controllers")):
            # joining a v1 cgroup would leave the sockets in the caller's v2 cgroup: a wrong answer
            raise ProbeError("%s is not a cgroup v2 directory (no cgroup.controllers)" % cgroup)
        from_child, child_out = os.pipe()
        child_in, to_child = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (from_child, child_out, child_in, to_child):
                os.close(fd)
            raise ProbeError("cannot fork the probe process: %s" % exc)
        if pid == 0:  # child: never returns
            try:
                os.close(from_child)
                os.close(to_child)
                self._child_main(body, child_out, child_in, timeout)
            finally:
                os._exit(0)
        os.close(child_out)
        os.close(child_in)
        self.pid = pid
        self.from_child = from_child
        self.to_child = to_child

    def _child_main(self, body, out_fd, in_fd, timeout):
        def send(message):
            data = (json.dumps(message) + "\n").encode()
            while data:
                data = data[os.write(out_fd, data) :]

        def wait_parent():
            # The parent closes its end when it is done (or dies): EOF ends the wait.
            select.select([in_fd], [], [], timeout)

        try:
            joined = _join_cgroup(self.cgroup)
            body(send, wait_parent, joined)
        except Exception as exc:  # everything goes back to the parent as a message
            try:
                send({"error": "in cgroup %s: %s" % (self.cgroup, _describe(exc))})
            except OSError:
                pass

    def receive(self):
        """The next message of the child, or ProbeError on an error, a timeout or an early exit."""
        while b"\n" not in self.buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise ProbeError("the probe in cgroup %s got no answer within %.1f s" % (self.cgroup, self.timeout))
            ready = select.select([self.from_child], [], [], remaining)[0]
            if not ready:
                continue
            chunk = os.read(self.from_child, 65536)
            if not chunk:
                raise ProbeError("the probe process in cgroup %s exited without an answer" % self.cgroup)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line.decode())
        if "error" in message:
            raise ProbeError("probe failed %s" % message["error"])
        return message

    def close(self):
        for fd in (self.from_child, self.to_child):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self._reap()
        finally:
            leaf = _leaf_path(self.cgroup, self.pid)
            if os.path.isdir(leaf):
                try:
                    remove_empty_cgroup(leaf)
                except OSError as exc:
                    raise ProbeError(
                        "cannot remove the probe's temporary cgroup %s: %s; remove it with rmdir" % (leaf, exc)
                    )

    def _reap(self):
        """Wait a moment for the child to leave by itself (it sees EOF), then kill it; reap it."""
        end = time.monotonic() + 0.5
        while os.waitpid(self.pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > end:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
                os.waitpid(self.pid, 0)
                return
            time.sleep(0.002)
