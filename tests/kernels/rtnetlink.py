"""rtnetlink requests for the kernel-matrix guests, which have no `ip` or `tc` that can configure
what the scenarios need (busybox's cannot make a veth pair across namespaces or a netem qdisc):
one request, its acknowledgement, the kernel's errno as OSError. Plain stdlib; the socket is
opened in the caller's network namespace. netem.py and veth.py build the messages.
"""

import contextlib
import os
import socket
import struct

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSGHDR = struct.Struct("=IHHII")
NLATTR = struct.Struct("=HH")


def attr(kind, payload):
    """One netlink attribute, padded to 4 bytes (a nested one: payload is its attributes)."""
    data = NLATTR.pack(NLATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def request(name, message_type, flags, body):
    """Send one request (body: the family header and its attributes) and wait for its ack; raises
    OSError with the kernel's errno, the message named name."""
    message = NLMSGHDR.pack(NLMSGHDR.size + len(body), message_type, NLM_F_REQUEST | NLM_F_ACK | flags, 1, 0) + body
    with contextlib.closing(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)) as sock:
        sock.bind((0, 0))
        sock.send(message)
        reply = sock.recv(65536)
    _length, reply_type, _flags, _seq, _pid = NLMSGHDR.unpack_from(reply)
    if reply_type != NLMSG_ERROR:
        raise OSError("unexpected rtnetlink reply type %d to %s" % (reply_type, name))
    (error,) = struct.unpack_from("=i", reply, NLMSGHDR.size)
    if error:
        raise OSError(-error, "%s: %s" % (name, os.strerror(-error)))
