"""Effect: connect latency under SYN loss, kernel default vs the collection at several RTOs.

One server namespace, and per setting a client namespace joined to it by its own veth pair and
subnet (10.199.<n>.0/24, private, only inside these namespaces); nftables in the server namespace
drops a share of the incoming SYNs at random (numgen random). Each client runs N sequential
connects from its own sandbox cgroup; the collection's instance on that cgroup gives the client's
subnet the RTO under test, or rto_ms: auto (issue 14: what the handshakes to the server taught,
at the module's default bounds). The settings run side by side: a connect spends its time waiting for
timers, not on the CPU. An AF_PACKET capture on each client's veth times every first SYN against
its first retransmission.
"""

import json
import math
import os
import subprocess

import programs

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import info
from ansible_collections.netbpf.tcp_rto.tests.support import lab, paths
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz

PORT = 8080
KERNEL_DEFAULT_MS = 1000
AUTO = "auto"
EARLY_TOLERANCE_MS = 0.1  # the two kernel timestamps of a SYN and its retransmission


def percentile(values, share):
    """Nearest-rank percentile (share 0..100) of values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share / 100.0 * len(ordered)) - 1)]


def drop_syns(server_ns, loss_percent):
    ruleset = (
        "table inet tcprto_bench {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    tcp flags & (syn | ack) == syn numgen random mod 100 < %d drop\n"
        "  }\n"
        "}\n" % loss_percent
    )
    subprocess.run(["ip", "netns", "exec", server_ns, "nft", "-f", "-"], input=ruleset.encode(), check=True)


def start_server(lab_, server_ns):
    server = lab_.spawn(
        lab.in_netns(server_ns, [paths.MANAGED_PYTHON, lab.workload("accept_server.py"), "0.0.0.0", str(PORT)]),
        stdout=subprocess.PIPE,
        universal_newlines=True,
    )
    if server.stdout.readline().strip() != "ready":
        raise RuntimeError("the accept server in %s did not start" % server_ns)
    return server


def subnet_addresses(index):
    return "10.199.%d.1" % index, "10.199.%d.2" % index, "10.199.%d.0/24" % index


def start_connect_series(lab_, client_ns, server_address, interface, cgroup, count):
    command = [paths.MANAGED_PYTHON, lab.workload("connect_client.py"), cgroup, server_address, str(PORT), str(count)]
    return lab_.spawn(lab.in_netns(client_ns, [*command, interface]), stdout=subprocess.PIPE)


def collect(proc, timeout):
    out, _err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("a connect series failed (exit %d)" % proc.returncode)
    return json.loads(out)


def summarize(setting, rto_ms, series, jiffy_ms, hz):
    latencies_ms = [value * 1000 for value in series["latencies_s"]]
    retransmits_ms = [value * 1000 for value in series["first_retransmit_s"]]
    row = dict(
        setting=setting,
        rto_ms=rto_ms,
        connects=len(latencies_ms),
        latencies_ms=latencies_ms,
        p50_ms=percentile(latencies_ms, 50),
        p90_ms=percentile(latencies_ms, 90),
        p99_ms=percentile(latencies_ms, 99),
        max_ms=max(latencies_ms),
        retransmitted=len(retransmits_ms),
    )
    if retransmits_ms:
        row.update(
            retransmit_median_ms=percentile(retransmits_ms, 50),
            retransmit_min_ms=min(retransmits_ms),
            retransmit_max_ms=max(retransmits_ms),
        )
    if retransmits_ms and rto_ms is not None:
        granularity = wheel_granularity_jiffies(round(rto_ms * hz / 1000.0))
        deviations = [value - rto_ms for value in retransmits_ms]
        row.update(
            # a timer fires on the first tick after its expiry (never early): R < interval <= R + 1 jiffy,
            # and with the wheel's coarser levels R + granularity; both plus the timer softirq's latency
            within_jiffy=sum(1 for value in deviations if -EARLY_TOLERANCE_MS <= value <= jiffy_ms),
            wheel_granularity_jiffies=granularity,
            within_wheel=sum(1 for value in deviations if -EARLY_TOLERANCE_MS <= value <= granularity * jiffy_ms),
        )
    return row


def learned_hosts(pin_dir):
    """{(instance, host): what rto_ms: auto learned about it} of every instance under pin_dir."""
    return {
        (instance["name"], entry["host"]): entry
        for instance in info.gather(pin_dir)["instances"]
        for entry in instance.get("learned") or []
    }


def wheel_granularity_jiffies(rto_jiffies):
    """The kernel's timer wheel (kernel/time/timer.c) files a timer LVL_GRAN(n) = 8^n jiffies coarse,
    level n from its length: < 63 jiffies level 0, < 504 level 1, < 4032 level 2."""
    granularity, level_start = 1, 63
    while rto_jiffies >= level_start:
        granularity, level_start = granularity * 8, level_start * 8
    return granularity


def run(connects, losses_percent, rtos_ms=(100, 200, 500), log=print):
    """-> one result per SYN loss rate; all rates and settings run side by side."""
    hz = kernel_hz()
    jiffy_ms = 1000.0 / hz
    settings = [("kernel default", None)] + [("collection %d ms" % rto, rto) for rto in rtos_ms]
    settings.append(("collection, auto", AUTO))
    series, program_ids = {}, []
    with lab.Lab() as lab_:
        pin_dir = os.path.join(lab_.bpffs(), "tcp_rto")
        log(
            "effect: %d settings x %s %% SYN loss side by side, %d connects each"
            % (len(settings), "/".join(str(loss) for loss in losses_percent), connects)
        )
        for loss_index, loss_percent in enumerate(losses_percent):
            server_ns = lab_.netns("s%d" % loss_index)
            drop_syns(server_ns, loss_percent)
            start_server(lab_, server_ns)
            for index, (_setting, rto_ms) in enumerate(settings):
                subnet_index = loss_index * len(settings) + index
                client_address, server_address, subnet = subnet_addresses(subnet_index)
                client_ns = lab_.netns("c%d" % subnet_index)
                interface = lab.veth_pair(client_ns, server_ns, client_address, server_address, 24, index)
                cgroup = lab_.cgroup(label="bench-effect")
                if rto_ms is not None:
                    name = "bench%d" % subnet_index
                    program_ids.append(programs.apply_collection(name, cgroup, pin_dir, [(subnet, rto_ms)]))
                series[loss_percent, index] = start_connect_series(
                    lab_, client_ns, server_address, interface, cgroup, connects
                )
        # a generous bound: 2 s per connect
        outputs = {key: collect(proc, timeout=60 + connects * 2.0) for key, proc in series.items()}
        learned = learned_hosts(pin_dir)
    results = []
    for loss_index, loss_percent in enumerate(losses_percent):
        rows = []
        for index, (setting, rto_ms) in enumerate(settings):
            series_output = outputs[loss_percent, index]
            if rto_ms == AUTO:  # no one RTO to hold the retransmissions against: the learned one is shown
                subnet_index = loss_index * len(settings) + index
                row = summarize(setting, None, series_output, jiffy_ms, hz)
                row["learned"] = learned.get(("bench%d" % subnet_index, subnet_addresses(subnet_index)[1]))
            else:
                configured_ms = KERNEL_DEFAULT_MS if rto_ms is None else math.ceil(rto_ms * hz / 1000.0) * jiffy_ms
                row = summarize(setting, configured_ms, series_output, jiffy_ms, hz)
            rows.append(row)
        for row in rows:
            row["default_p99_ratio"] = rows[0]["p99_ms"] / row["p99_ms"]
        results.append(
            dict(
                loss_percent=loss_percent,
                connects=connects,
                hz=hz,
                jiffy_ms=jiffy_ms,
                rows=rows,
                program_ids=program_ids,
            )
        )
    return results
