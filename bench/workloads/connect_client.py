"""Sequential connects from inside a cgroup, each timed, with a capture of the SYNs sent.

Usage: connect_client.py CGROUP ADDRESS PORT COUNT INTERFACE
Prints JSON: {"latencies_s": [...], "first_retransmit_s": [...]}. latencies_s: socket() to
connect() returning, per connection. first_retransmit_s: for each connection whose first SYN was
lost, the time from its first SYN to the first retransmission of it, from kernel timestamps of
an AF_PACKET capture on INTERFACE (a SYN and its retransmissions share source port and ISN).
Runs in the client network namespace; plain stdlib.
"""

import json
import socket
import struct
import sys
import threading
import time

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SO_TIMESTAMPNS = 35
TCP_SYN = 0x02
TCP_ACK = 0x10
LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST: no TIME_WAIT piles up


class SynCapture(threading.Thread):
    """Kernel receive/transmit timestamps of every SYN (without ACK) leaving through interface."""

    def __init__(self, interface):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((interface, ETH_P_ALL))
        self.sock.settimeout(0.1)
        self.stopping = False
        self.syns = []  # (sport, isn, timestamp_s)

    def run(self):
        while not self.stopping:
            try:
                frame, ancillary, _flags, address = self.sock.recvmsg(128, socket.CMSG_SPACE(16))
            except socket.timeout:
                continue
            if address[2] != socket.PACKET_OUTGOING or len(frame) < 14 + 20 + 20:
                continue
            if struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP or frame[14 + 9] != socket.IPPROTO_TCP:
                continue
            tcp = 14 + (frame[14] & 0x0F) * 4
            sport, _dport, isn = struct.unpack_from("!HHI", frame, tcp)
            if frame[tcp + 13] & (TCP_SYN | TCP_ACK) != TCP_SYN:
                continue
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", data[:16])
                    self.syns.append((sport, isn, seconds + nanoseconds / 1e9))

    def first_retransmit_intervals(self):
        first, retransmitted = {}, {}
        for sport, isn, stamp in self.syns:
            key = (sport, isn)
            if key not in first:
                first[key] = stamp
            elif key not in retransmitted:
                retransmitted[key] = stamp - first[key]
        return list(retransmitted.values())


def main():
    cgroup, address, port, count, interface = sys.argv[1:6]
    with open(cgroup + "/cgroup.procs", "w") as procs:
        procs.write("0")
    capture = SynCapture(interface)
    capture.start()
    latencies = []
    for _round in range(int(count)):
        start = time.perf_counter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.connect((address, int(port)))
        latencies.append(time.perf_counter() - start)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()
    time.sleep(0.2)  # the capture's last frames
    capture.stopping = True
    capture.join()
    json.dump({"latencies_s": latencies, "first_retransmit_s": capture.first_retransmit_intervals()}, sys.stdout)


if __name__ == "__main__":
    main()
