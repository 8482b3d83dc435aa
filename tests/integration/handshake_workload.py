"""Handshakes with a known outcome, made from inside a cgroup in a private network namespace (its
own loopback, its own nftables ruleset; both go when the process exits). Prints one JSON line.

    handshake_workload.py CGROUP loopback N
        N connect()+accept() pairs on 127.0.0.1 -> {"connections": N}
    handshake_workload.py CGROUP drop-syns N TIMEOUT
        N blocking connect()s to a port whose SYNs nftables drops, each until it fails (or TIMEOUT s)
        -> {"attempts": [{"errno": name, "elapsed_s": s, "total_retrans": k}], "dropped": SYNs dropped}
    handshake_workload.py CGROUP drop-first-syn N
        N connect()s whose first SYN is dropped and whose retransmit passes (nftables drops every
        other SYN to the port) -> {"attempts": [...], "dropped": SYNs dropped}
    handshake_workload.py CGROUP delayed N DELAY_MS
        N connect()+accept() pairs from 10.99.0.1 to 10.99.0.2 across a wire that delays each packet
        DELAY_MS each way (a round trip of 2 x DELAY_MS): two private network namespaces, each with a
        tun device, whose packets a thread of this process carries to the other one late. (The
        kernel here has no sch_netem.) -> {"connections": N}
    handshake_workload.py CGROUP syn-rto ADDRESS
        the initial RTO a connect() to ADDRESS starts with (ADDRESS is put on the namespace's lo,
        its SYNs are dropped; the socket's tcpi_rto read in SYN_SENT) -> {"rto_us": µs}
"""

import ctypes
import errno
import fcntl
import heapq
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
TCP_INFO = 11
TCPI_TOTAL_RETRANS = 100  # u32 offset in struct tcp_info
TCPI_RTO = 8  # u32 µs
NFT_TABLE = "tcp_rto_test"
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
WIRE_CLIENT, WIRE_SERVER = "10.99.0.1", "10.99.0.2"


def join(cgroup):
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as handle:
        handle.write("0")


def private_network():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def tun_end(device, address, peer):
    """A tun device in a new network namespace of this process, addressed point-to-point."""
    private_network()
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI))
    subprocess.run(["ip", "addr", "add", address, "peer", peer, "dev", device], check=True)
    subprocess.run(["ip", "link", "set", device, "up"], check=True)
    return fd, os.open("/proc/thread-self/ns/net", os.O_RDONLY)


def carry_late(ends, delay_s):
    """Forever: each packet read from one tun device written to the other delay_s later."""
    due, sequence = [], 0
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        readable, _w, _x = select.select(list(ends), [], [], timeout)
        for fd in readable:
            heapq.heappush(due, (time.monotonic() + delay_s, sequence, ends[fd], os.read(fd, 65536)))
            sequence += 1
        while due and due[0][0] <= time.monotonic():
            os.write(*heapq.heappop(due)[2:])


def delayed(count, delay_ms):
    libc = ctypes.CDLL(None, use_errno=True)
    client_fd, client_ns = tun_end("tcprtoc", WIRE_CLIENT, WIRE_SERVER)
    server_fd, _server_ns = tun_end("tcprtos", WIRE_SERVER, WIRE_CLIENT)
    threading.Thread(
        target=carry_late, args=({client_fd: server_fd, server_fd: client_fd}, delay_ms / 1000.0), daemon=True
    ).start()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # in the server's namespace
    listener.bind((WIRE_SERVER, 0))
    listener.listen(128)
    if libc.setns(client_ns, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    for _attempt in range(count):
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _address = listener.accept()
        server.close()
        client.close()
    return {"connections": count}


def syn_rto(address, port):
    """The initial RTO of a connect() to address:port, read while its first SYN is in flight."""
    if address != "127.0.0.1":
        subprocess.run(["ip", "addr", "add", address + "/32", "dev", "lo"], check=True)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)
    try:
        client.connect_ex((address, port))
        return struct.unpack_from("=I", client.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 104), TCPI_RTO)[0]
    finally:
        client.close()


def drop_syns(port, every_other):
    match = "numgen inc mod 2 0 " if every_other else ""
    ruleset = (
        "table inet %s {\n chain input {\n  type filter hook input priority 0;\n"
        "  tcp dport %d tcp flags & (syn | ack) == syn %scounter drop\n }\n}\n" % (NFT_TABLE, port, match)
    )
    subprocess.run(["nft", "-f", "-"], input=ruleset.encode(), check=True)


def dropped():
    listing = subprocess.run(
        ["nft", "-j", "list", "table", "inet", NFT_TABLE], check=True, stdout=subprocess.PIPE
    ).stdout
    for item in json.loads(listing.decode())["nftables"]:
        for expression in item.get("rule", {}).get("expr", []):
            if "counter" in expression:
                return expression["counter"]["packets"]
    raise RuntimeError("no counter in the ruleset")


def total_retrans(sock):
    return struct.unpack_from("=I", sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 104), TCPI_TOTAL_RETRANS)[0]


def attempt(target, timeout):
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(timeout)
    start = time.monotonic()
    try:
        client.connect(target)
        outcome = "connected"
    except OSError as exc:  # the kernel's ETIMEDOUT is a TimeoutError too, with its errno
        outcome = errno.errorcode.get(exc.errno, "timeout") if exc.errno else "timeout"
    try:
        return {"errno": outcome, "elapsed_s": time.monotonic() - start, "total_retrans": total_retrans(client)}
    finally:
        client.close()


def main(cgroup, mode, *args):
    join(cgroup)
    if mode == "delayed":
        return delayed(int(args[0]), float(args[1]))
    private_network()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    target = listener.getsockname()
    if mode == "loopback":
        for _attempt in range(int(args[0])):
            client = socket.create_connection(target, timeout=10)
            server, _address = listener.accept()
            server.close()
            client.close()
        return {"connections": int(args[0])}
    if mode == "drop-syns":
        drop_syns(target[1], every_other=False)
        attempts = [attempt(target, float(args[1])) for _attempt in range(int(args[0]))]
    elif mode == "syn-rto":
        drop_syns(target[1], every_other=False)
        return {"rto_us": syn_rto(args[0], target[1])}
    elif mode == "drop-first-syn":
        drop_syns(target[1], every_other=True)
        attempts = []
        for _attempt in range(int(args[0])):
            attempts.append(attempt(target, 10))
            listener.accept()[0].close()
    else:
        raise SystemExit("unknown mode %s" % mode)
    return {"attempts": attempts, "dropped": dropped()}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
