"""How the module finds CONFIG_HZ on the real kernel."""

import gzip
import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host, reconcile


def config_hz():
    with gzip.open("/proc/config.gz", "rt") as config:
        return int(next(line for line in config if line.startswith("CONFIG_HZ=")).split("=")[1])


def test_hz_from_kernel_config():
    assert reconcile.discover_hz(dict(hz=None), os.uname()[2]) == (config_hz(), "/proc/config.gz")


def test_hz_measured_when_no_kernel_config(monkeypatch):
    """A host without /boot/config-* and /proc/config.gz (the one thing mocked: missing files)."""
    monkeypatch.setattr(host, "config_hz", lambda release: None)
    assert reconcile.discover_hz(dict(hz=None), os.uname()[2]) == (config_hz(), "measured")


def test_hz_parameter_wins():
    assert reconcile.discover_hz(dict(hz=1000), os.uname()[2]) == (1000, "parameter")
