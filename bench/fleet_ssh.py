"""Fleet over SSH: the collection's rollout, its no-op rerun and the rollback playbooks, run as the
README shows them, next to ansible.builtin.ping over the same inventory.

One machine stands in for the fleet. The benchmark starts its own sshd on 127.0.0.1 (a free port,
its own host key, an authorized key it generates, LogLevel VERBOSE into its own log) and writes an
INI inventory with one alias per simulated host: each alias has its own SSH connection (its own
ControlPath, so its own master and sshd session process, as a real host would), its own child
cgroup, pin_dir (in a private bpffs) and persist_root; pipelining on, the managed Python
/usr/bin/python3. Per fleet size and forks, with a fresh fleet: ping, rollout (every host changes),
the rollout again (no-op), rollback (every host back to no instance). Before each run no SSH
master is up (each run pays its own connections), after it the masters are told to exit.

Remote round trips per host are the sessions sshd started (one per module run, file transfer or
command), counted per connection from sshd's log. CPU per host, which the shared machine's load
stretches less than wall time: the controller's (ansible-playbook, its workers and ssh
clients: the run's reaped children) and the hosts' (sshd's sessions and all they ran, modules
included: what sshd's listener reaped, from /proc/<pid>/stat). The AnsiballZ payload of each module is measured
once with the local connection and ANSIBLE_KEEP_REMOTE_FILES.
"""

import glob
import json
import os
import re
import resource
import socket
import subprocess
import time

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host_paths
from ansible_collections.netbpf.tcp_rto.tests.support import lab, paths, playbook
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"  # sshd refuses to start without it; made (and removed) when missing
RULES = [dict(dest="127.0.0.0/8", rto_ms=200)]
PLAYBOOKS = ("ping", "rollout", "no-op", "rollback")
RUN_TIMEOUT = 4 * 3600  # a 300-host rollback with 5 forks takes more than 15 minutes on 2 shared cores
SESSION = re.compile(r"Starting session: .* port (\d+) id \d+")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _remove_privsep_dir():
    os.rmdir(PRIVSEP_DIR)


