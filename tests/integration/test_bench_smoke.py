"""The benchmarks (bench/) at a tiny size, so that they cannot rot: each produces sane results and
leaves nothing behind (namespaces, cgroups, bpffs mounts, temp dirs, programs, and the
kernel.bpf_stats_enabled value), also when interrupted or killed. No timing asserts."""

import json
import os
import signal
import subprocess
import time

import pytest

from ansible_collections.netbpf.tcp_rto.tests.support import lab
from ansible_collections.netbpf.tcp_rto.tests.support.paths import REPO

pytestmark = pytest.mark.kernel

BENCH_RUN = os.path.join(REPO, "bench", "run")  # as the docs say to run the benchmarks

BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"
PROGRAMS = ("collection", "collection, telemetry off", "collection, auto", "blog")  # bench/program_cost.py


def bpf_stats():
    with open(BPF_STATS) as handle:
        return handle.read().strip()


def start_bench(out_dir, *args):
    return subprocess.Popen(
        [BENCH_RUN, "--out-dir", str(out_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the benchmark"
        time.sleep(0.1)


def existing_program_ids(ids):
    """Those of ids the kernel still has, after the grace period in which it frees programs."""
    deadline = time.monotonic() + 5
    while True:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], stdout=subprocess.PIPE, check=True).stdout
        left = sorted({prog["id"] for prog in json.loads(out)} & set(ids))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def assert_series(row, connects):
    assert row["connects"] == connects == len(row["latencies_ms"])
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]


