"""How the module finds CONFIG_HZ on the real kernel."""

import gzip
import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import hz

RELEASE = os.uname()[2]


def kernel_config():
    """(CONFIG_HZ, path) read independently of the module from the first kernel config this host
    has, in the documented order: /boot/config-<release> (distribution kernels), /proc/config.gz."""
    for path, opener in (("/boot/config-" + RELEASE, open), ("/proc/config.gz", gzip.open)):
        if os.path.exists(path):
            with opener(path, "rt") as config:
                return int(next(line for line in config if line.startswith("CONFIG_HZ=")).split("=")[1]), path
    return None


needs_kernel_config = pytest.mark.skipif(kernel_config() is None, reason="no kernel config on this host")


@needs_kernel_config
def test_hz_from_kernel_config():
    assert hz.discover(None, RELEASE) == kernel_config()


@needs_kernel_config
def test_hz_measured_when_no_kernel_config(monkeypatch):
    """A host without /boot/config-* and /proc/config.gz (the one thing mocked: missing files)."""
    monkeypatch.setattr(hz, "config_hz", lambda release: None)
    assert hz.discover(None, RELEASE) == (kernel_config()[0], "measured")


def test_hz_parameter_wins():
    assert hz.discover(1000, RELEASE) == (1000, "parameter")
