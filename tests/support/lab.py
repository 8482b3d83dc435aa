"""What the benchmarks create, and its removal in every outcome.

A Lab owns a stack of undo steps. Everything it creates carries the bench process's pid in its
name, so that sweep_leftovers() at the next start removes what a killed run (SIGKILL, power loss)
left, and never what another process still uses:
- network namespaces  tcprto-b-<pid>-<role>  (the veth pair lives only inside them)
- temporary directories  $TMPDIR/tcprto-b-<pid>-<random>
- child cgroups and private bpffs mounts through sandbox.py (tcp_rto_test-bench-<pid>-...)
- the previous kernel.bpf_stats_enabled value in /run/tcprto-b-<pid>.bpf_stats while it is changed
- processes started with a path in such a temporary directory (the SSH benchmark's sshd and the
  SSH masters whose ControlPath lies there)
SIGINT and SIGTERM raise KeyboardInterrupt, so the undo steps run on those too.
"""

import contextlib
import os
import signal
import subprocess
import tempfile

from ansible_collections.netbpf.tcp_rto.tests.support import paths, sandbox

BENCH = os.path.join(paths.REPO, "bench")
OWNED_PREFIX = "tcprto-b-"  # netns, temp dirs, state files: tcprto-b-<pid>...
STATE_DIR = "/run"
BPF_STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


def _interrupt(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def install_signal_handlers():
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def _owner_gone(pid_text):
    try:
        return not os.path.exists("/proc/%d" % int(pid_text))
    except ValueError:
        return False


def _netns_names():
    out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_tree(path):
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)


def delete_netns(name):
    """Kill what runs inside (a process keeps a namespace alive), then drop the name."""
    pids = subprocess.run(
        ["ip", "netns", "pids", name], check=False, stdout=subprocess.PIPE, universal_newlines=True
    ).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", name], stderr=subprocess.DEVNULL, check=False)


def restore_bpf_stats(state_file):
    with open(state_file) as handle:
        old = handle.read().strip()
    with open(BPF_STATS_SYSCTL, "w") as handle:
        handle.write(old)
    os.unlink(state_file)


def processes_using(path):
    """Pids of the processes whose command line names something under path."""
    marker = path.encode() + b"/"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    if marker in handle.read():
                        pids.append(int(entry))
            except OSError:
                continue  # gone meanwhile
    return pids


