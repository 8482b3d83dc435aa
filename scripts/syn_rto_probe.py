"""Run as its own process, join CGROUP, put a socket in SYN_SENT
towards ADDRESS on loopback and print the initial RTO the kernel gave it, in microseconds.

Usage: python3 scripts/syn_rto_probe.py CGROUP [ADDRESS]
The demo shows what it prints; the tests use it as an oracle independent of the collection,
so it deliberately shares no code with plugins/module_utils/probe.py.
"""

import socket
import struct
import sys

TCP_INFO = 11
TCPI_RTO_OFFSET = 8


def main():
    cgroup = sys.argv[1]
    address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    with open(cgroup + "/cgroup.procs", "w") as procs:
        procs.write("0")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen(0)  # one connection fills the accept queue; later SYNs are dropped
    port = listener.getsockname()[1]
    filler = socket.create_connection((address, port))
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setblocking(False)
    probe.connect_ex((address, port))
    info = probe.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 104)
    print(struct.unpack_from("I", info, TCPI_RTO_OFFSET)[0])
    for sock in (probe, filler, listener):
        sock.close()


if __name__ == "__main__":
    main()
