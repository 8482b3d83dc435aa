"""The kernel matrix job, run by tests/kernels/init inside each qemu guest.

Every step runs the AnsiballZ payload that the host built for it (steps.py), as a managed host
runs a task; each scenario then checks the result, and the kernel itself (BPF_PROG_QUERY, links,
pins, real sockets). Results go to the serial console as lines matrix.py parses:

    @@TCPRTO INFO {...}                      the kernel, CONFIG_HZ, RLIMIT_MEMLOCK at start
    @@TCPRTO CELL <scenario> PASS|FAIL {...} one per scenario: a note for the table, seconds
    @@TCPRTO BEGIN <scenario> ... @@TCPRTO END <scenario>   why a cell failed, the step's result
                                                            JSON and the verifier log
    @@TCPRTO DONE
"""

import functools
import json
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import time
import traceback

import netem
import veth
from guest_kernel import (
    ATTACH,
    CONFIG,
    HZ,
    JIFFY_MS,
    PIN_DIR,
    RELEASE,
    TCP_TIMEOUT_INIT_MS,
    VERSION,
    Failed,
    check,
    connect_give_up,
    in_cgroup,
    links_of,
    program_exists,
    syn_timers,
    synack_timers,
    wheel_granule,
)
from steps import AUTO_FACTOR, GUEST_ROOT, SCENARIOS, SCENARIOS_PARAMETER, STEPS, cgroup

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_info,
    bpf_syscall,
    features,
    learned,
    probe,
    syn_give_up,
    telemetry,
    uapi,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.coexistence import attached_program_ids
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current

MARK = "@@TCPRTO"


def emit(*words):
    print(MARK, *words, flush=True)


def run_step(name, memlock=None, missing=None, may_fail=False):
    """The step's payload under this Python, as Ansible runs a module: -> its result dict.
    memlock: the RLIMIT_MEMLOCK (soft and hard) it starts with; missing: the features its probes
    report missing (TCP_RTO_FORCE_MISSING); may_fail: return a failed result instead of raising."""
    payload = os.path.join(GUEST_ROOT, "payloads", name + ".py")
    limit = None if memlock is None else (lambda: resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock)))
    env = dict(os.environ)
    if missing:
        env[features.FORCE_MISSING_ENVIRONMENT] = missing
    proc = subprocess.run(
        [sys.executable, payload],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=180,
        cwd="/root",
        preexec_fn=limit,
        env=env,
        check=False,
    )
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise Failed(
            "step %s printed no JSON result (rc %d)" % (name, proc.returncode),
            name,
            {"rc": proc.returncode, "stdout": proc.stdout[-4000:], "stderr": proc.stderr[-4000:]},
        )
    if result.get("failed") and not may_fail:
        msg = str(result.get("msg", "")).split("Verifier log:", maxsplit=1)[0]
        raise Failed("step %s failed: %s" % (name, msg[:300].strip()), name, result)
    return result


