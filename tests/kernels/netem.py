"""A netem delay on a network device through rtnetlink, for the kernel-matrix guests, which have
no `tc` (busybox's cannot configure netem). What `tc qdisc add dev DEV root netem delay D` sends:
RTM_NEWQDISC with TCA_KIND "netem" and TCA_OPTIONS holding struct tc_netem_qopt
(include/uapi/linux/pkt_sched.h). Plain stdlib; the device is the caller's (in a guest or a
private network namespace).
"""

import contextlib
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWQDISC = 36
RTM_DELQDISC = 37
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
TC_H_ROOT = 0xFFFFFFFF
TCA_KIND = 1
TCA_OPTIONS = 2
NLMSGHDR = struct.Struct("=IHHII")
TCMSG = struct.Struct("=B3xiIII")  # family, 3 pad bytes, ifindex, handle, parent, info
NLATTR = struct.Struct("=HH")
# struct tc_netem_qopt: latency, limit, loss, gap, duplicate, jitter. latency and jitter are in
# psched ticks of 64 ns (PSCHED_SHIFT 6: netem_change() takes PSCHED_TICKS2NS(latency)).
NETEM_QOPT = struct.Struct("=IIIIII")
PSCHED_SHIFT = 6
NETEM_LIMIT = 1000  # packets, tc's default


def _attr(kind, payload):
    data = NLATTR.pack(NLATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _request(kind, flags, ifindex, attrs=b""):
    """One rtnetlink request on the device's root qdisc; raises OSError with the kernel's errno."""
    body = TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, TC_H_ROOT, 0) + attrs
    message = NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, 1, 0) + body
    with contextlib.closing(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)) as sock:
        sock.bind((0, 0))
        sock.send(message)
        reply = sock.recv(65536)
    _length, reply_type, _flags, _seq, _pid = NLMSGHDR.unpack_from(reply)
    if reply_type != NLMSG_ERROR:
        raise OSError("unexpected rtnetlink reply type %d" % reply_type)
    (error,) = struct.unpack_from("=i", reply, NLMSGHDR.size)
    if error:
        raise OSError(
            -error, "%s: %s" % ("RTM_NEWQDISC" if kind == RTM_NEWQDISC else "RTM_DELQDISC", os.strerror(-error))
        )


@contextlib.contextmanager
def delay(device, delay_us):
    """netem delaying every packet leaving device by delay_us as its root qdisc, removed after."""
    ifindex = socket.if_nametoindex(device)
    options = NETEM_QOPT.pack((delay_us * 1000) >> PSCHED_SHIFT, NETEM_LIMIT, 0, 0, 0, 0)
    _request(
        RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, ifindex, _attr(TCA_KIND, b"netem\0") + _attr(TCA_OPTIONS, options)
    )
    try:
        yield
    finally:
        _request(RTM_DELQDISC, 0, ifindex)