def kill_processes_using(path):
    for pid in processes_using(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sweep_leftovers():
    """Remove what earlier bench runs whose process is gone left behind (ours only, by name)."""
    sandbox.sweep_leftovers()
    for name in _netns_names():
        if name.startswith(OWNED_PREFIX) and _owner_gone(name[len(OWNED_PREFIX) :].split("-")[0]):
            delete_netns(name)
    for entry in os.listdir(STATE_DIR):
        if entry.startswith(OWNED_PREFIX) and entry.endswith(".bpf_stats"):
            if _owner_gone(entry[len(OWNED_PREFIX) : -len(".bpf_stats")]):
                restore_bpf_stats(os.path.join(STATE_DIR, entry))
    for entry in os.listdir(tempfile.gettempdir()):
        if entry.startswith(OWNED_PREFIX) and _owner_gone(entry[len(OWNED_PREFIX) :].split("-")[0]):
            kill_processes_using(os.path.join(tempfile.gettempdir(), entry))
            remove_tree(os.path.join(tempfile.gettempdir(), entry))


def owned_leftovers(pid):
    """What a bench process with this pid left behind: for the smoke test's "nothing left" check."""
    marker = "-%d-" % pid
    left = [name for name in _netns_names() if name.startswith("%s%d-" % (OWNED_PREFIX, pid))]
    root = sandbox.cgroup2_mount()
    left += [os.path.join(root, e) for e in os.listdir(root) if e.startswith(sandbox.SANDBOX_PREFIX) and marker in e]
    with open("/proc/mounts") as mounts:
        left += [line.split()[1] for line in mounts if line.split()[2] == "bpf" and marker in line.split()[1]]
    left += [os.path.join(STATE_DIR, e) for e in os.listdir(STATE_DIR) if e.startswith("%s%d." % (OWNED_PREFIX, pid))]
    temp = tempfile.gettempdir()
    temps = [os.path.join(temp, e) for e in os.listdir(temp) if e.startswith("%s%d-" % (OWNED_PREFIX, pid))]
    left += temps + ["process %d" % other for path in temps for other in processes_using(path)]
    return left


class Lab:
    """A stack of undo steps; close() runs them in reverse order, each even if another fails."""

    def __init__(self):
        self._undo = []

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    def defer(self, function, *args):
        self._undo.append((function, args))

    def close(self):
        # a second signal during cleanup must not cut it short
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            errors = []
            while self._undo:
                function, args = self._undo.pop()
                try:
                    function(*args)
                except Exception as exc:  # keep undoing; report them all at the end
                    errors.append("%s%r: %s" % (function.__name__, args, exc))
            if errors:
                raise RuntimeError("cleanup incomplete: " + "; ".join(errors))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def cgroup(self, parent=None, label="bench"):
        path = sandbox.make_cgroup(parent, label)
        self.defer(sandbox.remove_cgroup_tree, path)
        return path

    def bpffs(self):
        path = sandbox.mount_bpffs()
        self.defer(sandbox.unmount_bpffs, path)
        return path

    def tempdir(self):
        path = tempfile.mkdtemp(prefix="%s%d-" % (OWNED_PREFIX, os.getpid()))
        self.defer(remove_tree, path)
        return path

    def netns(self, role):
        name = "%s%d-%s" % (OWNED_PREFIX, os.getpid(), role)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.defer(delete_netns, name)
        ip(name, "link", "set", "lo", "up")
        return name

    def bpf_stats_enabled(self):
        """kernel.bpf_stats_enabled=1 until close(); the old value is kept in a file for a sweep."""
        state_file = os.path.join(STATE_DIR, "%s%d.bpf_stats" % (OWNED_PREFIX, os.getpid()))
        with open(BPF_STATS_SYSCTL) as handle:
            old = handle.read().strip()
        with open(state_file, "w") as handle:
            handle.write(old)
        self.defer(restore_bpf_stats, state_file)
        with open(BPF_STATS_SYSCTL, "w") as handle:
            handle.write("1")

    def spawn(self, command, **kwargs):
        """A background process in its own session; killed with its children by close()."""
        proc = subprocess.Popen(command, start_new_session=True, **kwargs)
        self.defer(_kill_group, proc)
        return proc


def _kill_group(proc):
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run(command, timeout=900, **kwargs):
    """subprocess.run in its own session; on timeout or interrupt the whole group is killed."""
    proc = subprocess.Popen(command, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, command, out, err)
    return out


def ip(netns, *args):
    subprocess.run(["ip", "-n", netns, *args], check=True)


def veth_pair(client_ns, server_ns, client_address, server_address, prefix_len, index=0):
    """A veth pair created inside the namespaces (never in the host's), addressed and up:
    veth-c in client_ns, veth-s<index> in server_ns. -> the client end's name."""
    server_end = "veth-s%d" % index
    ip(client_ns, "link", "add", "veth-c", "type", "veth", "peer", "name", server_end, "netns", server_ns)
    ip(client_ns, "addr", "add", "%s/%d" % (client_address, prefix_len), "dev", "veth-c")
    ip(server_ns, "addr", "add", "%s/%d" % (server_address, prefix_len), "dev", server_end)
    ip(client_ns, "link", "set", "veth-c", "up")
    ip(server_ns, "link", "set", server_end, "up")
    return "veth-c"


def in_netns(netns, command):
    # nsenter, not `ip netns exec`: that remounts /sys, which hides the cgroup v2 mount below it
    return ["nsenter", "--net=/run/netns/" + netns, *command]


def workload(name):
    return os.path.join(BENCH, "workloads", name)
