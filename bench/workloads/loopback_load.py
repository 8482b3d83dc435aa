"""Loopback connect + accept + close, as fast as one process goes, from inside a cgroup: the client
and the listener both live there, so sock_ops programs of the cgroup run for both ends.

Usage: loopback_load.py CGROUP SECONDS
Prints JSON: {"connections": n, "seconds": wall time, "cpu_seconds": this process's CPU time}.
Runs in a private network namespace.
"""

import json
import socket
import struct
import sys
import time

LINGER_RESET = struct.pack("ii", 1, 0)  # RST on close: no TIME_WAIT exhausts the ports


def main():
    cgroup, seconds = sys.argv[1], float(sys.argv[2])
    with open(cgroup + "/cgroup.procs", "w") as procs:
        procs.write("0")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    target = listener.getsockname()
    connections = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = start + seconds
    while True:
        for _round in range(100):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.connect(target)
            server, _peer = listener.accept()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            client.close()
            server.close()
        connections += 100
        now = time.perf_counter()
        if now >= deadline:
            break
    cpu_seconds = time.process_time() - cpu_start
    json.dump({"connections": connections, "seconds": now - start, "cpu_seconds": cpu_seconds}, sys.stdout)


if __name__ == "__main__":
    main()
