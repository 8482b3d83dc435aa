"""Fixtures of the integration tests; what they share with the unit tests and the benchmarks is in
tests/support/."""

import os
import subprocess

import pytest

from ansible_collections.netbpf.tcp_rto.tests.support import paths
from ansible_collections.netbpf.tcp_rto.tests.support.playbook import Playbook


@pytest.fixture
def playbook(tmp_path):
    return Playbook(str(tmp_path))


@pytest.fixture(scope="session")
def second_object(tmp_path_factory):
    """A new version of the program object (another sha256 and program): the shipped source with a
    no-op instruction, built with files/bpf/build."""
    workdir = tmp_path_factory.mktemp("second_object")
    with open(os.path.join(paths.REPO, "files", "bpf", "tcp_initial_rto.bpf.c")) as handle:
        source = handle.read()
    anchor = "__u32 zero = 0, direction, op = skops->op;\n"
    assert anchor in source
    source = source.replace(anchor, anchor + '\n\tasm volatile("r0 = 0" ::: "r0");\t/* the new version */\n')
    source_path = workdir / "tcp_initial_rto_v2.bpf.c"
    source_path.write_text(source)
    object_path = str(workdir / "tcp_initial_rto_v2.bpf.o")
    subprocess.run([os.path.join(paths.REPO, "files", "bpf", "build"), object_path, str(source_path)], check=True)
    return object_path
