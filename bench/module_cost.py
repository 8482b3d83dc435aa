"""Module cost: ansible-playbook against localhost, the module vs ansible.builtin.command: /bin/true.

Three plays, run in interleaved rounds so that the shared machine's slow spells hit all alike:
- baseline: ansible.builtin.command: /bin/true
- no-op: tcp_initial_rto with an unchanged configuration (instance applied once before the rounds)
- change: tcp_initial_rto on a second instance whose rule alternates 200 / 300 ms (a change each run)
Plus the manual anchor: the blog's sequence (clang compile, bpftool prog load, bpftool cgroup
attach), each step timed, detached and unpinned between runs.
"""

import os
import statistics

import programs

from ansible_collections.netbpf.tcp_rto.tests.support import bpf_inventory, lab, paths, playbook
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz

RULE_DEST = "127.0.0.0/8"


def module_task(name, cgroup, pin_dir, rto_ms):
    args = dict(
        name=name, cgroup=cgroup, pin_dir=pin_dir, mount_bpffs=False, rules=[dict(dest=RULE_DEST, rto_ms=rto_ms)]
    )
    return {"name": "tcp_initial_rto", paths.MODULE: args}


def run(runs, log=print):
    hz = kernel_hz()
    with lab.Lab() as lab_:
        workdir = lab_.tempdir()
        bpffs = lab_.bpffs()
        pin_dir = os.path.join(bpffs, "tcp_rto")
        inventory = playbook.localhost_inventory(workdir)
        noop_cgroup, change_cgroup, blog_cgroup = (lab_.cgroup(label="bench-module") for _round in range(3))
        plays = {
            "command /bin/true": playbook.write_play(
                os.path.join(workdir, "baseline.yml"), "localhost", [{"ansible.builtin.command": "/bin/true"}]
            ),
            "no-op": playbook.write_play(
                os.path.join(workdir, "noop.yml"), "localhost", [module_task("noop", noop_cgroup, pin_dir, 200)]
            ),
            "change": [
                playbook.write_play(
                    os.path.join(workdir, "change%d.yml" % rto),
                    "localhost",
                    [module_task("change", change_cgroup, pin_dir, rto)],
                )
                for rto in (200, 300)
            ],
        }
        playbook.timed_playbook(workdir, inventory, plays["no-op"])  # first apply, not timed
        playbook.timed_playbook(workdir, inventory, plays["change"][1])
        times = {kind: [] for kind in plays}
        log("module cost: %d rounds of %s" % (runs, ", ".join(plays)))
        for round_index in range(runs):
            for kind, play in plays.items():
                play_path = play[round_index % 2] if kind == "change" else play
                times[kind].append(playbook.timed_playbook(workdir, inventory, play_path))

        log("module cost: manual anchor, %d runs" % runs)
        program_ids = bpf_inventory.cgroup_program_ids(noop_cgroup) + bpf_inventory.cgroup_program_ids(change_cgroup)
        manual = {}
        for _round in range(runs):
            steps, pin = programs.manual_sequence(workdir, blog_cgroup, bpffs, hz)
            program_ids.append(programs.program_id_of_pin(pin))
            programs.detach_blog(blog_cgroup, pin)
            os.unlink(pin)
            for step, seconds in steps.items():
                manual.setdefault(step, []).append(seconds)
            manual.setdefault("total", []).append(sum(steps.values()))

    medians = {kind: statistics.median(values) for kind, values in times.items()}
    baseline = medians["command /bin/true"]
    return dict(
        runs=runs,
        times=times,
        medians=medians,
        ratios={kind: medians[kind] / baseline for kind in ("no-op", "change")},
        manual=manual,
        program_ids=program_ids,
        manual_medians={step: statistics.median(values) for step, values in manual.items()},
    )
