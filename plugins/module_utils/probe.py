# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real sockets in a cgroup: the RTO a connection starts with, as the kernel gives it.

outgoing_rto_us(): the initial RTO of a SYN_SENT socket created inside the cgroup (TCP_INFO).
incoming_rto_ms(): the first SYN-ACK timeout of a request socket of a listener inside the cgroup
(the request socket's timer, read through NETLINK_SOCK_DIAG).

A forked child (probe_child) joins the cgroup and makes the sockets there; the caller's own cgroup
never changes. All traffic stays on the loopback. Plain stdlib: the boot-time restore imports it without
Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import errno
import os
import socket
import struct
import time

from ansible_collections.netbpf.tcp_rto.plugins.module_utils.probe_child import ProbeChild, ProbeError

DEFAULT_TIMEOUT = 5.0

TCP_INFO = 11
TCP_DEFER_ACCEPT = 9
TCP_INFO_LEN = 104  # struct tcp_info as of 2.6: every kernel returns at least this much
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_NEW_SYN_RECV = 12
# Linux clock id (uapi, every architecture); Python names it only from 3.13 on. It advances once per
# jiffy, together with the jiffies counter, and clock_getres() gives the tick length.
CLOCK_MONOTONIC_COARSE = 6
INCOMING_ATTEMPTS = 5
OUTGOING_ATTEMPTS = 5

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then struct inet_diag_sockid
_DIAG_REQ = struct.Struct("=BBBBI")
# struct inet_diag_sockid: sport, dport (network order), src[4], dst[4], if, cookie[2]
_DIAG_SOCKID = struct.Struct("!HH16s16s")
_DIAG_SOCKID_TAIL = struct.Struct("=III")
# struct inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue, wqueue, uid, inode
_DIAG_MSG_HEAD = struct.Struct("=BBBB")
_DIAG_MSG_TAIL = struct.Struct("=IIIII")
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF

IncomingRto = collections.namedtuple("IncomingRto", "rto_ms exact resolution_ms jiffy_ms remaining_ms elapsed_ms")
IncomingRto.__doc__ = """The first SYN-ACK timeout of a listener in a cgroup.

rto_ms: the timeout in ms, as the kernel converts jiffies (750 jiffies at HZ 250: 3000).
exact: True when no jiffy tick fell between arming the timer and reading it, so that the timer's
remaining time is the whole timeout (resolution_ms 0). Otherwise rto_ms is remaining_ms + elapsed_ms
rounded to whole jiffies, good to resolution_ms (one jiffy).
jiffy_ms: the tick length (1000 / CONFIG_HZ). remaining_ms: what the request socket's timer had
left; elapsed_ms: from just before connect() until the timer was read."""


def _family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _tcp_info(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_LEN)


def _syn_sent_rto(family, target):
    """A non-blocking connect whose SYN is dropped: -> its tcpi_rto, or None when a retransmit came
    first (an RTO of a jiffy or so and a slow read): the RTO may have changed by then."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        err = sock.connect_ex(target)
        if err not in (errno.EINPROGRESS, errno.EALREADY):
            raise ProbeError("non-blocking connect to %s port %d: %s" % (target[0], target[1], os.strerror(err)))
        info = _tcp_info(sock)
    finally:
        sock.close()
    # struct tcp_info: u8 state, ca_state, retransmits, probes, backoff, ...; u32 rto at byte 8
    state, retransmits, backoff = info[0], info[2], info[4]
    if state != TCP_SYN_SENT:
        raise ProbeError("the probe socket is in TCP state %d, not SYN_SENT: its SYN was answered" % state)
    if retransmits or backoff:
        return None
    return struct.unpack_from("=I", info, 8)[0]


def _outgoing_body(address, timeout):
    def body(send, _wait_parent, joined):
        family = _family(address)
        listener = socket.socket(family, socket.SOCK_STREAM)
        filler = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.bind((address, 0))
            listener.listen(0)  # the accept queue holds one connection
            target = listener.getsockname()[:2]
            filler.settimeout(timeout)
            filler.connect(target)
            # Wait until the server side has queued the filler (tcpi_unacked of a listener is its
            # accept queue length): from then on further SYNs are dropped.
            end = time.monotonic() + timeout
            while struct.unpack_from("=I", _tcp_info(listener), 24)[0] < 1:
                if time.monotonic() > end:
                    raise ProbeError("the listener's accept queue never filled")
                time.sleep(0.001)
            for _attempt in range(OUTGOING_ATTEMPTS):
                rto = _syn_sent_rto(family, target)
                if rto is not None:
                    send({"rto_us": rto, "cgroup": joined})
                    return
            raise ProbeError(
                "the SYN was retransmitted before TCP_INFO could be read, %d times: the "
                "initial RTO is too short to measure this way" % OUTGOING_ATTEMPTS
            )
        finally:
            for sock in (filler, listener):
                sock.close()

    return body


def outgoing_rto_us(cgroup, address="127.0.0.1", timeout=DEFAULT_TIMEOUT):
    """The initial RTO (µs) of a connect() made from inside cgroup: what the program's reply gives
    (reply jiffies * 1e6 / HZ), or 1000000 (TCP_TIMEOUT_INIT) without a program.

    A listener on address (127.0.0.1, or ::1 for IPv6) with a full accept queue drops the SYN of a
    second, non-blocking connect, which stays in SYN_SENT; TCP_INFO.tcpi_rto shows its RTO.
    """
    child = ProbeChild(cgroup, _outgoing_body(address, timeout), timeout)
    try:
        return int(child.receive()["rto_us"])
    finally:
        child.close()


def _incoming_body(address):
    def body(send, wait_parent, joined):
        listener = socket.socket(_family(address), socket.SOCK_STREAM)
        try:
            listener.bind((address, 0))
            # The client's bare ACK is dropped (and only noted) while the defer period runs, so the
            # request socket stays in SYN_RECV with its first SYN-ACK timer armed. With 1 second the
            # first expiry already retransmits the SYN-ACK (num_retrans 1): a timer that fired before
            # it was read shows up as retransmits > 0, or as a request socket that is gone.
            listener.setsockopt(socket.IPPROTO_TCP, TCP_DEFER_ACCEPT, 1)
            listener.listen(2 * INCOMING_ATTEMPTS)
            send({"port": listener.getsockname()[1], "cgroup": joined})
            wait_parent()
        finally:
            listener.close()

    return body


def _diag_request_sockets(family, sport, dport):
    """[(state, retrans, expires_ms)] of the TCP sockets sport -> dport in SYN_RECV, from NETLINK_SOCK_DIAG."""
    request = (
        _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, (1 << TCP_SYN_RECV) | (1 << TCP_NEW_SYN_RECV))
        + _DIAG_SOCKID.pack(sport, dport, b"\0" * 16, b"\0" * 16)
        + _DIAG_SOCKID_TAIL.pack(0, _INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE)
    )
    message = (
        _NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request
    )
    found = []
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    try:
        nl.settimeout(5)
        nl.sendto(message, (0, 0))
        while True:
            data = nl.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
                if length < _NLMSGHDR.size:
                    return found
                body = offset + _NLMSGHDR.size
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, body)[0]
                    if code:
                        raise ProbeError("sock_diag: %s" % os.strerror(code))
                    return found
                if kind == SOCK_DIAG_BY_FAMILY:
                    _fam, state, _timer, retrans = _DIAG_MSG_HEAD.unpack_from(data, body)
                    msg_sport, msg_dport = _DIAG_SOCKID.unpack_from(data, body + 4)[:2]
                    expires = _DIAG_MSG_TAIL.unpack_from(data, body + 4 + 48)[0]
                    if msg_sport == sport and msg_dport == dport:
                        found.append((state, retrans, expires))
                offset += (length + 3) & ~3
    finally:
        nl.close()


def _coarse():
    return time.clock_gettime(CLOCK_MONOTONIC_COARSE)


def _wait_for_tick():
    """Return just after a jiffy tick, so that the next few hundred microseconds see no other."""
    now = _coarse()
    while _coarse() == now:
        pass


def _read_request_timer(family, address, port, timeout):
    """One connect to the listener: -> (remaining_ms, elapsed_ms, ticked) of its request socket, or
    None when the timer fired before it could be read."""
    client = socket.socket(family, socket.SOCK_STREAM)
    try:
        client.settimeout(timeout)
        _wait_for_tick()
        tick = _coarse()
        start = time.monotonic()
        client.connect((address, port))
        entries = _diag_request_sockets(family, port, client.getsockname()[1])
        elapsed_ms = (time.monotonic() - start) * 1000.0
        ticked = _coarse() != tick
    finally:
        client.close()
    pending = [entry for entry in entries if entry[0] == TCP_SYN_RECV]
    if not pending or pending[0][1] > 0:
        return None
    return pending[0][2], elapsed_ms, ticked


def incoming_rto_ms(cgroup, address="127.0.0.1", timeout=DEFAULT_TIMEOUT):
    """The first SYN-ACK timeout (ms) a listener inside cgroup gives an incoming connection, as an
    IncomingRto (rto_ms, exact, resolution_ms, jiffy_ms, remaining_ms, elapsed_ms).

    The listener (in the cgroup, TCP_DEFER_ACCEPT) keeps the request socket in SYN_RECV; this process
    connects from outside, right after a jiffy tick, and reads the request socket's timer through
    NETLINK_SOCK_DIAG (in whole jiffies). When no tick fell in between, the remaining time is the
    whole timeout; otherwise it tries again (INCOMING_ATTEMPTS in all) and at last estimates. A
    timeout shorter than the time it takes to read it (a fraction of a millisecond) cannot be
    measured: ProbeError.
    """
    family = _family(address)
    jiffy_ms = time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1000.0
    child = ProbeChild(cgroup, _incoming_body(address), timeout)
    try:
        port = child.receive()["port"]
        reading = None
        for _attempt in range(INCOMING_ATTEMPTS):
            this = _read_request_timer(family, address, port, timeout)
            reading = this or reading
            if this is not None and not this[2]:
                break
    finally:
        child.close()
    if reading is None:
        raise ProbeError(
            "the SYN-ACK timer of the listener in %s fired before it could be read, or no "
            "request socket was made (net.ipv4.tcp_syncookies = 2): the initial SYN-ACK "
            "timeout is too short to measure this way" % cgroup
        )
    remaining_ms, elapsed_ms, ticked = reading
    if not ticked:
        return IncomingRto(
            rto_ms=float(remaining_ms),
            exact=True,
            resolution_ms=0.0,
            jiffy_ms=jiffy_ms,
            remaining_ms=remaining_ms,
            elapsed_ms=elapsed_ms,
        )
    estimate = round((remaining_ms + elapsed_ms) / jiffy_ms) * jiffy_ms
    return IncomingRto(
        rto_ms=estimate,
        exact=False,
        resolution_ms=jiffy_ms,
        jiffy_ms=jiffy_ms,
        remaining_ms=remaining_ms,
        elapsed_ms=elapsed_ms,
    )
