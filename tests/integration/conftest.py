"""Running the collection through ansible-playbook against localhost, and looking at the kernel
with tools that share no code with the collection (bpftool, tests/tcpinfo_probe.py)."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from bpf_inventory import bpftool

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import reconcile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
COLLECTIONS_ROOT = os.path.join(REPO, ".cache", "collections")
ANSIBLE_BIN = os.path.dirname(sys.executable)
# Debian's own Python, as on a real managed host (pyenv shims may name a python3.X not installed).
MANAGED_PYTHON = "/usr/bin/python3"
MODULE = "netbpf.tcp_rto.tcp_initial_rto"


class Playbook:
    """Writes tasks into a playbook for localhost, runs it, returns each task's result."""

    def __init__(self, workdir, collections_root=COLLECTIONS_ROOT):
        self.workdir = workdir
        self.collections_root = collections_root
        self.inventory = os.path.join(workdir, "inventory.ini")
        with open(self.inventory, "w") as handle:
            handle.write("localhost ansible_connection=local ansible_python_interpreter=%s\n" % MANAGED_PYTHON)
        self.runs = 0

    def run(self, tasks, check=False, diff=False, extra_args=()):
        """Run tasks in a play for localhost."""
        self.runs += 1
        playbook = os.path.join(self.workdir, "play%d.yml" % self.runs)
        with open(playbook, "w") as handle:
            json.dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}], handle)
        return self.run_playbook(
            playbook, self.inventory, (["--check"] if check else []) + (["--diff"] if diff else []) + list(extra_args)
        )

    def run_playbook(self, playbook, inventory, extra_args=()):
        """Run a playbook file, or a collection playbook by FQCN; each task's result is recorded."""
        self.runs += 1
        results_file = os.path.join(self.workdir, "results%d.jsonl" % self.runs)
        env = dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=self.collections_root,
            ANSIBLE_CALLBACK_PLUGINS=os.path.join(HERE, "callback_plugins"),
            ANSIBLE_CALLBACKS_ENABLED="record_results",
            RECORD_RESULTS_FILE=results_file,
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_RETRY_FILES_ENABLED="0",
            ANSIBLE_LOCAL_TEMP=self.workdir,
        )
        command = [os.path.join(ANSIBLE_BIN, "ansible-playbook"), "-i", inventory, playbook, *list(extra_args)]
        proc = subprocess.run(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
            timeout=600,
            cwd=self.workdir,
            check=False,
        )
        results = []
        if os.path.exists(results_file):
            with open(results_file) as handle:
                results = [json.loads(line) for line in handle]
        custom_stats = {}
        if os.path.exists(results_file + ".custom_stats"):
            with open(results_file + ".custom_stats") as handle:
                custom_stats = json.load(handle)
        return PlaybookRun(proc.returncode, proc.stdout, results, custom_stats)

    def module(self, check=False, diff=False, **args):
        """One task of the module; returns its result dict (with .output for debugging)."""
        run = self.run([{"name": "tcp_initial_rto", MODULE: args, "ignore_errors": True}], check=check, diff=diff)
        assert run.results, "no result recorded:\n" + run.output
        result = run.results[-1]
        result["_output"] = run.output
        return result


class PlaybookRun:
    def __init__(self, returncode, output, results, custom_stats=None):
        self.returncode, self.output, self.results = returncode, output, results
        # what the playbook published with set_stats: {"_run": {...}} for data not per host
        self.custom_stats = custom_stats or {}


@pytest.fixture
def playbook(tmp_path):
    return Playbook(str(tmp_path))


def cgroup_program_ids(cgroup):
    """Program ids attached to cgroup itself as bpftool sees them."""
    # bpftool 7.1 names the attach type cgroup_sock_ops, older ones sock_ops
    return [
        entry["id"]
        for entry in bpftool("cgroup", "show", cgroup)
        if entry.get("attach_type") in ("sock_ops", "cgroup_sock_ops")
    ]


def observed_rto_us(cgroup, address="127.0.0.1"):
    """The initial RTO a socket created in cgroup gets, measured by a separate process."""
    out = subprocess.run(
        ["/usr/bin/python3", os.path.join(REPO, "scripts", "syn_rto_probe.py"), cgroup, address],
        stdout=subprocess.PIPE,
        universal_newlines=True,
        check=True,
        timeout=30,
    ).stdout
    return int(out)


def run_as_systemd(command, timeout=60):
    """command as a unit's Exec line runs: systemd's minimal PATH, output captured as text."""
    return subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        timeout=timeout,
        check=False,
    )


def kernel_hz():
    """CONFIG_HZ as the module finds it: the module's own discovery, not a copy of it."""
    return reconcile.discover_hz(dict(hz=None), os.uname()[2])[0]


@pytest.fixture(scope="session")
def second_object(tmp_path_factory):
    """A new version of the program object (another sha256 and program): the shipped source with a
    no-op instruction, built with files/bpf/build."""
    workdir = tmp_path_factory.mktemp("second_object")
    with open(os.path.join(REPO, "files", "bpf", "tcp_initial_rto.bpf.c")) as handle:
        source = handle.read()
    anchor = "__u32 zero = 0, direction, op = skops->op;\n"
    assert anchor in source
    source = source.replace(anchor, anchor + '\n\tasm volatile("r0 = 0" ::: "r0");\t/* the new version */\n')
    source_path = workdir / "tcp_initial_rto_v2.bpf.c"
    source_path.write_text(source)
    object_path = str(workdir / "tcp_initial_rto_v2.bpf.o")
    subprocess.run([os.path.join(REPO, "files", "bpf", "build"), object_path, str(source_path)], check=True)
    return object_path


KERNEL_DEFAULT_US = 1000000  # TCP_TIMEOUT_INIT as tcpi_rto shows it
STREAM_SECONDS = 120
STREAM_COUNT = 2000000


def jiffies_us(ms):
    """The µs TCP_INFO shows for rto_ms: rounded up to whole jiffies like the module does."""
    hz = kernel_hz()
    return -(-ms * hz // 1000) * (1000000 // hz)


class RtoStream:
    """syn_rto_stream.py in the cgroup; .values grows with each socket's tcpi_rto (µs), made without
    pause until stop(): the stream a change must never show KERNEL_DEFAULT_US in."""

    def __init__(self, cgroup):
        self.values = []
        self.proc = subprocess.Popen(
            [
                "/usr/bin/python3",
                os.path.join(HERE, "syn_rto_stream.py"),
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
