"""A remote host for the kernel-matrix guests: a veth pair whose far end sits in a private network
namespace, where a child process accepts and closes every connection. The near end (CLIENT_DEVICE,
CLIENT_ADDRESS) is the guest's own, so a netem qdisc on it delays or drops what the guest sends
there. Made through rtnetlink (what `ip link add ... type veth peer ... netns PID`, `ip address
add` and `ip link set up` send); the guest's Python (3.11) has no os.unshare, so libc's.
"""

import contextlib
import ctypes
import ipaddress
import os
import signal
import socket
import struct
import sys
import traceback

from rtnetlink import NLM_F_CREATE, NLM_F_EXCL, attr, request

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_NET_NS_PID = 19
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFF_UP = 0x1
CLONE_NEWNET = 0x40000000

CLIENT_DEVICE = "rto-client"
SERVER_DEVICE = "rto-server"
NETWORK = ipaddress.IPv4Network("10.199.0.0/24")
CLIENT_ADDRESS = str(NETWORK[1])
PORT = 8080


def server_address(number):
    """The number-th server address (from 1): the hosts after CLIENT_ADDRESS."""
    return str(NETWORK[1 + number])


def _link(index, attrs=b"", flags=0, change=0):
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs


def _name(device):
    return attr(IFLA_IFNAME, device.encode() + b"\0")


def add_veth(device, peer, peer_pid):
    """The pair device (here) and peer, moved into the network namespace of process peer_pid."""
    peer_info = _link(0, _name(peer) + attr(IFLA_NET_NS_PID, struct.pack("=I", peer_pid)))
    link_info = attr(IFLA_INFO_KIND, b"veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_info))
    request(
        "RTM_NEWLINK veth",
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        _link(0, _name(device) + attr(IFLA_LINKINFO, link_info)),
    )


def delete_link(device):
    """Deleting one end of a veth pair deletes both."""
    request("RTM_DELLINK", RTM_DELLINK, 0, _link(socket.if_nametoindex(device)))


def add_address(device, address):
    """address in NETWORK on device, and the device up."""
    index = socket.if_nametoindex(device)
    packed = socket.inet_aton(address)
    request(
        "RTM_NEWADDR",
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_EXCL,
        IFADDRMSG.pack(socket.AF_INET, NETWORK.prefixlen, 0, 0, index)
        + attr(IFA_LOCAL, packed)
        + attr(IFA_ADDRESS, packed),
    )
    request("RTM_NEWLINK up", RTM_NEWLINK, 0, _link(index, flags=IFF_UP, change=IFF_UP))


def _serve(addresses, ready, peer_here):
    """The child: a network namespace of its own, the peer's addresses there, then accept forever."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET): %s" % os.strerror(ctypes.get_errno()))
    os.write(ready, b"n")
    if os.read(peer_here, 1) != b"p":
        return
    for address in addresses:
        add_address(SERVER_DEVICE, address)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PORT))
    listener.listen(64)
    os.write(ready, b"r")
    while True:
        listener.accept()[0].close()


@contextlib.contextmanager
def server(addresses):
    """A listener on PORT of each of addresses (in CLIENT_ADDRESS's /24) behind the veth pair, in
    the cgroup of the caller (keep it out of the instance's cgroup: only the client then learns);
    the pair and the namespace are gone after."""
    ready_read, ready = os.pipe()
    peer_here_read, peer_here = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_read)
            os.close(peer_here)
            _serve(addresses, ready, peer_here_read)
        except BaseException:  # the parent sees the pipe close; the console shows why
            traceback.print_exc(file=sys.stdout)
        finally:
            os._exit(1)
    os.close(ready)
    os.close(peer_here_read)
    paired = False
    try:
        if os.read(ready_read, 1) != b"n":
            raise OSError("the server process did not make its network namespace")
        add_veth(CLIENT_DEVICE, SERVER_DEVICE, pid)
        paired = True
        add_address(CLIENT_DEVICE, CLIENT_ADDRESS)
        os.write(peer_here, b"p")
        if os.read(ready_read, 1) != b"r":
            raise OSError("the server process did not start listening")
        yield
    finally:
        if paired:
            delete_link(CLIENT_DEVICE)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in (ready_read, peer_here):
            os.close(fd)
