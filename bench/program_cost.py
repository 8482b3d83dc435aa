"""Program cost: the collection's program vs the blog's, per invocation and per connection.

Five sandbox cgroups: one without a program, one with the collection's instance (rule
127.0.0.0/8 -> 3000 ms, the blog's value, so both do the same job), one with the same instance
from the program built with its telemetry off (programs.TELEMETRY_OFF), one with the rule at
rto_ms: auto (issue 14: every connection looks its host up in the learned map, records its answer
and learns from its handshake), one with the blog's program loaded and attached by bpftool. Loopback
connect + accept workloads run in a private network namespace:
- rates: one worker per cgroup, all on one CPU, taking turns in batches of RING_BATCH connections
  (a few ms each; workloads/loopback_ring.py) with kernel.bpf_stats_enabled as found (normally 0:
  no timing overhead). A slow spell of the shared machine lasts far longer than a round of five
  batches, so each round compares the settings under the same conditions; the overhead is the
  ratio of the summed times, with a 95 % interval from the spread of the per-round ratios;
- then with kernel.bpf_stats_enabled=1 (restored afterwards), each program's run_time_ns / run_cnt.
"""

import json
import os
import statistics
import subprocess

import programs

from ansible_collections.netbpf.tcp_rto.tests.support import lab, paths
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz

SETTINGS = ("no program", "collection", "collection, telemetry off", "collection, auto", "blog")
PROGRAMS = SETTINGS[1:]
RING_BATCH = 200  # connections per turn: ≈ 4 ms here, well inside a slow spell of the machine
RING_CPU = 1


def load_run(netns, cgroup, seconds):
    out = lab.run(
        lab.in_netns(netns, [paths.MANAGED_PYTHON, lab.workload("loopback_load.py"), cgroup, str(seconds)]),
        stdout=subprocess.PIPE,
        universal_newlines=True,
    )
    return json.loads(out)


def ring_run(netns, cgroups, seconds):
    """workloads/loopback_ring.py over cgroups (in that order) -> its rounds: [[wall s, CPU s] per cgroup]."""
    command = [paths.MANAGED_PYTHON, lab.workload("loopback_ring.py"), str(seconds), str(RING_BATCH), str(RING_CPU)]
    out = lab.run(lab.in_netns(netns, command + list(cgroups)), stdout=subprocess.PIPE, universal_newlines=True)
    return json.loads(out)["rounds"]


def ring_summary(rounds):
    """Per setting, in SETTINGS order (a list: the results' JSON sorts keys): connections/s (wall
    and CPU) over all its batches, and against no program the extra time per connection in % (ratio
    of the summed times) with the half width of its 95 % interval (1.96 standard errors of the
    per-round ratios)."""
    summary = []
    for index, setting in enumerate(SETTINGS):
        entry = {"setting": setting}
        for clock, position in (("wall", 0), ("cpu", 1)):
            total = sum(times[index][position] for times in rounds)
            baseline = sum(times[0][position] for times in rounds)
            ratios = [times[index][position] / times[0][position] for times in rounds]
            spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
            entry[clock + "_rate"] = RING_BATCH * len(rounds) / total
            if index:
                entry[clock + "_overhead_percent"] = (total / baseline - 1) * 100
                entry[clock + "_interval_percent"] = 196 * spread / len(ratios) ** 0.5
        summary.append(entry)
    return summary


def run(rounds, seconds, log=print):
    hz = kernel_hz()
    with lab.Lab() as lab_:
        netns = lab_.netns("load")
        bpffs = lab_.bpffs()
        workdir = lab_.tempdir()
        cgroups = {setting: lab_.cgroup(label="bench-cost") for setting in SETTINGS}
        pin_dir = os.path.join(bpffs, "tcp_rto")
        collection_id = programs.apply_collection(
            "cost", cgroups["collection"], pin_dir, [("127.0.0.0/8", programs.BLOG_RTO_S * 1000)]
        )
        quiet_id = programs.apply_collection(
            "cost-quiet",
            cgroups["collection, telemetry off"],
            pin_dir,
            [("127.0.0.0/8", programs.BLOG_RTO_S * 1000)],
            src=programs.build_without_telemetry(workdir),
        )
        auto_id = programs.apply_collection(
            "cost-auto", cgroups["collection, auto"], pin_dir, [("127.0.0.0/8", "auto")]
        )
        _times, blog_pin = programs.manual_sequence(workdir, cgroups["blog"], bpffs, hz)
        lab_.defer(programs.detach_blog, cgroups["blog"], blog_pin)
        program_ids = {
            "collection": collection_id,
            "collection, telemetry off": quiet_id,
            "collection, auto": auto_id,
            "blog": programs.program_id_of_pin(blog_pin),
        }

        ring_seconds = rounds * seconds * len(SETTINGS)
        log(
            "program cost: %d settings taking turns in batches of %d connections for %.0f s"
            % (len(SETTINGS), RING_BATCH, ring_seconds)
        )
        ring_rounds = ring_run(netns, [cgroups[setting] for setting in SETTINGS], ring_seconds)

        lab_.bpf_stats_enabled()
        per_program = {}
        for setting, prog_id in program_ids.items():
            before = programs.program_stats(prog_id)
            connections = 0
            for _round in range(rounds):
                connections += load_run(netns, cgroups[setting], seconds)["connections"]
            after = programs.program_stats(prog_id)
            run_time_ns, run_cnt = after[0] - before[0], after[1] - before[1]
            per_program[setting] = dict(
                program_id=prog_id,
                run_time_ns=run_time_ns,
                run_cnt=run_cnt,
                connections=connections,
                ns_per_invocation=run_time_ns / run_cnt if run_cnt else None,
                invocations_per_connection=run_cnt / connections,
                ns_per_connection=run_time_ns / connections,
            )
        programs.remove_collection("cost", cgroups["collection"], pin_dir)
        programs.remove_collection("cost-quiet", cgroups["collection, telemetry off"], pin_dir)
        programs.remove_collection("cost-auto", cgroups["collection, auto"], pin_dir)

    ring = ring_summary(ring_rounds)
    return dict(
        rounds=rounds,
        seconds=seconds,
        ring_batch=RING_BATCH,
        ring_rounds=len(ring_rounds),
        ring=ring,
        programs=per_program,
        program_ids=sorted(program_ids.values()),
        ns_ratio=per_program["collection"]["ns_per_invocation"] / per_program["blog"]["ns_per_invocation"],
        ns_per_connection_ratio=per_program["collection"]["ns_per_connection"]
        / per_program["blog"]["ns_per_connection"],
        telemetry_ns_per_connection=per_program["collection"]["ns_per_connection"]
        - per_program["collection, telemetry off"]["ns_per_connection"],
        auto_ns_per_connection_ratio=per_program["collection, auto"]["ns_per_connection"]
        / per_program["collection"]["ns_per_connection"],
    )
