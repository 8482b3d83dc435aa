"""apply.py pieces that stand on their own on the real kernel."""

import gzip
import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import apply as kernel_apply
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.bpf_object import BpfObject
from ansible_collections.netbpf.tcp_rto.plugins.modules import tcp_initial_rto

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SHIPPED = os.path.join(REPO, "files", "bpf", "tcp_initial_rto.bpf.o")

pytestmark = pytest.mark.kernel


def config_hz():
    with gzip.open("/proc/config.gz", "rt") as config:
        return int([line for line in config if line.startswith("CONFIG_HZ=")][0].split("=")[1])


def test_measure_hz_matches_kernel_config(cgroup):
    assert kernel_apply.measure_hz(BpfObject.from_file(SHIPPED), cgroup) == config_hz()
    assert os.listdir(cgroup) == [name for name in os.listdir(cgroup) if not name.startswith("tcp_rto-hz-")]


def test_module_measures_hz_when_no_kernel_config(cgroup, monkeypatch):
    """A host without /boot/config-* and /proc/config.gz: the module measures."""
    monkeypatch.setattr(host, "config_hz", lambda release: None)
    params = dict(hz=None)
    release = os.uname()[2]
    assert tcp_initial_rto.discover_hz(params, release, BpfObject.from_file(SHIPPED), cgroup) == (config_hz(), "measured")
    # check mode passes no object: it cannot load a program, so HZ stays unknown
    assert tcp_initial_rto.discover_hz(params, release, None, cgroup) == (None, None)
    assert tcp_initial_rto.discover_hz(dict(hz=1000), release, None, cgroup) == (1000, "parameter")
