"""Kernel-facing helpers of the kernel-matrix job (guest_job.py): what the kernel holds
(BPF_PROG_QUERY, links, program ids) and what real sockets in a cgroup get (SYN-ACK timers, SYN
retransmits). Runs inside the qemu guests.
"""

import errno
import json
import os
import re
import select
import socket
import struct
import time

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_info, bpf_syscall, probe

RELEASE = os.uname()[2]
VERSION = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", RELEASE).groups())
CONFIG = "/boot/config-" + RELEASE
PIN_DIR = "/sys/fs/bpf/tcp_rto"
TCP_TIMEOUT_INIT_MS = 1000


def config_hz():
    with open(CONFIG) as handle:
        return int(re.search(r"^CONFIG_HZ=(\d+)$", handle.read(), re.M).group(1))


HZ = config_hz()
JIFFY_MS = 1000.0 / HZ
ATTACH = "link" if VERSION >= (5, 7) else "multi"  # cgroup bpf_link: 5.7


class Failed(Exception):
    def __init__(self, why, step=None, result=None):
        super().__init__(why)
        self.step, self.result = step, result


def check(condition, why, step=None, result=None):
    if not condition:
        raise Failed(why, step, result)


def links_of(program):
    """Every bpf_link whose program has the id program."""
    return [info for info in bpf_info.link_infos() if info.prog_id == program]


def program_exists(prog_id, wait_s=2.0):
    """Whether the kernel still has the program; waits for a freed one's id to go (RCU)."""
    end = time.monotonic() + wait_s
    while True:
        try:
            os.close(bpf_info.prog_get_fd_by_id(prog_id))
        except bpf_syscall.BpfError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        if time.monotonic() > end:
            return True
        time.sleep(0.05)


def in_cgroup(cg, body):
    """body() run in a child process inside cg -> what it returned (JSON-able), or Failed."""
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:
        answer = {"error": "no answer"}
        try:
            os.close(from_child)
            with open(os.path.join(cg, "cgroup.procs"), "w") as handle:
                handle.write("0")
            answer = {"value": body()}
        except Exception as exc:  # back to the parent
            answer = {"error": "%s: %s" % (type(exc).__name__, exc)}
        finally:
            os.write(to_parent, json.dumps(answer).encode())
            os._exit(0)
    os.close(to_parent)
    data = b""
    try:
        chunk = os.read(from_child, 65536)
        while chunk:
            data += chunk
            chunk = os.read(from_child, 65536)
    finally:
        os.close(from_child)
        os.waitpid(pid, 0)
    answer = json.loads(data.decode() or "{}")
    if "value" not in answer:
        raise Failed("in cgroup %s: %s" % (cg, answer.get("error", "no answer")))
    return answer["value"]


def synack_timers():
    """The SYN-ACK timer of a request socket of a listener in this process's cgroup: its first
    timeout, and the timeout it is re-armed with when that expires -> (first_ms, second_ms).

    TCP_DEFER_ACCEPT (30 s: five timeouts) drops the client's ACKs, so the request socket stays in
    SYN_RECV and its timer re-arms on each expiry; sock_diag shows the time left.
    """
    listener = socket.socket()
    client = socket.socket()
    try:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client.connect(("127.0.0.1", port))
        client_port = client.getsockname()[1]
        first = last = None
        end = time.monotonic() + 10
        while time.monotonic() < end:
            pending = [
                entry
                for entry in probe._diag_request_sockets(socket.AF_INET, port, client_port)
                if entry[0] == probe.TCP_SYN_RECV
            ]
            if not pending:
                raise Failed("the request socket went away")
            expires = pending[0][2]
            if first is None:
                first = expires
            elif expires > last + 2 * JIFFY_MS:  # re-armed
                return first, expires
            last = expires
            time.sleep(0.002)
        raise Failed("the SYN-ACK timer was not re-armed within 10 s")
    finally:
        client.close()
        listener.close()


def connect_give_up():
    """A connect() whose SYNs are all dropped -> (ms until it fails, SYN retransmits sent). A
    listener with a full accept queue (listen(0) and one queued connection) drops further SYNs."""
    listener, filler, client = socket.socket(), socket.socket(), socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        time.sleep(0.1)  # the filler's ACK reaches the accept queue
        client.setblocking(False)
        started = time.monotonic()
        client.connect_ex(listener.getsockname())
        select.select([], [client], [], 60)
        elapsed = (time.monotonic() - started) * 1000.0
        # read before anything disconnects the socket (a failed blocking connect() resets the
        # counters); struct tcp_info: u32 tcpi_total_retrans at byte 100
        info = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        error = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error != errno.ETIMEDOUT:
            raise Failed("connect() ended with %s, not ETIMEDOUT" % (os.strerror(error) if error else "success"))
        return elapsed, struct.unpack_from("=I", info, 100)[0]
    finally:
        for sock in (client, filler, listener):
            sock.close()


def syn_timers(rto_jiffies, retries, linear):
    """The SYN timer intervals (jiffies) of a connect() that is never answered: the first linear + 1
    are the initial RTO, then it doubles; the connect fails at the expiry after retries + linear
    retransmits."""
    return [rto_jiffies << max(0, expiry - linear) for expiry in range(retries + linear + 1)]


def wheel_granule(jiffies):
    """How late, at most, the timer wheel fires a timer armed that far ahead: it rounds the expiry
    up to its level's granularity (1 jiffy below 63 jiffies ahead, 8 below 504, 64 below 4032)."""
    return 1 if jiffies < 63 else 8 if jiffies < 504 else 64