def rto_us(ms):
    """What TCP_INFO shows for rto_ms: whole jiffies, rounded up as the module does."""
    return -(-ms * HZ // 1000) * 1000000 // HZ


def checks_of(result):
    return {item["direction"]: item["expected_ms"] for item in result["verification"]["checks"]}


def prog_id(result):
    return result["instance"]["program_id"]


# ---------------------------------------------------------------- scenarios
# Each returns a short note for the table; a failed check raises Failed.

STATE = {}


def scenario_apply():
    os.mkdir(cgroup("main"))
    result = run_step("apply")
    step = "apply"
    check(result["changed"] is True, "changed is not true", step, result)
    check("mount bpffs on /sys/fs/bpf" in result["actions"], "the module did not mount bpffs", step, result)
    check(
        result["verification"]["ok"] and checks_of(result) == {"outgoing": 200, "incoming": 200},
        "verification is not ok for 200 ms both ways",
        step,
        result,
    )
    check(
        result["kernel"]["hz"] == HZ and result["kernel"]["hz_source"] == CONFIG,
        "HZ %s from %s, expected %d from %s" % (result["kernel"]["hz"], result["kernel"]["hz_source"], HZ, CONFIG),
        step,
        result,
    )
    probed = {name: result["kernel"]["features"][name] for name in features.PROBE_NAMES}
    expected = dict(dict.fromkeys(features.PROBE_NAMES, True), memcg_accounting=VERSION >= (5, 11))
    check(probed == expected, "probed features %s, expected %s" % (probed, expected), step, result)
    pid = prog_id(result)
    check(
        result["instance"]["attach_mode"] == ATTACH,
        "attach mode %s, expected %s" % (result["instance"]["attach_mode"], ATTACH),
        step,
        result,
    )
    check(
        attached_program_ids(cgroup("main"))[1] == [pid],
        "BPF_PROG_QUERY on the cgroup shows %s, expected [%d]" % (attached_program_ids(cgroup("main"))[1], pid),
        step,
        result,
    )
    if ATTACH == "link" and VERSION >= (5, 8):  # BPF_LINK_GET_NEXT_ID
        check(len(links_of(pid)) == 1, "no bpf_link holds program %d" % pid, step, result)
    check(
        probe.outgoing_rto_us(cgroup("main")) == rto_us(200),
        "a socket in the cgroup does not start at 200 ms",
        step,
        result,
    )
    STATE["main_id"] = pid
    return "%s, %s" % (ATTACH, btf_note(pid))


def btf_note(pid):
    """Whether the kernel took the object's BTF (the loader falls back without it): for the table."""
    with bpf_syscall.closing_fd(bpf_info.prog_get_fd_by_id(pid)) as fd:
        info = bpf_info.prog_info(fd)
    maps_with_btf = 0
    for map_id in info.map_ids:
        with bpf_syscall.closing_fd(bpf_info.map_get_fd_by_id(map_id)) as fd:
            maps_with_btf += bool(bpf_info.map_info(fd).btf_id)
    return "btf prog %s maps %d/%d" % ("yes" if info.btf_id else "no", maps_with_btf, len(info.map_ids))


def scenario_reapply():
    result = run_step("reapply")
    check(
        result["changed"] is False and result["actions"] == [],
        "reapplying changed something: %s" % result["actions"],
        "reapply",
        result,
    )
    check(prog_id(result) == STATE.get("main_id"), "program id changed", "reapply", result)
    return "same id"


def scenario_rules():
    result = run_step("rules")
    step = "rules"
    check(result["changed"] is True, "changed is not true", step, result)
    check(
        prog_id(result) == STATE.get("main_id"),
        "program id changed: %s -> %s" % (STATE.get("main_id"), prog_id(result)),
        step,
        result,
    )
    check(
        [rule["rto_ms"] for rule in result["instance"]["rules"]] == [300, 40]
        and result["instance"]["default_rto_ms"] == 700,
        "the instance does not hold the new rules",
        step,
        result,
    )
    check(
        result["verification"]["ok"] and checks_of(result) == {"outgoing": 300, "incoming": 300},
        "verification is not ok for 300 ms",
        step,
        result,
    )
    check(probe.outgoing_rto_us(cgroup("main")) == rto_us(300), "a socket does not start at 300 ms", step, result)
    return "same id"


def scenario_absent():
    step = "absent"
    result = run_step(step)
    check(result["changed"] is True, "changed is not true", step, result)
    check(
        attached_program_ids(cgroup("main"))[1] == [],
        "programs still attached: %s" % attached_program_ids(cgroup("main"))[1],
        step,
        result,
    )
    pins = os.path.join(PIN_DIR, "main")
    check(not os.path.exists(pins), "pins left: %s" % (os.listdir(pins) if os.path.isdir(pins) else pins), step, result)
    if STATE.get("main_id"):
        check(not program_exists(STATE["main_id"]), "program %d still exists" % STATE["main_id"], step, result)
    check(
        probe.outgoing_rto_us(cgroup("main")) == 1000000, "a socket does not start at the kernel default", step, result
    )
    again = run_step("absent-again")
    check(again["changed"] is False, "removing again changed something", "absent-again", again)
    return "clean"


def scenario_direction():
    os.mkdir(cgroup("dir"))
    outgoing = run_step("outgoing")
    check(
        outgoing["verification"]["ok"] and checks_of(outgoing) == {"outgoing": 500},
        "direction outgoing: verification %s" % checks_of(outgoing),
        "outgoing",
        outgoing,
    )
    incoming = run_step("incoming")
    # connect() keeps the kernel default; the listener's SYN-ACK gets the value
    check(
        incoming["verification"]["ok"] and checks_of(incoming) == {"outgoing": 1000, "incoming": 500},
        "direction incoming: verification %s" % checks_of(incoming),
        "incoming",
        incoming,
    )
    check(prog_id(incoming) == prog_id(outgoing), "program id changed", "incoming", incoming)
    check(probe.outgoing_rto_us(cgroup("dir")) == 1000000, "connect() does not keep the default", "incoming", incoming)
    return "in/out"


def scenario_legacy():
    os.mkdir(cgroup("legacy"))
    step = "legacy"
    result = run_step(step, missing="cgroup_link")
    pid = prog_id(result)
    check(result["instance"]["attach_mode"] == "multi", "attach mode is not multi", step, result)
    check(result["verification"]["ok"], "verification is not ok", step, result)
    flags, ids = attached_program_ids(cgroup("legacy"))
    check(
        ids == [pid] and flags == uapi.BPF_F_ALLOW_MULTI,
        "BPF_PROG_QUERY: flags %d ids %s, expected %d [%d]" % (flags, ids, uapi.BPF_F_ALLOW_MULTI, pid),
        step,
        result,
    )
    if VERSION >= (5, 8):  # BPF_LINK_GET_NEXT_ID
        check(links_of(pid) == [], "a bpf_link holds the program", step, result)
    again = run_step("legacy-again", missing="cgroup_link")
    check(again["changed"] is False and prog_id(again) == pid, "reapplying changed something", "legacy-again", again)
    removed = run_step("legacy-absent")
    check(
        attached_program_ids(cgroup("legacy"))[1] == [] and not os.path.exists(PIN_DIR + "/legacy"),
        "state=absent left the program attached or pinned",
        "legacy-absent",
        removed,
    )
    return "multi"


def scenario_full_map():
    """A value change while the rules map holds all 1024 entries: kernels without the 6.13 fix
    refuse any update to a full LPM trie (stable kernels may have it backported: Debian's 6.1.0-57
    does), so the module takes new maps and replaces the program atomically on every kernel."""
    os.mkdir(cgroup("full"))
    result = run_step("full")
    check(not result.get("failed") and result["verification"]["ok"], "applying 1024 rules failed", "full", result)
    changed = run_step("full-change")
    step = "full-change"
    check(not changed.get("failed"), "the value change failed: %s" % changed.get("msg"), step, changed)
    check(
        any(action.startswith("rules do not fit the live rules map") for action in changed["actions"]),
        "the plan did not take new maps: %s" % changed["actions"],
        step,
        changed,
    )
    check(len(changed["instance"]["rules"]) == 1024, "the instance does not hold 1024 rules", step, changed)
    check(
        attached_program_ids(cgroup("full"))[1] == [prog_id(changed)] and prog_id(changed) != prog_id(result),
        "BPF_PROG_QUERY shows %s, expected only the new program %d"
        % (attached_program_ids(cgroup("full"))[1], prog_id(changed)),
        step,
        changed,
    )
    check(probe.outgoing_rto_us(cgroup("full")) == rto_us(300), "a socket does not start at 300 ms", step, changed)
    removed = run_step("full-absent")
    check(
        attached_program_ids(cgroup("full"))[1] == [], "state=absent left the program attached", "full-absent", removed
    )
    return "new maps"


def scenario_synack_2nd():
    """After the first SYN-ACK timeout the timer doubles the BPF value from 5.18 on
    (5903123f662e); before, it is TCP_TIMEOUT_INIT << 1 = 2 s whatever the program said."""
    os.mkdir(cgroup("synack"))
    result = run_step("synack")
    check(result["verification"]["ok"], "verification is not ok", "synack", result)
    rto_ms = 300
    from_bpf = VERSION >= (5, 18)
    expected = 2 * rto_ms if from_bpf else TCP_TIMEOUT_INIT_MS << 1
    first, second = in_cgroup(cgroup("synack"), synack_timers)
    check(
        result["kernel"]["features"]["synack_backoff_from_bpf"] == from_bpf,
        "features.synack_backoff_from_bpf disagrees with the kernel version",
        "synack",
        result,
    )
    # The second timer is read a few ms after it was re-armed; one jiffy above for rounding.
    check(
        expected - 150 <= second <= expected + JIFFY_MS,
        "second SYN-ACK timer %d ms (first %s ms), expected %d ms for %s"
        % (second, first, expected, "5.18+" if from_bpf else "a kernel before 5.18"),
        "synack",
        result,
    )
    return "2nd %d ms" % second


def scenario_syn_give_up():
    """SYN retransmits double from the initial RTO R; connect() fails at the expiry after
    tcp_syn_retries (6) retransmits: 127 R. From 6.5 on the first tcp_syn_linear_timeouts (4)
    intervals repeat R and 6 + 4 retransmits are sent: 131 R. The module's syn_give_up_s must
    say the same."""
    os.mkdir(cgroup("giveup"))
    result = run_step("give-up")
    rto_ms, retries = 20, 6
    linear = 4 if VERSION >= (6, 5) else 0
    timers = syn_timers(-(-rto_ms * HZ // 1000), retries, linear)
    expected_ms = sum(timers) * JIFFY_MS
    latest_ms = expected_ms + (sum(wheel_granule(timer) for timer in timers) + 1) * JIFFY_MS
    check(
        result["kernel"]["features"]["syn_linear_timeouts"] == bool(linear)
        and os.path.exists("/proc/sys/net/ipv4/tcp_syn_linear_timeouts") == bool(linear),
        "tcp_syn_linear_timeouts: feature and sysctl disagree with the kernel version",
        "give-up",
        result,
    )
    check(
        abs(result["syn_give_up_s"] * 1000 - expected_ms) < 1,
        "syn_give_up_s %s, expected %.3f" % (result["syn_give_up_s"], expected_ms / 1000.0),
        "give-up",
        result,
    )
    elapsed, retransmits = in_cgroup(cgroup("giveup"), connect_give_up)
    check(
        retransmits == retries + linear and expected_ms - JIFFY_MS <= elapsed <= latest_ms,
        "connect() gave up after %.0f ms and %d SYN retransmits, expected %.0f-%.0f ms (%d R) and %d"
        % (elapsed, retransmits, expected_ms, latest_ms, expected_ms // rto_ms, retries + linear),
        "give-up",
        result,
    )
    return "%d rtx %.2f s" % (retransmits, elapsed / 1000.0)


TELEMETRY_HANDSHAKES = 5


def loopback_handshakes():
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        for _handshake in range(TELEMETRY_HANDSHAKES):
            client = socket.create_connection(listener.getsockname(), timeout=10)
            listener.accept()[0].close()
            client.close()
    finally:
        listener.close()


def syn_sent_syncnt():
    """TCP_SYNCNT of a connect() whose SYN is dropped (a listener with a full accept queue)."""
    listener, filler, client = socket.socket(), socket.socket(), socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        time.sleep(0.1)
        client.setblocking(False)
        client.connect_ex(listener.getsockname())
        return client.getsockopt(socket.IPPROTO_TCP, 7)  # TCP_SYNCNT
    finally:
        for sock in (client, filler, listener):
            sock.close()


def read_pins(instance, read):
    """read(Current) of the instance's pins."""
    current = Current(os.path.join(PIN_DIR, instance))
    try:
        return read(current)
    finally:
        current.close()


def first_rule_telemetry(instance):
    return read_pins(instance, lambda current: current.telemetry()[0])


def learned_hosts(instance):
    """{remote host: what rto_ms auto learned of it} of the instance."""
    return read_pins(instance, lambda current: {host["host"]: host for host in current.learned_hosts()})


def scenario_telemetry():
    """The program loads with its telemetry, counts loopback handshakes with an RTT each, and sets
    TCP_SYNCNT for syn_give_up_s where the kernel lets it (else the module refuses the option)."""
    os.mkdir(cgroup("telemetry"))
    result = run_step("telemetry", may_fail=True)
    if result.get("failed"):
        check(
            "does not let a sock_ops program set TCP_SYNCNT" in result.get("msg", ""),
            "syn_give_up_s failed otherwise than refused: %s" % result.get("msg"),
            "telemetry",
            result,
        )
        result = run_step("telemetry-plain")
        syncnt, completed = "no TCP_SYNCNT", 0
    else:
        linear = 4 if VERSION >= (6, 5) else 0
        retries = syn_give_up.syn_retries_for_give_up(1.0, -(-100 * HZ // 1000) / float(HZ), linear)
        held = in_cgroup(cgroup("telemetry"), syn_sent_syncnt)
        check(held == retries, "TCP_SYNCNT %s, expected %d" % (held, retries), "telemetry", result)
        syncnt, completed = "TCP_SYNCNT %d" % held, 1  # syn_sent_syncnt's filler completed its handshake
    in_cgroup(cgroup("telemetry"), loopback_handshakes)
    rule = first_rule_telemetry("telemetry")
    count = TELEMETRY_HANDSHAKES + completed
    check(
        rule["handshakes"] == {"outgoing": count, "incoming": count} and rule["rtt_histogram"][-1][1] == 2 * count,
        "telemetry after %d loopback handshakes: %s" % (count, rule),
        "telemetry",
        result,
    )
    return "p99 %s us, %s" % (rule["rtt_us"]["p99"], syncnt)


# Each way on lo: a handshake's round trip (both sides sample one) is 35 ms plus the guest's own
# time, low in the log2 bucket (32.8, 65.5] ms, so that a slow emulated guest stays inside it.
NETEM_DELAY_US = 17500


def scenario_rtt_netem():
    """Handshake RTT percentiles against a known delay (issue 13): netem on lo holds every packet
    NETEM_DELAY_US, and every sample of both sides lands in the bucket of 2 x that."""
    os.mkdir(cgroup("netem"))
    result = run_step("netem")
    with netem.qdisc("lo", delay_us=NETEM_DELAY_US):
        in_cgroup(cgroup("netem"), loopback_handshakes)
    rule = first_rule_telemetry("netem")
    upper = next(bound for bound in telemetry.BUCKET_BOUNDS_US if bound >= 2 * NETEM_DELAY_US)
    at_or_below = dict(rule["rtt_histogram"])
    samples = rule["rtt_histogram"][-1][1]
    check(
        samples == 2 * TELEMETRY_HANDSHAKES and at_or_below[upper] - at_or_below[upper // 2] == samples,
        "%d handshakes through a %d us netem delay: histogram %s"
        % (TELEMETRY_HANDSHAKES, NETEM_DELAY_US, rule["rtt_histogram"]),
        "netem",
        result,
    )
    check(
        upper // 2 < rule["rtt_us"]["p50"] <= rule["rtt_us"]["p99"] <= upper,
        "percentiles %s outside (%d, %d] us" % (rule["rtt_us"], upper // 2, upper),
        "netem",
        result,
    )
    return "2x%.1f ms: p50 %d us, p99 %d us" % (NETEM_DELAY_US / 1000.0, rule["rtt_us"]["p50"], rule["rtt_us"]["p99"])


def scenario_auto():
    """rto_ms: auto loads and learns: before loopback taught anything a connect() gets auto_max_ms,
    after its handshakes auto_min_ms (read by the module's verification), and the rerun is unchanged."""
    os.mkdir(cgroup("auto"))
    first = run_step("auto")
    observed = {item["direction"]: item["observed_ms"] for item in first["verification"]["checks"]}
    check(observed["outgoing"] == rto_us(800) / 1000.0, "before learning: %s" % observed, "auto", first)
    in_cgroup(cgroup("auto"), loopback_handshakes)
    hosts = learned_hosts("auto")
    host = hosts.get("127.0.0.1") or {}
    check(
        host.get("samples", 0) >= 2 * TELEMETRY_HANDSHAKES and host.get("fallback", "none") is None,
        "learned after %d loopback handshakes: %s" % (TELEMETRY_HANDSHAKES, hosts),
        "auto",
        first,
    )
    again = run_step("auto-again")
    observed = {item["direction"]: item["observed_ms"] for item in again["verification"]["checks"]}
    check(
        not again["changed"] and observed["outgoing"] == rto_us(100) / 1000.0,
        "after learning: changed %s, %s" % (again["changed"], observed),
        "auto-again",
        again,
    )
    return "%d samples, %s ms" % (host["samples"], observed["outgoing"])


def scenario_auto_netem():
    """rto_ms auto learns a known round trip (issue 14): netem holds every packet on lo
    NETEM_DELAY_US, so 127.0.0.1's handshakes take R = 2 x that, and its RTO is AUTO_FACTOR x
    (SRTT + 4 RTTVAR): at least AUTO_FACTOR x R, at most AUTO_FACTOR x 3 R (RFC 6298's first
    sample sets RTTVAR to R / 2; steady samples only lower it), rounded up to a jiffy."""
    os.mkdir(cgroup("autonetem"))
    result = run_step("auto-netem")
    with netem.qdisc("lo", delay_us=NETEM_DELAY_US):
        in_cgroup(cgroup("autonetem"), loopback_handshakes)
    host = learned_hosts("autonetem").get("127.0.0.1") or {}
    round_trip_ms = 2 * NETEM_DELAY_US / 1000.0
    low, high = AUTO_FACTOR * round_trip_ms, AUTO_FACTOR * 3 * round_trip_ms + JIFFY_MS
    check(
        host.get("fallback", "none") is None and low <= host.get("rto_ms", 0) <= high,
        "learned through a %.1f ms round trip: %s, expected %.1f-%.1f ms" % (round_trip_ms, host, low, high),
        "auto-netem",
        result,
    )
    return "%s ms for R %.0f ms (%d samples)" % (host["rto_ms"], round_trip_ms, host["samples"])


def veth_handshakes(address, count):
    """count connect()s to the veth server at address, each closed once established."""
    for _handshake in range(count):
        socket.create_connection((address, veth.PORT), timeout=10).close()


def lost_connect(address, retransmits):
    """A non-blocking connect() to address whose SYNs netem drops, closed once it has retransmitted
    its SYN retransmits times (at once for 0): -> (its initial RTO in us, its SYN retransmits).
    struct tcp_info: u32 tcpi_rto at byte 8, u32 tcpi_total_retrans at byte 100."""
    client = socket.socket()
    try:
        client.setblocking(False)
        client.connect_ex((address, veth.PORT))
        initial_us = struct.unpack_from("=I", client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 8)[0]
        end = time.monotonic() + 10
        sent = 0
        while sent < retransmits and time.monotonic() < end:
            time.sleep(0.005)
            sent = struct.unpack_from("=I", client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 100)[0]
        return initial_us, sent
    finally:
        client.close()


def learned_host(instance, address):
    return learned_hosts(instance).get(address) or {}


# One way, on the guest's veth end: SYNs wait, SYN-ACKs do not, so a handshake's round trip is the delay.
VETH_DELAYS_US = {veth.server_address(1): 5000, veth.server_address(2): 50000}
VETH_HANDSHAKES = 5


def scenario_auto_veth():
    """rto_ms auto learns each remote host's own round trip (issue 14): two hosts behind a veth pair
    in a network namespace of their own, netem on the guest's end delaying what goes to one by
    5 ms, then to the other by 50 ms (the round trip R of their handshakes). Each host has
    VETH_HANDSHAKES samples, all at least R, so SRTT >= R; its RTO is AUTO_FACTOR x (SRTT + 4 RTTVAR):
    at least AUTO_FACTOR x R, at most AUTO_FACTOR x 3 R (RFC 6298's first sample sets RTTVAR to
    R / 2; steady samples only lower it), rounded up to a jiffy. The listener is outside the
    instance's cgroup: only connect() learns."""
    cg = cgroup("autoveth")
    os.mkdir(cg)
    result = run_step("auto-veth")
    notes = []
    with veth.server(sorted(VETH_DELAYS_US)):
        for address, delay_us in sorted(VETH_DELAYS_US.items()):
            with netem.qdisc(veth.CLIENT_DEVICE, delay_us=delay_us):
                veth_handshakes(address, 1)  # outside the cgroup: the neighbour's resolution is no sample
                in_cgroup(cg, functools.partial(veth_handshakes, address, VETH_HANDSHAKES))
        hosts = learned_hosts("autoveth")
    for address, delay_us in sorted(VETH_DELAYS_US.items()):
        host = hosts.get(address) or {}
        round_trip_ms = delay_us / 1000.0
        low, high = AUTO_FACTOR * round_trip_ms, AUTO_FACTOR * 3 * round_trip_ms + JIFFY_MS
        check(
            host.get("fallback", "none") is None
            and host.get("samples") == VETH_HANDSHAKES
            and host.get("srtt_us", 0) >= delay_us
            and low <= host.get("rto_ms", 0) <= high,
            "%s learned through a %.0f ms round trip: %s, expected %d samples, SRTT >= %d us, %.1f-%.1f ms"
            % (address, round_trip_ms, hosts, VETH_HANDSHAKES, delay_us, low, high),
            "auto-veth",
            result,
        )
        notes.append("%s ms for R %.0f ms" % (host["rto_ms"], round_trip_ms))
    return ", ".join(notes)


def scenario_auto_loss():
    """A host whose SYNs are lost falls back to auto_max_ms until it recovers (issue 14): it learns
    from auto_min_samples clean handshakes over the veth pair (auto_min_ms: its round trip is far
    below), then netem drops everything sent to it. A connect() starts at the learned value; once
    its SYN retransmits exceed auto_retransmit_budget the host shows over_retransmit_budget and the
    next connect() starts at auto_max_ms. Without the loss each clean handshake forgives one
    retransmit: the host gets its learned value back after exactly retransmits - budget of them."""
    step = "auto-loss"
    params = STEPS[step]
    min_ms, max_ms, budget = params["auto_min_ms"], params["auto_max_ms"], params["auto_retransmit_budget"]
    cg = cgroup("autoloss")
    os.mkdir(cg)
    result = run_step(step)
    address = veth.server_address(1)
    with veth.server([address]):
        veth_handshakes(address, 1)  # outside the cgroup: the neighbour's resolution is no sample
        in_cgroup(cg, functools.partial(veth_handshakes, address, params["auto_min_samples"]))
        clean = learned_host("autoloss", address)
        check(
            clean.get("fallback", "none") is None and clean.get("rto_ms") == min_ms,
            "after %d clean handshakes: %s, expected %d ms" % (params["auto_min_samples"], clean, min_ms),
            step,
            result,
        )
        with netem.qdisc(veth.CLIENT_DEVICE, loss=1.0):
            learned_us, sent = in_cgroup(cg, functools.partial(lost_connect, address, budget + 1))
            lost = learned_host("autoloss", address)
            check(
                learned_us == rto_us(min_ms)
                and sent > budget
                and lost.get("fallback") == learned.OVER_BUDGET
                and lost.get("retransmits", 0) > budget
                and lost.get("rto_ms") == max_ms,
                "a connect() whose SYNs are lost: initial RTO %d us (expected %d), %d SYN retransmits (budget %d),"
                " then %s, expected over_retransmit_budget at %d ms"
                % (learned_us, rto_us(min_ms), sent, budget, lost, max_ms),
                step,
                result,
            )
            fallback_us, _sent = in_cgroup(cg, functools.partial(lost_connect, address, 0))
            check(
                fallback_us == rto_us(max_ms),
                "a connect() after the fallback starts at %d us, expected %d" % (fallback_us, rto_us(max_ms)),
                step,
                result,
            )
        forgiven, host = 0, lost
        while host.get("fallback") is not None and forgiven < lost["retransmits"]:
            in_cgroup(cg, functools.partial(veth_handshakes, address, 1))
            forgiven += 1
            host = learned_host("autoloss", address)
    check(
        host.get("fallback", "none") is None
        and forgiven == lost["retransmits"] - budget
        and host.get("retransmits") == budget
        and host.get("rto_ms") == min_ms,
        "after the loss, %d clean handshakes: %s, expected %d ms after %d"
        % (forgiven, host, min_ms, lost["retransmits"] - budget),
        step,
        result,
    )
    return "%d rtx: %d ms, back after %d" % (lost["retransmits"], max_ms, forgiven)


MAP_UNDER_ZERO_MEMLOCK = """
import os, resource
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_maps, bpf_syscall, uapi
resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
try:
    os.close(bpf_maps.map_create(uapi.BPF_MAP_TYPE_ARRAY, 4, 8, 1))
    print("created")
except bpf_syscall.BpfError as exc:
    print(exc.strerror)
"""


def scenario_memlock():
    """Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (5.11 moved it to memcg): a process
    whose limit is 0 cannot create a map there, and the module, started with that limit, must still
    apply (it raises the limit)."""
    os.mkdir(cgroup("memlock"))
    charged = VERSION < (5, 11)
    control = subprocess.run(
        [sys.executable, "-c", MAP_UNDER_ZERO_MEMLOCK],
        env=dict(os.environ, PYTHONPATH=GUEST_ROOT),
        stdout=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    check(
        control == ("Operation not permitted" if charged else "created"),
        "a map under RLIMIT_MEMLOCK 0: %r, expected %s" % (control, "EPERM" if charged else "success"),
    )
    result = run_step("memlock", memlock=0)
    check(
        result["kernel"]["features"]["memcg_accounting"] is not charged,
        "features.memcg_accounting disagrees with the kernel version",
        "memlock",
        result,
    )
    check(result["verification"]["ok"], "verification is not ok", "memlock", result)
    return "rlimit" if charged else "memcg"


def scenario_hz_measured():
    """No kernel config readable (as on many hosts): the module measures HZ from the clock tick."""
    os.mkdir(cgroup("hz"))
    hidden = CONFIG + ".hidden"
    os.rename(CONFIG, hidden)
    try:
        result = run_step("hz-measured")
    finally:
        os.rename(hidden, CONFIG)
    check(
        result["kernel"]["hz_source"] == "measured" and result["kernel"]["hz"] == HZ,
        "HZ %s from %s, expected %d measured" % (result["kernel"]["hz"], result["kernel"]["hz_source"], HZ),
        "hz-measured",
        result,
    )
    check(result["verification"]["ok"], "verification is not ok", "hz-measured", result)
    return "%d" % result["kernel"]["hz"]


def _instance_gone(step, result):
    check(attached_program_ids(cgroup("forced"))[1] == [], "programs left attached", step, result)
    check(not os.path.exists(PIN_DIR + "/forced"), "pins left", step, result)


def _forced_apply_rerun_remove(missing):
    """apply, rerun, absent with the probes of missing reporting those features missing."""
    step = "forced %s" % missing
    result = run_step("forced", missing=missing)
    mode = "multi" if set(missing.split(",")) & set(features.LINK_FEATURES) else ATTACH
    check(
        result["changed"] is True
        and result["instance"]["attach_mode"] == mode
        and all(result["kernel"]["features"][name] is False for name in missing.split(","))
        and result["verification"]["ok"],
        "not applied in %s mode with %s reported missing and verified" % (mode, missing),
        step,
        result,
    )
    pid = prog_id(result)
    check(
        attached_program_ids(cgroup("forced"))[1] == [pid],
        "BPF_PROG_QUERY does not show exactly the program",
        step,
        result,
    )
    links = len(links_of(pid))
    check(
        links == (1 if mode == "link" else 0), "%d bpf_links hold the program in %s mode" % (links, mode), step, result
    )
    again = run_step("forced-again", missing=missing)
    check(
        again["changed"] is False and again["actions"] == [] and prog_id(again) == pid,
        "rerun changed something: %s" % again["actions"],
        step + " rerun",
        again,
    )
    removed = run_step("forced-absent", missing=missing)
    check(removed["changed"] is True, "absent changed nothing", step + " absent", removed)
    _instance_gone(step + " absent", removed)


def scenario_forced_missing():
    """Every probed feature forced missing in turn (TCP_RTO_FORCE_MISSING, as a kernel without
    it answers its probe): the module applies (multi where a link feature is missing), reruns
    unchanged and removes; without sock_ops or BPF_PROG_QUERY it refuses and touches nothing.
    Then a link instance met by a run that has neither link info nor BPF_LINK_DETACH (as 5.7 is):
    moved to multi, then removed."""
    os.mkdir(cgroup("forced"))
    for name in features.PROBE_NAMES:
        if name in ("sock_ops", "prog_query"):
            refused = run_step("forced", missing=name, may_fail=True)
            check(
                refused.get("failed") and "upgrade the kernel" in str(refused.get("msg")),
                "not refused with the kernel's reason",
                "forced " + name,
                refused,
            )
            _instance_gone("forced " + name, refused)
        else:
            _forced_apply_rerun_remove(name)
    linked = run_step("forced")
    check(linked["instance"]["attach_mode"] == ATTACH, "not attached in %s mode" % ATTACH, "forced", linked)
    old_links = links_of(prog_id(linked))
    step = "forced link_info,link_detach over a link instance"
    moved = run_step("forced", missing="link_info,link_detach")
    check(
        moved["changed"] is True and moved["instance"]["attach_mode"] == "multi" and moved["verification"]["ok"],
        "the link instance was not moved to multi and verified",
        step,
        moved,
    )
    check(
        attached_program_ids(cgroup("forced"))[1] == [prog_id(moved)],
        "BPF_PROG_QUERY: not only the new program",
        step,
        moved,
    )
    check(len(old_links) == 1 and links_of(prog_id(linked)) == [], "the old bpf_link is still there", step, moved)
    removed = run_step("forced-absent", missing="link_info,link_detach")
    _instance_gone(step + " absent", removed)
    return "%d features" % len(features.PROBE_NAMES)


def selected_scenarios():
    """The scenarios matrix.py asked for on the kernel command line (all without it), in SCENARIOS order."""
    with open("/proc/cmdline") as handle:
        words = handle.read().split()
    chosen = [word[len(SCENARIOS_PARAMETER) :].split(",") for word in words if word.startswith(SCENARIOS_PARAMETER)]
    return [name for name in SCENARIOS if not chosen or name in chosen[-1]]


VERIFIER_LOGS = {}  # log -> the first scenario that printed it


def report_failure(name, exc):
    emit("BEGIN", name)
    print("why: %s" % exc)
    if exc.step:
        print("step: %s %s" % (exc.step, json.dumps(STEPS.get(exc.step), sort_keys=True)))
    if exc.result is not None:
        result = {key: value for key, value in exc.result.items() if key != "invocation"}  # = the step
        msg, _marker, verifier_log = str(result.get("msg", "")).partition("Verifier log:")
        if verifier_log:
            result["msg"] = msg + "Verifier log: below"
        print("result:")
        print(json.dumps(result, indent=1, sort_keys=True, default=str))
        same = re.sub(r"0x[0-9a-f]{8,}", "", verifier_log)  # map addresses differ between loads
        if verifier_log and same in VERIFIER_LOGS:
            print("verifier log: the same as for %s" % VERIFIER_LOGS[same])
        elif verifier_log:
            VERIFIER_LOGS[same] = name
            print("verifier log:")
            print(verifier_log.strip())
    emit("END", name)


def main():
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    emit(
        "INFO",
        json.dumps(
            {
                "release": RELEASE,
                "hz": HZ,
                "attach": ATTACH,
                "python": sys.version.split()[0],
                "memlock_kib": None if soft == resource.RLIM_INFINITY else soft // 1024,
            }
        ),
    )
    for name in selected_scenarios():
        started = time.monotonic()
        try:
            note = globals()["scenario_" + name.replace("-", "_")]()
            status = "PASS"
        except Exception as exc:  # every failure becomes a readable cell
            if not isinstance(exc, Failed):
                exc = Failed("%s: %s\n%s" % (type(exc).__name__, exc, traceback.format_exc()))
            note = str(exc).splitlines()[0][:80]
            status = "FAIL"
            report_failure(name, exc)
        emit("CELL", name, status, json.dumps({"note": note, "seconds": round(time.monotonic() - started, 1)}))
    emit("DONE")


if __name__ == "__main__":
    main()
