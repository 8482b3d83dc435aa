"""The initial RTO sockets in a cgroup get, measured by processes that share no code with the
collection (scripts/syn_rto_probe.py, syn_rto_stream.py)."""

import os
import subprocess
import threading
import time

from ansible_collections.netbpf.tcp_rto.tests.support import paths

KERNEL_DEFAULT_US = 1000000  # TCP_TIMEOUT_INIT as tcpi_rto shows it
STREAM_SECONDS = 120
STREAM_COUNT = 2000000


def observed_rto_us(cgroup, address="127.0.0.1"):
    """The initial RTO a socket created in cgroup gets, measured by a separate process."""
    out = subprocess.run(
        [paths.MANAGED_PYTHON, os.path.join(paths.REPO, "scripts", "syn_rto_probe.py"), cgroup, address],
        stdout=subprocess.PIPE,
        universal_newlines=True,
        check=True,
        timeout=30,
    ).stdout
    return int(out)


class RtoStream:
    """syn_rto_stream.py in the cgroup; .values grows with each socket's tcpi_rto (µs), made without
    pause until stop(): the stream a change must never show KERNEL_DEFAULT_US in."""

    def __init__(self, cgroup):
        self.values = []
        self.proc = subprocess.Popen(
            [
                paths.MANAGED_PYTHON,
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "syn_rto_stream.py"),
                cgroup,
                str(STREAM_SECONDS),
                str(STREAM_COUNT),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            universal_newlines=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.values.append(int(line))

    def wait_for(self, value, timeout=30.0):
        """Until a socket made after this call started with value (or timeout): -> whether one did."""
        start = len(self.values)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if value in self.values[start:]:
                return True
            time.sleep(0.01)
        return value in self.values[start:]

    def stop(self):
        self.proc.stdin.close()
        returncode = self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        return returncode
