"""This machine's CONFIG_HZ, and the initial RTO the kernel shows for a rule's rto_ms."""

import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import hz


def kernel_hz():
    """CONFIG_HZ as the module finds it: the module's own discovery, not a copy of it."""
    return hz.discover(None, os.uname()[2])[0]


def jiffies_us(ms):
    """The µs TCP_INFO shows for rto_ms: rounded up to whole jiffies like the module does."""
    ticks = kernel_hz()
    return -(-ms * ticks // 1000) * (1000000 // ticks)
