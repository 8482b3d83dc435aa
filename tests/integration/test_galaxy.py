"""The collection as users get it: ansible-galaxy build, install into a clean path, run by FQCN."""

import glob
import os
import shutil
import subprocess
import tarfile

import pytest

from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.paths import ANSIBLE_BIN, REPO
from ansible_collections.netbpf.tcp_rto.tests.support.playbook import Playbook

pytestmark = pytest.mark.kernel

# What the tarball holds: what a user runs, its docs, the program's source and the license. The
# test harness, benchmarks, demo, developer tooling, caches and build output stay out.
SHIPPED_TOP = {
    "COPYING",
    "README.md",
    "CHANGELOG.md",
    "bindep.txt",
    "MANIFEST.json",
    "FILES.json",
    "changelogs",
    "docs",
    "files",
    "meta",
    "playbooks",
    "plugins",
    "roles",
}
# What plugins, roles and playbooks need at run time: nothing outside these.
RUN_TIME_TOP = ("MANIFEST.json", "FILES.json", "meta", "plugins", "roles", "playbooks")


def not_collection_entries(names):
    return [
        name
        for name in names
        if name.split("/")[0] not in SHIPPED_TOP
        or name.startswith(("docs/site", "docs/_build"))
        or "__pycache__" in name.split("/")
        or name.endswith((".pyc", ".tar.gz"))
    ]


def build(source, output_dir):
    subprocess.run(
        [os.path.join(ANSIBLE_BIN, "ansible-galaxy"), "collection", "build", "--output-path", output_dir, source],
        check=True,
        stdout=subprocess.PIPE,
    )
    (tarball,) = glob.glob(os.path.join(output_dir, "netbpf-tcp_rto-*.tar.gz"))
    return tarball


def copy_checkout(tmp_path):
    """The files git knows (or would add) copied to tmp_path/checkout. -> (path, their names)"""
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
    return checkout, listed


def test_tarball_holds_the_collection_only(tmp_path):
    """Build from a copy of the checkout with a file planted in every place the build must skip."""
    checkout, listed = copy_checkout(tmp_path)
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
        "COPYING",
        "README.md",
        "CHANGELOG.md",
        "changelogs/changelog.yaml",
        "meta/runtime.yml",
        "meta/execution-environment.yml",
        "bindep.txt",
        "docs/fleet.md",
        "playbooks/rollout.yml",
        "roles/tcp_rto/meta/argument_specs.yml",
        "plugins/modules/tcp_initial_rto.py",
        "plugins/plugin_utils/tcp_initial_rto.bpf.o",
        "files/bpf/tcp_initial_rto.bpf.c",
    ):
        assert name in names, name
    for name in ("tests/run", "bench/run", "demo/run", "scripts/setup-env", "tests/kernels/matrix.py", "ruff.toml"):
        assert name in listed, "%s is no longer in the checkout: update this test" % name
        assert name not in names, "%s is test or developer tooling and must stay out of the build" % name


def test_build_install_and_run_with_only_what_runs(tmp_path, cgroup, bpffs):
    """Installed from the tarball and cut down to meta/, plugins/, roles/ and playbooks/, the module
    runs with the shipped object and compiles a `src: x.c` (clang on the controller)."""
    tarball = build(REPO, str(tmp_path))
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "plugins/action/tcp_initial_rto.py" in names
    assert not_collection_entries(names) == []

    installed = tmp_path / "installed"
    subprocess.run(
        [os.path.join(ANSIBLE_BIN, "ansible-galaxy"), "collection", "install", "-p", str(installed), tarball],
        check=True,
        stdout=subprocess.PIPE,
    )
    collection = installed / "ansible_collections" / "netbpf" / "tcp_rto"
    for entry in os.listdir(str(collection)):
        if entry not in RUN_TIME_TOP:
            path = collection / entry
            if path.is_dir():
                shutil.rmtree(str(path))
            else:
                path.unlink()
    assert sorted(os.listdir(str(collection))) == sorted(RUN_TIME_TOP)
    source = tmp_path / "tcp_initial_rto.bpf.c"  # its name lands in the object: the same as the shipped one
    shutil.copy(os.path.join(REPO, "files", "bpf", "tcp_initial_rto.bpf.c"), str(source))

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
    compiled = playbook.module(src=str(source), **args)
    assert compiled["verification"]["ok"] is True, compiled["_output"]
    assert compiled["changed"] is False, "the same source compiles to the shipped object: nothing to change"
    assert playbook.module(state="absent", **args)["changed"] is True
    assert cgroup_program_ids(cgroup) == []


def test_galaxy_importer_accepts_the_tarball(tmp_path):
    """galaxy-importer, what Automation Hub and Galaxy run on an upload: no error, no warning.

    Galaxy requires a `repository` URL, and the collection has no public repository yet, so
    galaxy.yml names none (no placeholder): the importer runs on a build with the one line a
    release adds, and the real galaxy.yml fails for that reason alone."""
    with open(os.path.join(REPO, "galaxy.yml")) as handle:
        metadata = handle.read()
    assert "repository:" not in metadata and ".invalid" not in metadata
    assert galaxy_importer(build(REPO, str(tmp_path / "as-is")), tmp_path)[1] == [
        "ERROR: The import failed for the following reason: Invalid collection metadata. 'repository' is required"
    ]

    checkout, _listed = copy_checkout(tmp_path)
    with open(str(checkout / "galaxy.yml"), "a") as handle:
        handle.write("repository: https://example.org/netbpf/tcp_rto\n")
    returncode, complaints, output = galaxy_importer(build(str(checkout), str(tmp_path / "release")), tmp_path)
    assert returncode == 0, output
    assert complaints == [], output
    assert "Importer processing completed successfully" in output, output


def galaxy_importer(tarball, workdir):
    """-> (exit code, its WARNING and ERROR lines, its whole output)"""
    env = dict(os.environ, PATH=ANSIBLE_BIN + os.pathsep + os.environ["PATH"], HOME=str(workdir), NO_COLOR="1")
    proc = subprocess.run(
        [os.path.join(ANSIBLE_BIN, "python"), "-m", "galaxy_importer.main", tarball],
        cwd=str(workdir),
        env=env,
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    complaints = [line for line in proc.stdout.splitlines() if line.startswith(("WARNING", "ERROR"))]
    return proc.returncode, complaints, proc.stdout
