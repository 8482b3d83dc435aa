"""Fleet cost: one play over N inventory hosts, the module vs ansible.builtin.ping.

One machine stands in for the fleet, as tests/integration/test_fleet.py does: every inventory host
has the local connection, its own child cgroup and instance, its own pin_dir (in a private bpffs)
and its own root for the files of persistence (the test aid TCP_RTO_TEST_PERSIST_ROOT), and the
module runs with persistent: true as a rollout does. Per round, with a fresh fleet: the rollout (every host changes), the same play again (no-op), and the same
play shape with ansible.builtin.ping. Ansible's default forks (5).
"""

import os
import statistics

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host_paths
from ansible_collections.netbpf.tcp_rto.tests.support import bpf_inventory, lab, paths, playbook

RULES = [dict(dest="127.0.0.0/8", rto_ms=200)]


def write_inventory(workdir, cgroup_parent, bpffs, hosts):
    path = os.path.join(workdir, "fleet.ini")
    lines = ["[fleet]"]
    for index in range(hosts):
        host = "h%03d" % index
        cgroup = os.path.join(cgroup_parent, host)
        os.mkdir(cgroup)
        lines.append(
            "%s ansible_connection=local ansible_python_interpreter=%s bench_cgroup=%s bench_pin_dir=%s "
            "bench_persist_root=%s"
            % (host, paths.MANAGED_PYTHON, cgroup, os.path.join(bpffs, host), os.path.join(workdir, "root", host))
        )
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


MODULE_TASK = {
    "name": "tcp_initial_rto",
    paths.MODULE: dict(
        name="{{ inventory_hostname }}",
        cgroup="{{ bench_cgroup }}",
        pin_dir="{{ bench_pin_dir }}",
        mount_bpffs=False,
        rules=RULES,
        persistent=True,
    ),
    "environment": {host_paths.TEST_ROOT_ENVIRONMENT: "{{ bench_persist_root }}"},
}


def run(hosts, rounds, log=print):
    times = {"ping": [], "rollout": [], "no-op": []}
    program_ids = []
    for round_index in range(rounds):
        log("fleet cost: round %d of %d, %d hosts" % (round_index + 1, rounds, hosts))
        with lab.Lab() as lab_:
            workdir = lab_.tempdir()
            fleet_cgroup = lab_.cgroup(label="bench-fleet")
            inventory = write_inventory(workdir, fleet_cgroup, lab_.bpffs(), hosts)
            module_play = playbook.write_play(os.path.join(workdir, "rollout.yml"), "fleet", [MODULE_TASK])
            ping_play = playbook.write_play(os.path.join(workdir, "ping.yml"), "fleet", [{"ansible.builtin.ping": {}}])
            times["ping"].append(playbook.timed_playbook(workdir, inventory, ping_play))
            times["rollout"].append(playbook.timed_playbook(workdir, inventory, module_play))
            times["no-op"].append(playbook.timed_playbook(workdir, inventory, module_play))
            for host in sorted(os.listdir(fleet_cgroup)):
                if host.startswith("h"):
                    program_ids += bpf_inventory.cgroup_program_ids(os.path.join(fleet_cgroup, host))
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    return dict(
        hosts=hosts,
        rounds=rounds,
        times=times,
        medians=medians,
        program_ids=program_ids,
        ratios={kind: medians[kind] / medians["ping"] for kind in ("rollout", "no-op")},
    )
