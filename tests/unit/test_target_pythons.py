"""The code that runs on managed hosts (module_utils) works on every Python from 3.6 on that this
machine has: Debian's own, and pyenv's when present (RHEL 8's platform-python is 3.6)."""

import glob
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INTERPRETERS = sorted({"/usr/bin/python3", *glob.glob("/root/.pyenv/versions/3.*/bin/python3")})

SNIPPET = """
import os, sys
sys.path.insert(0, os.path.join(sys.argv[1], ".cache", "collections"))
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    apply, bpf_object, bpf_syscall, host, instance, probe, rto_program)
obj = bpf_object.BpfObject.from_file(os.path.join(sys.argv[1], "files", "bpf", "tcp_initial_rto.bpf.o"))
bpf_object.check_contract(obj)
rules = instance.parse_rules([{"dest": "10.0.0.0/8", "rto_ms": 50}, {"dest": "fd00::/8", "rto_ms": 4}], 250)
assert [rule.rto_jiffies for rule in rules] == [13, 1], rules
fd = bpf_syscall.map_create(rto_program.BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0, "pycheck")
os.close(fd)
print(host.KernelFeatures().release)
"""


@pytest.mark.parametrize("python", INTERPRETERS)
def test_module_utils_on_target_python(python):
    proc = subprocess.run(
        [python, "-c", SNIPPET, REPO],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip() == os.uname()[2]
