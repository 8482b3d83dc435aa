"""The collection as users get it: ansible-galaxy build, install into a clean path, run by FQCN."""

import os
import subprocess
import tarfile

import pytest
from conftest import ANSIBLE_BIN, REPO, Playbook, cgroup_program_ids

pytestmark = pytest.mark.kernel


def test_build_install_and_run(tmp_path, cgroup, bpffs):
    subprocess.run(
        [os.path.join(ANSIBLE_BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path), REPO],
        check=True,
        stdout=subprocess.PIPE,
    )
    tarball = str(tmp_path / "netbpf-tcp_rto-0.1.0.tar.gz")
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "files/bpf/tcp_initial_rto.bpf.o" in names
    assert "plugins/action/tcp_initial_rto.py" in names
    assert not [
        name
        for name in names
        if name.split("/")[0] in (".venv", ".cache", ".git", ".pytest_cache") or "__pycache__" in name
    ]

    installed = tmp_path / "installed"
    subprocess.run(
        [os.path.join(ANSIBLE_BIN, "ansible-galaxy"), "collection", "install", "-p", str(installed), tarball],
        check=True,
        stdout=subprocess.PIPE,
    )
    playbook = Playbook(str(tmp_path), collections_root=str(installed))
    args = dict(
        name="galaxy",
        cgroup=cgroup,
        pin_dir=os.path.join(bpffs, "tcp_rto"),
        mount_bpffs=False,
        rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}],
    )
    applied = playbook.module(**args)
    assert applied["verification"]["ok"] is True, applied["_output"]
    assert cgroup_program_ids(cgroup) == [applied["instance"]["program_id"]]
    assert playbook.module(state="absent", **args)["changed"] is True
    assert cgroup_program_ids(cgroup) == []
