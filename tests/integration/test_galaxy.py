"""The collection as users get it: ansible-galaxy build, install into a clean path, run by FQCN."""

import os
import shutil
import subprocess
import tarfile

import pytest
from conftest import ANSIBLE_BIN, REPO, Playbook, cgroup_program_ids

pytestmark = pytest.mark.kernel

# What a contributor's checkout holds besides the collection (galaxy.yml build_ignore): caches,
# virtualenvs, benchmark results, docs builds, ansible-test output, earlier tarballs.
NOT_COLLECTION = (
    ".cache",
    ".venv",
    ".git",
    ".pytest_cache",
    ".ruff_cache",
    ".ansible",
    "tests/output",
    "bench/results",
    "docs/site",
    "docs/_build",
    "_build",
    "changelogs/.plugin-cache.yaml",
)


def not_collection_entries(names):
    return [
        name
        for name in names
        if any(name == path or name.startswith(path + "/") for path in NOT_COLLECTION)
        or "__pycache__" in name.split("/")
        or name.endswith((".pyc", ".tar.gz"))
    ]


def build(source, output_dir):
    subprocess.run(
        [os.path.join(ANSIBLE_BIN, "ansible-galaxy"), "collection", "build", "--output-path", output_dir, source],
        check=True,
        stdout=subprocess.PIPE,
    )
    return os.path.join(output_dir, "netbpf-tcp_rto-0.1.0.tar.gz")


def test_tarball_holds_the_collection_only(tmp_path):
    """Build from a copy of the checkout with a file planted in every place the build must skip."""
    checkout = tmp_path / "checkout"
    listed = subprocess.run(
        ["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout.decode()
    for name in listed.split("\0"):
        if name and os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(str(checkout / os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), str(checkout / name))
    planted = [
        ".cache/docs-site/html/index.html",
        ".venv/bin/python",
        ".pytest_cache/README.md",
        ".ruff_cache/CACHEDIR.TAG",
        ".ansible/tmp/state",
        "tests/output/junit/sanity.xml",
        "bench/results/effect.json",
        "docs/_build/html/index.html",
        "_build/index.html",
        "changelogs/.plugin-cache.yaml",
        "plugins/module_utils/__pycache__/host.cpython-311.pyc",
        "tests/unit/__pycache__/test_hz.cpython-311.pyc",
        "netbpf-tcp_rto-0.0.9.tar.gz",
    ]
    for name in planted:
        os.makedirs(str(checkout / os.path.dirname(name)), exist_ok=True)
        (checkout / name).write_text("not part of the collection\n")

    with tarfile.open(build(str(checkout), str(tmp_path))) as archive:
        names = archive.getnames()
    assert not_collection_entries(names) == []
    assert "docs/site/conf.py" in listed, "the docs site tooling is in the checkout and must stay out of the build"
    for name in (
        "README.md",
        "CHANGELOG.md",
        "changelogs/changelog.yaml",
        "meta/runtime.yml",
        "docs/fleet.md",
        "playbooks/rollout.yml",
        "roles/tcp_rto/meta/argument_specs.yml",
        "plugins/modules/tcp_initial_rto.py",
        "files/bpf/tcp_initial_rto.bpf.o",
    ):
        assert name in names, name


def test_build_install_and_run(tmp_path, cgroup, bpffs):
    tarball = build(REPO, str(tmp_path))
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "files/bpf/tcp_initial_rto.bpf.o" in names
    assert "plugins/action/tcp_initial_rto.py" in names
    assert not_collection_entries(names) == []

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
