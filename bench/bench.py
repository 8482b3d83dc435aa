"""Runs the benchmarks and writes docs/performance.md and the connect latency CDF plot.

Usage (as root, through bench/run): bench/run [--smoke] [--out-dir DIR] [--only NAME ...] [sizes]
--smoke runs every benchmark at a tiny size (the smoke test does, into a temp dir). --json FILE
also writes the raw results there (ids of the programs the run created included, for leak checks).
"""

import argparse
import json
import os
import sys
import time

import effect
import fleet_cost
import fleet_ssh
import module_cost
import program_cost
import report

from ansible_collections.netbpf.tcp_rto.tests.support import lab, paths

BENCHMARKS = ("effect", "program", "module", "fleet", "ssh")
# ssh (the playbooks over SSH at 10 to 300 hosts, about 40 minutes on 2 cores) runs when named:
# bench/run --only ssh updates its own section of performance.md and leaves the others as they are.
DEFAULT_BENCHMARKS = ("effect", "program", "module", "fleet")
FULL = dict(
    connects=1000,
    loss=[10, 20],
    cost_rounds=9,
    cost_seconds=1.5,
    module_runs=10,
    fleet_hosts=100,
    fleet_rounds=3,
    ssh_hosts=[10, 100, 300],
    ssh_forks=[5, 50],
    ssh_rounds=1,
)
SMOKE = dict(
    connects=10,
    loss=[30],
    cost_rounds=1,
    cost_seconds=0.3,
    module_runs=1,
    fleet_hosts=3,
    fleet_rounds=1,
    ssh_hosts=[3],
    ssh_forks=[5],
    ssh_rounds=1,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.join(paths.REPO, "docs"), help="where performance.md goes")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--from-json", help="run nothing: write the doc again from the results of an earlier --json")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmarks run")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(DEFAULT_BENCHMARKS))
    parser.add_argument("--sweep", action="store_true", help="only remove what killed runs left, then exit")
    parser.add_argument("--connects", type=int, help="effect: sequential connects per setting")
    parser.add_argument("--loss", type=int, nargs="+", help="effect: SYN loss rates in %%, run side by side")
    parser.add_argument("--cost-rounds", type=int, help="program cost: interleaved rounds")
    parser.add_argument("--cost-seconds", type=float, help="program cost: seconds of load per round and setting")
    parser.add_argument("--module-runs", type=int, help="module cost: runs of each play (medians)")
    parser.add_argument("--fleet-hosts", type=int, help="fleet cost: inventory hosts")
    parser.add_argument("--fleet-rounds", type=int, help="fleet cost: rounds, each with a fresh fleet")
    parser.add_argument("--ssh-hosts", type=int, nargs="+", help="fleet over SSH: fleet sizes")
    parser.add_argument("--ssh-forks", type=int, nargs="+", help="fleet over SSH: forks settings")
    parser.add_argument(
        "--ssh-rounds", type=int, help="fleet over SSH: runs of ping and of the no-op, alternated (medians)"
    )
    parser.add_argument(
        "--ssh-playbooks",
        nargs="+",
        choices=fleet_ssh.PLAYBOOKS,
        default=list(fleet_ssh.PLAYBOOKS),
        help="fleet over SSH: runs",
    )
    parser.add_argument("--ssh-baseline", help="fleet over SSH: an earlier --json whose table is shown as the baseline")
    parser.add_argument("--ssh-baseline-label", default="an earlier run", help="what the baseline was")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def log(message):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), message), flush=True)


def main(argv):
    if os.geteuid() != 0:
        sys.exit("bench/run: run as root: the benchmarks load BPF programs, create cgroups and namespaces")
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as handle:
            report.write(json.load(handle), args.out_dir)
        return 0
    lab.install_signal_handlers()
    lab.sweep_leftovers()
    if args.sweep:
        return 0
    results = dict(machine=report.machine(), started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_start=os.getloadavg())
    results["sizes"] = {key: getattr(args, key) for key in FULL}
    results["smoke"] = args.smoke
    started = time.monotonic()
    try:
        if "effect" in args.only:
            results["effect"] = effect.run(args.connects, args.loss, log=log)
        if "program" in args.only:
            results["program"] = program_cost.run(args.cost_rounds, args.cost_seconds, log=log)
        if "module" in args.only:
            results["module"] = module_cost.run(args.module_runs, log=log)
        if "fleet" in args.only:
            results["fleet"] = fleet_cost.run(args.fleet_hosts, args.fleet_rounds, log=log)
        if "ssh" in args.only:
            results["ssh"] = fleet_ssh.run(
                args.ssh_hosts, args.ssh_forks, log=log, playbooks=args.ssh_playbooks, rounds=args.ssh_rounds
            )
            if args.ssh_baseline:
                with open(args.ssh_baseline) as handle:
                    results["ssh"]["baseline"] = dict(json.load(handle)["ssh"], label=args.ssh_baseline_label)
    except KeyboardInterrupt:
        log("interrupted: everything the benchmarks created is removed")
        return 130
    results["duration_s"] = time.monotonic() - started
    results["load_end"] = os.getloadavg()
    os.makedirs(args.out_dir, exist_ok=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, sort_keys=True)
    report.write(results, args.out_dir)
    log("wrote %s (%.0f s)" % (os.path.join(args.out_dir, "performance.md"), results["duration_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
