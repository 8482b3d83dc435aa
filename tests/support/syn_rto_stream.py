"""Run as its own process: join CGROUP and put one socket after another in SYN_SENT towards a
loopback listener whose accept queue is full, printing each socket's initial RTO (tcpi_rto, µs) on
a line, until stdin closes, SECONDS pass or COUNT sockets were made.

Usage: syn_rto_stream.py CGROUP SECONDS COUNT
Like scripts/syn_rto_probe.py it shares no code with the collection.
"""

import select
import socket
import struct
import sys
import time

TCP_INFO = 11
TCP_SYN_SENT = 2
TCPI_RTO_OFFSET = 8
TCPI_UNACKED_OFFSET = 24  # of a listener: its accept queue length


def main():
    cgroup, seconds, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    with open(cgroup + "/cgroup.procs", "w") as procs:
        procs.write("0")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # one connection fills the accept queue; later SYNs are dropped
    target = listener.getsockname()
    filler = socket.create_connection(target)
    end = time.monotonic() + seconds
    while struct.unpack_from("I", listener.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 104), TCPI_UNACKED_OFFSET)[0] < 1:
        if time.monotonic() > end:
            sys.exit("the accept queue never filled")
        time.sleep(0.001)
    for _round in range(count):
        if time.monotonic() > end or select.select([sys.stdin], [], [], 0)[0]:
            break
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setblocking(False)
        probe.connect_ex(target)
        info = probe.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 104)
        probe.close()
        if info[0] != TCP_SYN_SENT:
            sys.exit("a probe socket left SYN_SENT (state %d)" % info[0])
        sys.stdout.write("%d\n" % struct.unpack_from("I", info, TCPI_RTO_OFFSET)[0])
        sys.stdout.flush()
    filler.close()
    listener.close()


if __name__ == "__main__":
    main()