class SshServer:
    """sshd on 127.0.0.1:port for root with a generated key, until the lab closes."""

    def __init__(self, lab_, workdir):
        self.dir = os.path.join(workdir, "ssh")
        os.mkdir(self.dir, 0o700)
        self.client_key = os.path.join(self.dir, "client_key")
        host_key = os.path.join(self.dir, "host_key")
        for key in (host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        authorized = os.path.join(self.dir, "authorized_keys")
        with open(self.client_key + ".pub") as source, open(authorized, "w") as handle:
            handle.write(source.read())
        self.port = _free_port()
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        with open(host_key + ".pub") as source, open(self.known_hosts, "w") as handle:
            handle.write("[127.0.0.1]:%d %s" % (self.port, " ".join(source.read().split()[:2])) + "\n")
        self.log = os.path.join(self.dir, "sshd.log")
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as handle:
            handle.write(
                "\n".join(
                    [
                        "ListenAddress 127.0.0.1:%d" % self.port,
                        "HostKey " + host_key,
                        "PidFile " + os.path.join(self.dir, "sshd.pid"),
                        "AuthorizedKeysFile " + authorized,
                        "PermitRootLogin prohibit-password",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "StrictModes no",  # the keys live under /tmp
                        "LogLevel VERBOSE",  # "Starting session: ..." per remote command
                        # every simulated host connects to this one sshd: no startup throttling
                        "MaxStartups 1000",
                        "PrintMotd no",
                        "Subsystem sftp internal-sftp",
                        # each simulated host's own persistence root (the test aid), sent by its client
                        "AcceptEnv " + host_paths.TEST_ROOT_ENVIRONMENT,
                        "",
                    ]
                )
            )
        if not os.path.isdir(PRIVSEP_DIR):
            os.mkdir(PRIVSEP_DIR, 0o755)
            lab_.defer(_remove_privsep_dir)
        subprocess.run([SSHD, "-t", "-f", config], check=True)
        self.process = lab_.spawn([SSHD, "-D", "-f", config, "-E", self.log])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def reaped_cpu_seconds(self):
        """CPU seconds of the sessions sshd has reaped (cutime + cstime), once none is left running."""
        children = "/proc/%d/task/%d/children" % (self.process.pid, self.process.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(children) as handle:
                if not handle.read().strip():
                    break
            time.sleep(0.05)
        with open("/proc/%d/stat" % self.process.pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / float(os.sysconf("SC_CLK_TCK"))  # fields 16, 17 of stat

    def log_size(self):
        return os.path.getsize(self.log)

    def sessions_since(self, offset):
        """Sessions sshd started since offset of its log: -> sessions per connection (port)."""
        with open(self.log) as handle:
            handle.seek(offset)
            ports = [match.group(1) for match in SESSION.finditer(handle.read())]
        counts = {}
        for port in ports:
            counts[port] = counts.get(port, 0) + 1
        return counts


class SshFleet:
    """hosts inventory aliases of 127.0.0.1, each a simulated host with its own connection,
    cgroup, pin_dir and persist_root."""

    def __init__(self, lab_, workdir, server, hosts):
        self.server = server
        self.workdir = workdir
        self.control_dir = os.path.join(workdir, "cp")
        os.mkdir(self.control_dir, 0o700)
        parent = lab_.cgroup(label="bench-ssh")
        bpffs = lab_.bpffs()
        self.hosts = ["h%03d" % index for index in range(hosts)]
        self.cgroups = {host: os.path.join(parent, host) for host in self.hosts}
        lines = ["[fleet]"]
        for host in self.hosts:
            os.mkdir(self.cgroups[host])
            lines.append(
                "%s ansible_control_path=%%(directory)s/%s tcp_rto_cgroup=%s tcp_rto_pin_dir=%s ansible_ssh_extra_args='-o SetEnv=%s=%s'"
                % (
                    host,
                    host,
                    self.cgroups[host],
                    os.path.join(bpffs, host),
                    host_paths.TEST_ROOT_ENVIRONMENT,
                    os.path.join(workdir, "root", host),
                )
            )
        lines += [
            "[fleet:vars]",
            "ansible_connection=ssh",
            "ansible_host=127.0.0.1",
            "ansible_port=%d" % server.port,
            "ansible_user=root",
            "ansible_ssh_private_key_file=" + server.client_key,
            "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'" % server.known_hosts,
            "ansible_ssh_pipelining=true",
            "ansible_control_path_dir=" + self.control_dir,
            "ansible_python_interpreter=" + paths.MANAGED_PYTHON,
            "tcp_rto_mount_bpffs=false",
        ]
        self.inventory = os.path.join(workdir, "fleet.ini")
        with open(self.inventory, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.rto_vars = os.path.join(workdir, "rto.yml")
        with open(self.rto_vars, "w") as handle:
            json.dump(dict(tcp_rto_name="bench", tcp_rto_rules=RULES), handle)
        lab_.defer(self.exit_masters)

    def exit_masters(self):
        """Tell every SSH master of this fleet to exit (each run starts without one)."""
        for path in glob.glob(os.path.join(self.control_dir, "*")):
            subprocess.run(
                ["ssh", "-o", "ControlPath=" + path, "-O", "exit", "127.0.0.1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        deadline = time.monotonic() + 10
        while glob.glob(os.path.join(self.control_dir, "*")) and time.monotonic() < deadline:
            time.sleep(0.05)

    def command(self, kind):
        """(playbook, extra args) of a run, as the README shows them."""
        if kind == "ping":
            return playbook.write_play(
                os.path.join(self.workdir, "ping.yml"), "fleet", [{"ansible.builtin.ping": {}}]
            ), []
        if kind == "rollback":
            return "netbpf.tcp_rto.rollback", []
        return "netbpf.tcp_rto.rollout", ["-e", "@" + self.rto_vars]

    def timed(self, kind, forks):
        """-> dict(seconds, round trips per host (mean, max), connections, CPU ms per host of the
        controller and of the hosts) of one run."""
        play, extra = self.command(kind)
        offset = self.server.log_size()
        hosts_cpu = self.server.reaped_cpu_seconds()
        controller = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = playbook.timed_playbook(
            self.workdir, self.inventory, play, forks=forks, extra_args=extra, timeout=RUN_TIMEOUT
        )
        self.exit_masters()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        controller_cpu = after.ru_utime + after.ru_stime - controller.ru_utime - controller.ru_stime
        hosts_cpu = self.server.reaped_cpu_seconds() - hosts_cpu
        sessions = self.server.sessions_since(offset)
        total = sum(sessions.values())
        return dict(
            controller_cpu_ms=1000.0 * controller_cpu / len(self.hosts),
            hosts_cpu_ms=1000.0 * hosts_cpu / len(self.hosts),
            seconds=seconds,
            round_trips=total / float(len(self.hosts)),
            round_trips_max=max(sessions.values()) if sessions else 0,
            connections=len(sessions),
        )

    def attached(self):
        return sum(len(cgroup_program_ids(path)) for path in self.cgroups.values())


def payload_sizes(workdir, log=print):
    """Bytes of the AnsiballZ payload of ping and of each module of the collection, as built for
    /usr/bin/python3 (pipelining sends the same payload on stdin)."""
    remote_tmp = os.path.join(workdir, "remote_tmp")
    play = os.path.join(workdir, "payload.yml")
    tasks = [
        {"ansible.builtin.ping": {}},
        {paths.MODULE + "_info": {"pin_dir": os.path.join(workdir, "no_pins")}},
        # check mode on a cgroup that does not exist: fails after the payload ran, changes nothing
        {
            paths.MODULE: {"name": "payload", "cgroup": os.path.join(workdir, "none"), "mount_bpffs": False},
            "check_mode": True,
            "ignore_errors": True,
        },
    ]
    with open(play, "w") as handle:
        json.dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}], handle)
    inventory = playbook.localhost_inventory(workdir)
    env = dict(ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=remote_tmp, ANSIBLE_PIPELINING="0")
    playbook.timed_playbook(workdir, inventory, play, env=env)
    sizes = {}
    for path in glob.glob(os.path.join(remote_tmp, "*", "AnsiballZ_*.py")):
        sizes[os.path.basename(path)[len("AnsiballZ_") : -len(".py")]] = os.path.getsize(path)
    log("AnsiballZ payloads: %s" % sizes)
    return sizes


def sequence(playbooks, rounds):
    """The runs on one fleet, in order: each of playbooks once; with rounds above 1, ping and the
    no-op again, alternated, rounds - 1 times more before the rollback, so that a spell of load on
    the shared machine does not fall on one side of their ratio only."""
    again = [kind for kind in ("ping", "no-op") if kind in playbooks] * (rounds - 1)
    return (
        [kind for kind in playbooks if kind != "rollback"] + again + [kind for kind in playbooks if kind == "rollback"]
    )


def median_run(runs):
    """The run of median wall time (of the upper two for an even count), with every run's time as samples."""
    chosen = sorted(runs, key=lambda run_: run_["seconds"])[len(runs) // 2]
    return dict(chosen, samples=[run_["seconds"] for run_ in runs]) if len(runs) > 1 else chosen


def run(sizes, forks_list, log=print, playbooks=PLAYBOOKS, rounds=1):
    """For each fleet size and forks: ping, rollout, no-op rerun, rollback (or those of playbooks)
    on a fresh fleet, ping and the no-op rounds times each (sequence); without the rollback the
    fleet's teardown removes the instances."""
    assert "ping" in playbooks, "ratios are to ping: run it too"
    rows = []
    with lab.Lab() as lab_:
        workdir = lab_.tempdir()
        payloads = payload_sizes(lab_.tempdir(), log=log)
        server = SshServer(lab_, workdir)
        for hosts in sizes:
            for forks in forks_list:
                with lab.Lab() as fleet_lab:
                    fleet_dir = fleet_lab.tempdir()
                    fleet = SshFleet(fleet_lab, fleet_dir, server, hosts)
                    row = dict(hosts=hosts, forks=forks, load=os.getloadavg()[0])
                    runs = {}
                    for kind in sequence(playbooks, rounds):
                        log("fleet over SSH: %d hosts, forks %d: %s" % (hosts, forks, kind))
                        runs.setdefault(kind, []).append(fleet.timed(kind, forks))
                        log("  %s: %s" % (kind, json.dumps(runs[kind][-1], sort_keys=True)))
                        if kind == "rollout":
                            attached = fleet.attached()
                            assert attached == hosts, "%d of %d hosts hold the instance" % (attached, hosts)
                        if kind == "rollback":
                            assert fleet.attached() == 0, "the rollback left programs attached"
                    row["load_end"] = os.getloadavg()[0]
                    row["runs"] = {kind: median_run(runs[kind]) for kind in playbooks}
                    ping = row["runs"]["ping"]["seconds"]
                    ping_cpu = row["runs"]["ping"]["controller_cpu_ms"] + row["runs"]["ping"]["hosts_cpu_ms"]
                    for run_ in row["runs"].values():
                        run_["ratio"] = run_["seconds"] / ping
                        run_["per_host_ms"] = 1000.0 * run_["seconds"] / hosts
                        run_["cpu_ratio"] = (run_["controller_cpu_ms"] + run_["hosts_cpu_ms"]) / ping_cpu
                    log(
                        "  %s"
                        % ", ".join(
                            "%s %.1f s (%.2fx, %.1f round trips/host)"
                            % (kind, run_["seconds"], run_["ratio"], run_["round_trips"])
                            for kind, run_ in row["runs"].items()
                        )
                    )
                    rows.append(row)
    return dict(rows=rows, payloads=payloads, rounds=rounds)
