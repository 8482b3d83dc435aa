"""The kernel matrix as part of the test command: the module's scenarios on Debian's 5.10, 6.1, 6.12
and newest 6.16-6.18 kernels under qemu (tests/kernels/run). A missing qemu fails the test: the
matrix is how the kernels users run are covered, so it must not silently go away."""

import os
import shutil
import subprocess

from ansible_collections.netbpf.tcp_rto.tests.support.paths import REPO

RUN = os.path.join(REPO, "tests", "kernels", "run")


def test_kernel_matrix(capsys):
    assert shutil.which("qemu-system-x86_64"), (
        "qemu-system-x86_64 is not installed: scripts/setup-env installs it (apt package qemu-system-x86)"
    )
    proc = subprocess.run(
        [RUN], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=3600, check=False
    )
    with capsys.disabled():  # the kernel table belongs in the test command's output, pass or fail
        print("\n" + proc.stdout)
    assert proc.returncode == 0, "tests/kernels/run exited %d:\n%s" % (proc.returncode, proc.stdout[-30000:])
