"""netem on a network device through rtnetlink, for the kernel-matrix guests, which have no `tc`
(busybox's cannot configure netem). What `tc qdisc add dev DEV root netem delay D loss P` sends:
RTM_NEWQDISC with TCA_KIND "netem" and TCA_OPTIONS holding struct tc_netem_qopt
(include/uapi/linux/pkt_sched.h). Plain stdlib; the device is the caller's (in a guest or a
private network namespace).
"""

import contextlib
import socket
import struct

from rtnetlink import NLM_F_CREATE, NLM_F_EXCL, attr, request

RTM_NEWQDISC = 36
RTM_DELQDISC = 37
TC_H_ROOT = 0xFFFFFFFF
TCA_KIND = 1
TCA_OPTIONS = 2
TCMSG = struct.Struct("=B3xiIII")  # family, 3 pad bytes, ifindex, handle, parent, info
# struct tc_netem_qopt: latency, limit, loss, gap, duplicate, jitter. latency and jitter are in
# psched ticks of 64 ns (PSCHED_SHIFT 6: netem_change() takes PSCHED_TICKS2NS(latency)); loss is
# a probability scaled to the u32 range (0xffffffff: every packet).
NETEM_QOPT = struct.Struct("=IIIIII")
PSCHED_SHIFT = 6
NETEM_LIMIT = 1000  # packets, tc's default
ALWAYS = 0xFFFFFFFF


def _root_qdisc(name, kind, flags, ifindex, attrs=b""):
    request(name, kind, flags, TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, TC_H_ROOT, 0) + attrs)


@contextlib.contextmanager
def qdisc(device, delay_us=0, loss=0.0):
    """netem as device's root qdisc, removed after: every packet leaving device is held delay_us,
    and dropped with probability loss (0 to 1; 1 drops every one)."""
    ifindex = socket.if_nametoindex(device)
    options = NETEM_QOPT.pack((delay_us * 1000) >> PSCHED_SHIFT, NETEM_LIMIT, round(loss * ALWAYS), 0, 0, 0)
    _root_qdisc(
        "RTM_NEWQDISC",
        RTM_NEWQDISC,
        NLM_F_CREATE | NLM_F_EXCL,
        ifindex,
        attr(TCA_KIND, b"netem\0") + attr(TCA_OPTIONS, options),
    )
    try:
        yield
    finally:
        _root_qdisc("RTM_DELQDISC", RTM_DELQDISC, 0, ifindex)
