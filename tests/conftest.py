"""Shared pytest set-up: kernel sandboxes (tests/support/sandbox.py) that are removed in every
outcome, markers, and the contributor's fast loop (tests/run -m "not slow").

The collection is importable as ansible_collections.netbpf.tcp_rto through the collections root
that pytest.ini's pythonpath names (.cache/collections, made by scripts/setup-env); the test
support package with it, as ansible_collections.netbpf.tcp_rto.tests.support."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _link_collection():
    """The collections root as scripts/setup-env makes it, for a pytest started without tests/run."""
    namespace_dir = os.path.join(REPO, ".cache", "collections", "ansible_collections", "netbpf")
    if not os.path.islink(os.path.join(namespace_dir, "tcp_rto")):
        os.makedirs(namespace_dir, exist_ok=True)
        os.symlink(REPO, os.path.join(namespace_dir, "tcp_rto"))


_link_collection()

from ansible_collections.netbpf.tcp_rto.tests.support import sandbox  # noqa: E402  (needs the link above)


def pytest_configure(config):
    # here rather than in pytest.ini: ansible-test units runs pytest with a configuration of its own
    config.addinivalue_line("markers", "kernel: needs root and this machine's kernel (BPF, cgroup v2)")
    config.addinivalue_line("markers", "slow: left out of the contributor's loop, tests/run -m 'not slow'")


# Files whose tests take minutes: qemu guests, ansible-test and docs gates, playbook runs over many
# hosts, hundreds of bad-input or crash cases, benchmarks, the boot unit under systemd (persistence,
# follow_unit: their file logic has unit tests in the loop). Single long scenarios in the other
# files carry @pytest.mark.slow themselves. The full test command runs them all; the loop,
# tests/run -m "not slow", stays within 3 minutes (README, "Test times").
SLOW_FILES = {
    "test_ansible_test.py",
    "test_target_pythons.py",
    "test_gates_docs.py",
    "test_kernel_matrix.py",
    "test_realhost.py",
    "test_crash.py",
    "test_bad_input.py",
    "test_bench_smoke.py",
    "test_concurrency.py",
    "test_upgrade_gap.py",
    "test_rules_capacity.py",
    "test_galaxy.py",
    "test_execution_environment.py",
    "test_fleet.py",
    "test_instances.py",
    "test_role.py",
    "test_privilege.py",
    "test_coexistence.py",
    "test_persistence.py",
    "test_follow_unit.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if os.path.basename(item.nodeid.split("::")[0]) in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session):
    if os.geteuid() == 0:
        sandbox.sweep_leftovers()


@pytest.fixture
def cgroup():
    """A fresh child cgroup of the cgroup v2 root, removed with its processes afterwards."""
    with sandbox.sandbox_cgroup() as path:
        yield path


@pytest.fixture
def bpffs():
    """A private bpffs mount; its pins go with the unmount."""
    with sandbox.sandbox_bpffs() as path:
        yield path
