"""Program cost: the collection's program vs the blog's, per invocation and per connection.

Five sandbox cgroups: one without a program, one with the collection's instance (rule
127.0.0.0/8 -> 3000 ms, the blog's value, so both do the same job), one with the same instance
from the program built with its telemetry off (programs.TELEMETRY_OFF), one with the rule at
rto_ms: auto (issue 14: every connection looks its host up in the learned map, records its answer
and learns from its handshake), one with the blog's program loaded and attached by bpftool. A loopback connect + accept workload runs in a private network
namespace from one cgroup at a time, in interleaved rounds:
- rates (connections/s) with kernel.bpf_stats_enabled as found (normally 0: no timing overhead);
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


def load_run(netns, cgroup, seconds):
    out = lab.run(
        lab.in_netns(netns, [paths.MANAGED_PYTHON, lab.workload("loopback_load.py"), cgroup, str(seconds)]),
        stdout=subprocess.PIPE,
        universal_newlines=True,
    )
    return json.loads(out)


def _overhead(rates):
    """Extra time per connection with each program, in % of the time without one."""
    return {setting: (rates["no program"] / rates[setting] - 1) * 100 for setting in PROGRAMS}


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

        rates = {setting: [] for setting in SETTINGS}
        cpu_rates = {setting: [] for setting in SETTINGS}
        log("program cost: %d rounds x %d settings x %.1f s of loopback connects" % (rounds, len(SETTINGS), seconds))
        for round_index in range(rounds):
            # a different order each round, so that a slow spell of the shared machine hits all alike
            shift = round_index % len(SETTINGS)
            order = SETTINGS[shift:] + SETTINGS[:shift]
            for setting in order:
                result = load_run(netns, cgroups[setting], seconds)
                rates[setting].append(result["connections"] / result["seconds"])
                cpu_rates[setting].append(result["connections"] / result["cpu_seconds"])

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

    median_rates = {setting: statistics.median(values) for setting, values in rates.items()}
    median_cpu_rates = {setting: statistics.median(values) for setting, values in cpu_rates.items()}
    return dict(
        rounds=rounds,
        seconds=seconds,
        rates=rates,
        cpu_rates=cpu_rates,
        median_rates=median_rates,
        median_cpu_rates=median_cpu_rates,
        overhead_percent=_overhead(median_rates),
        cpu_overhead_percent=_overhead(median_cpu_rates),
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