def test_every_benchmark_at_tiny_size(tmp_path):
    stats_before = bpf_stats()
    bench = start_bench(tmp_path, "--smoke", "--json", str(tmp_path / "results.json"))
    output = bench.communicate(timeout=600)[0]
    assert bench.returncode == 0, output

    with open(tmp_path / "results.json") as handle:
        results = json.load(handle)
    [effect] = results["effect"]
    assert [row["setting"] for row in effect["rows"]] == [
        "kernel default",
        "collection 100 ms",
        "collection 200 ms",
        "collection 500 ms",
        "collection, auto",
    ]
    for row in effect["rows"]:
        assert_series(row, 10)
    # rto_ms: auto learned the server from the clean handshakes (7 of 10 expected at 30 % SYN loss)
    [auto] = [row for row in effect["rows"] if row["setting"] == "collection, auto"]
    assert auto["learned"]["samples"] > 0 and auto["learned"]["host"].startswith("10.199."), auto["learned"]
    # 30 % of SYNs dropped, 40 connects: some retransmit (all succeed with p = 0.7^40). Each setting's
    # retransmissions come after its own RTO, never before, and the collection's before the default's.
    assert sum(row["retransmitted"] for row in effect["rows"]) > 0
    for row in effect["rows"]:
        if row["retransmitted"] and row["rto_ms"] is not None:  # auto: no one RTO (the maximum until it learned)
            assert row["retransmit_min_ms"] >= row["rto_ms"] - 0.1, row
            if row["setting"] != "kernel default":
                assert row["retransmit_max_ms"] < 1000, row

    program = results["program"]
    for name in PROGRAMS:
        entry = program["programs"][name]
        assert entry["run_cnt"] > 0 and entry["ns_per_invocation"] > 0, entry
        assert entry["invocations_per_connection"] >= 2  # the two TIMEOUT_INIT calls at least
    ring = program["ring"]
    assert program["ring_rounds"] >= 1 and [entry["setting"] for entry in ring] == ["no program", *PROGRAMS]
    assert all(entry["wall_rate"] > 0 and entry["cpu_rate"] > 0 for entry in ring)
    assert all("cpu_overhead_percent" in entry for entry in ring[1:])

    module = results["module"]
    assert set(module["medians"]) == {"command /bin/true", "no-op", "change"}
    assert set(module["manual"]) == {"clang compile", "bpftool prog load", "bpftool cgroup attach", "total"}
    fleet = results["fleet"]
    assert fleet["hosts"] == 3 and len(fleet["program_ids"]) == 3  # one instance per inventory host

    with open(tmp_path / "performance.md") as handle:
        doc = handle.read()
    for heading in ("## Targets", "## Effect", "## Program cost", "## Module cost", "## Fleet cost"):
        assert heading in doc
    with open(tmp_path / "images" / "connect_latency_cdf.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

    assert lab.owned_leftovers(bench.pid) == []
    assert bpf_stats() == stats_before
    created = effect["program_ids"] + program["program_ids"] + module["program_ids"] + fleet["program_ids"]
    # the effect's four collection settings (three values and auto), one program per program-cost
    # setting, the module's two loads and its manual one, one per fleet host
    assert len(created) == 4 + len(program["programs"]) + 2 + 1 + 3
    assert existing_program_ids(created) == []


def test_interrupt_removes_everything(tmp_path):
    """SIGINT while the effect benchmark's namespaces exist and its clients connect."""
    bench = start_bench(tmp_path, "--smoke", "--only", "effect", "--connects", "100000")
    wait_for(lambda: len([name for name in lab.owned_leftovers(bench.pid) if name.startswith("tcprto-b-")]) >= 5)
    time.sleep(1)
    bench.send_signal(signal.SIGINT)
    output = bench.communicate(timeout=60)[0]
    assert bench.returncode == 130, output
    assert lab.owned_leftovers(bench.pid) == []


def test_terminate_restores_bpf_stats(tmp_path):
    """SIGTERM while the program cost benchmark has kernel.bpf_stats_enabled switched on."""
    stats_before = bpf_stats()
    bench = start_bench(tmp_path, "--smoke", "--only", "program", "--cost-rounds", "20")
    state_file = "/run/tcprto-b-%d.bpf_stats" % bench.pid
    wait_for(lambda: os.path.exists(state_file))
    assert bpf_stats() == "1"
    bench.send_signal(signal.SIGTERM)
    output = bench.communicate(timeout=60)[0]
    assert bench.returncode == 130, output
    assert bpf_stats() == stats_before
    assert lab.owned_leftovers(bench.pid) == []


def test_sweep_removes_what_a_killed_run_left(tmp_path):
    """SIGKILL leaves everything behind; the next start (here: --sweep) removes it by owner pid."""
    stats_before = bpf_stats()
    bench = start_bench(tmp_path, "--smoke", "--only", "program", "--cost-rounds", "20")
    wait_for(lambda: os.path.exists("/run/tcprto-b-%d.bpf_stats" % bench.pid))
    bench.kill()
    bench.wait()
    left = lab.owned_leftovers(bench.pid)
    assert any(name.startswith("tcprto-b-") for name in left)  # its namespace
    assert any(os.path.basename(name).startswith("tcp_rto_test-bench-cost-") for name in left)
    sweep = subprocess.run(
        [BENCH_RUN, "--sweep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        check=False,
    )
    assert sweep.returncode == 0, sweep.stdout
    assert lab.owned_leftovers(bench.pid) == []
    assert bpf_stats() == stats_before


@pytest.mark.slow  # about 2 minutes on a loaded 2-core machine
def test_ssh_fleet_at_ten_hosts(tmp_path):
    """bench/run --only ssh at 10 hosts: the README's playbooks over real SSH through the bench's own
    sshd. Each host is one SSH connection; ping and the rollout (changing, then no-op) are one
    remote command per host, the rollback three; ping and the no-op run twice (--ssh-rounds 2), the row shows their median
    run; nothing is left behind (sshd, SSH masters, cgroups, bpffs, files)."""
    bench = start_bench(
        tmp_path,
        *("--only", "ssh", "--ssh-hosts", "10", "--ssh-forks", "5", "--ssh-rounds", "2"),
        *("--json", str(tmp_path / "results.json")),
    )
    output = bench.communicate(timeout=900)[0]
    assert bench.returncode == 0, output
    with open(tmp_path / "results.json") as handle:
        results = json.load(handle)["ssh"]
    [row] = results["rows"]
    assert row["hosts"] == 10 and set(row["runs"]) == {"ping", "rollout", "no-op", "rollback"}
    for kind, run in row["runs"].items():
        assert run["connections"] == 10, (kind, run)
        assert run["controller_cpu_ms"] > 0 and run["hosts_cpu_ms"] > 0, (kind, run)
    for kind in ("ping", "rollout", "no-op"):
        assert row["runs"][kind]["round_trips"] == row["runs"][kind]["round_trips_max"] == 1, (kind, row["runs"][kind])
    # read the history, remove the instance's records, remove the instance (test_fleet says which)
    assert row["runs"]["rollback"]["round_trips"] == row["runs"]["rollback"]["round_trips_max"] == 3, row["runs"]
    for kind in ("ping", "no-op"):
        assert len(row["runs"][kind]["samples"]) == 2 and row["runs"][kind]["seconds"] == max(
            row["runs"][kind]["samples"]
        )
    assert "samples" not in row["runs"]["rollout"] and "samples" not in row["runs"]["rollback"]
    assert set(results["payloads"]) == {"ping", "tcp_initial_rto", "tcp_initial_rto_info"}
    assert all(size > 0 for size in results["payloads"].values())
    with open(tmp_path / "performance.md") as handle:
        doc = handle.read()
    assert "## Fleet over SSH" in doc and doc.count("| 10 | 5 |") == 4 and doc.count("(median of ") == 2
    assert lab.owned_leftovers(bench.pid) == []
