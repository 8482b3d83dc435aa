"""The module invocations of the kernel matrix: step name -> the task's parameters.

Imported by the host (matrix.py builds one AnsiballZ payload per step) and by the guest
(guest_job.py runs the payloads in order and checks their results). Plain stdlib.
"""

from veth import NETWORK

GUEST_ROOT = "/opt/tcp_rto"
SRC = GUEST_ROOT + "/tcp_initial_rto.bpf.o"  # what the action plugin would have transferred
CGROUP_ROOT = "/sys/fs/cgroup"
LOOPBACK = "127.0.0.0/8"
AUTO_FACTOR = 2.0  # rto_ms auto through a netem delay: the learned RTO is this x (SRTT + 4 RTTVAR)
VETH_RULES = [{"dest": str(NETWORK), "rto_ms": "auto"}]  # the hosts behind the guest's veth pair

# The table's columns, in the order the guest runs them (guest_job.py: scenario_<name>); matrix.py
# passes those it runs as SCENARIOS_PARAMETER on the guest's kernel command line (a parameter with a
# dot and no such module: the kernel leaves it to /proc/cmdline).
SCENARIOS_PARAMETER = "tcprto.scenarios="
SCENARIOS = [
    "apply",
    "reapply",
    "rules",
    "absent",
    "direction",
    "legacy",
    "full-map",
    "synack-2nd",
    "syn-give-up",
    "telemetry",
    "rtt-netem",
    "auto",
    "auto-netem",
    "auto-veth",
    "auto-loss",
    "memlock",
    "hz-measured",
    "forced-missing",
]


def cgroup(name):
    return CGROUP_ROOT + "/" + name


def full_rules(loopback_ms):
    """As many rules as the rules map holds (1024): LOOPBACK and 1023 /24 networks."""
    return [{"dest": LOOPBACK, "rto_ms": loopback_ms}] + [
        {"dest": "10.%d.%d.0/24" % divmod(index, 256), "rto_ms": 50} for index in range(1023)
    ]


def task(name, **params):
    """One instance per scenario, in a cgroup of its own name; pins under the default pin_dir, with
    bpffs mounted by the module itself (the guest does not mount it). Like the action plugin, src
    only for state=present."""
    base = dict(name=name, cgroup=cgroup(name))
    if params.get("state", "present") == "present":
        base["src"] = SRC
    return dict(base, **params)


STEPS = {
    # apply, reapply, rules change, absent: one instance
    "apply": task("main", rules=[{"dest": LOOPBACK, "rto_ms": 200}], rto_ms=500),
    "reapply": task("main", rules=[{"dest": LOOPBACK, "rto_ms": 200}], rto_ms=500),
    "rules": task("main", rules=[{"dest": LOOPBACK, "rto_ms": 300}, {"dest": "fd00::/8", "rto_ms": 40}], rto_ms=700),
    "absent": task("main", state="absent"),
    "absent-again": task("main", state="absent"),
    # direction
    "outgoing": task("dir", rto_ms=500, direction="outgoing"),
    "incoming": task("dir", rto_ms=500, direction="incoming"),
    # BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI where bpf_link exists (the guest job forces cgroup_link missing)
    "legacy": task("legacy", rto_ms=400),
    "legacy-again": task("legacy", rto_ms=400),
    "legacy-absent": task("legacy", state="absent"),
    # a value change in a full rules map (kernels without the 6.13 fix refuse any update to a full LPM trie)
    "full": task("full", rules=full_rules(200), direction="outgoing"),
    "full-change": task("full", rules=full_rules(300), direction="outgoing"),
    "full-absent": task("full", state="absent"),
    # the second SYN-ACK timer (measured by the guest job)
    "synack": task("synack", rto_ms=300, direction="incoming"),
    # connect() to a peer that never answers gives up after ~127 RTOs (131 on 6.5+)
    "give-up": task("giveup", rto_ms=20, direction="outgoing"),
    # handshake telemetry and syn_give_up_s (issue 13); the second where the kernel refuses TCP_SYNCNT
    "telemetry": task("telemetry", rules=[{"dest": LOOPBACK, "rto_ms": 100, "syn_give_up_s": 1.0}], verify=False),
    "telemetry-plain": task("telemetry", rules=[{"dest": LOOPBACK, "rto_ms": 100}], verify=False),
    # handshake RTT percentiles through a netem delay on lo (an RTO well above it: no retransmits)
    "netem": task("netem", rules=[{"dest": LOOPBACK, "rto_ms": 1000}], verify=False),
    # rto_ms: auto (issue 14): loopback's handshakes teach auto_min_ms; verify accepts the range
    "auto": task("auto", rules=[{"dest": LOOPBACK, "rto_ms": "auto"}], auto_min_ms=100, auto_max_ms=800),
    "auto-again": task("auto", rules=[{"dest": LOOPBACK, "rto_ms": "auto"}], auto_min_ms=100, auto_max_ms=800),
    # rto_ms: auto learning a round trip netem makes on lo (below auto_max_ms, above auto_min_ms)
    "auto-netem": task(
        "autonetem",
        rules=[{"dest": LOOPBACK, "rto_ms": "auto"}],
        auto_min_ms=20,
        auto_max_ms=1000,
        auto_factor=AUTO_FACTOR,
        verify=False,
    ),
    # rto_ms: auto learning two hosts behind a veth pair, one through a 5 ms netem delay, one through
    # 50 ms; auto_min_ms two jiffies at HZ 250, below the 5 ms host's band (10-34 ms), so that the
    # clamp cannot pass for learning
    "auto-veth": task(
        "autoveth", rules=VETH_RULES, auto_min_ms=8, auto_max_ms=1000, auto_factor=AUTO_FACTOR, verify=False
    ),
    # rto_ms: auto falling back to auto_max_ms when a host's SYNs are lost, and recovering
    "auto-loss": task(
        "autoloss",
        rules=VETH_RULES,
        auto_min_ms=20,
        auto_max_ms=1000,
        auto_min_samples=3,
        auto_retransmit_budget=2,
        verify=False,
    ),
    # run with RLIMIT_MEMLOCK 0 (kernels before 5.11 charge BPF memory to it)
    "memlock": task("memlock", rto_ms=500),
    # CONFIG_HZ with no kernel config readable
    "hz-measured": task("hz", rto_ms=500),
    # run with each probed feature forced missing in turn (TCP_RTO_FORCE_MISSING, set by the guest job)
    "forced": task("forced", rules=[{"dest": LOOPBACK, "rto_ms": 200}], rto_ms=500),
    "forced-again": task("forced", rules=[{"dest": LOOPBACK, "rto_ms": 200}], rto_ms=500, verify=False),
    "forced-absent": task("forced", state="absent"),
}
