"""Loopback connect + accept + close in short batches that take turns between cgroups, so that a
slow spell of a shared machine (seconds long) hits every cgroup alike: one worker process per
cgroup (client and listener both live there, so the cgroup's sock_ops programs run for both ends),
all on one CPU; one batch at a time, in an order that rotates each round.

Usage: loopback_ring.py SECONDS BATCH CPU CGROUP...
Prints JSON: {"batch": connections per batch, "rounds": [[wall s, CPU s] per cgroup, in the
order given] per round}. Only connect(), accept() and both close()s are timed: each worker
makes its batch's client sockets before the clock starts (socket() runs no sock_ops program).
Runs in a private network namespace.
"""

import json
import os
import socket
import struct
import sys
import time

LINGER_RESET = struct.pack("ii", 1, 0)  # RST on close: no TIME_WAIT exhausts the ports
RESULT = struct.Struct("=dd")


def worker(cgroup, batch, orders, results):
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write("0")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    target = listener.getsockname()
    os.write(results, RESULT.pack(0.0, 0.0))  # ready
    while os.read(orders, 1) == b"g":
        clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _index in range(batch)]
        start, cpu_start = time.perf_counter(), time.thread_time()
        for client in clients:
            client.connect(target)
            server, _peer = listener.accept()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            client.close()
            server.close()
        os.write(results, RESULT.pack(time.perf_counter() - start, time.thread_time() - cpu_start))
    os._exit(0)


def main():
    seconds, batch, cpu, cgroups = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    os.sched_setaffinity(0, {cpu})  # the workers inherit it: every batch on the same CPU and caches
    workers = []
    for cgroup in cgroups:
        orders_read, orders_write = os.pipe()
        results_read, results_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            worker(cgroup, batch, orders_read, results_write)
        workers.append((pid, orders_write, results_read))
        os.read(results_read, RESULT.size)
    rounds = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        shift = len(rounds) % len(workers)
        times = [None] * len(workers)
        for index in list(range(shift, len(workers))) + list(range(shift)):
            _pid, orders, results = workers[index]
            os.write(orders, b"g")
            times[index] = list(RESULT.unpack(os.read(results, RESULT.size)))
        rounds.append(times)
    for pid, orders, _results in workers:
        os.write(orders, b"q")
        os.waitpid(pid, 0)
    json.dump({"batch": batch, "rounds": rounds}, sys.stdout)


if __name__ == "__main__":
    main()
