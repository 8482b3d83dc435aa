"""The collection in an execution environment (Automation Platform): the build context ansible-builder
creates for an EE definition that installs the collection, and what that context's own introspection
step finds in the installed collection (meta/execution-environment.yml -> bindep.txt). No container
is built: the build would run the same introspect script on the same installed tree."""

import os
import subprocess

import yaml
from bindep.depends import Depends
from test_galaxy import build

from ansible_collections.netbpf.tcp_rto.tests.support.paths import ANSIBLE_BIN, REPO

# What the collection asks of the execution environment, and nothing else: clang, llvm-strip and
# the kernel's UAPI headers to compile a `src: *.c` program on the controller. No Python requirements.
COLLECTION_BINDEP = [
    "clang  # from collection netbpf.tcp_rto",
    "llvm  # from collection netbpf.tcp_rto",
    "linux-libc-dev [platform:dpkg]  # from collection netbpf.tcp_rto",
    "kernel-headers [platform:rpm]  # from collection netbpf.tcp_rto",
]


def run(command, cwd=None):
    return subprocess.run(
        command, cwd=cwd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True
    ).stdout


def test_ansible_builder_context_installs_the_collection_with_clang(tmp_path):
    tarball = build(REPO, str(tmp_path / "dist"))
    name = os.path.basename(tarball)
    definition = {
        "version": 3,
        "images": {"base_image": {"name": "quay.io/fedora/fedora:41"}},
        "dependencies": {
            "python_interpreter": {"package_system": "python3", "python_path": "/usr/bin/python3"},
            "ansible_core": {"package_pip": "ansible-core>=2.16"},
            "ansible_runner": {"package_pip": "ansible-runner"},
            "galaxy": {"collections": [{"name": "collections/" + name, "type": "file"}]},
        },
        "additional_build_files": [{"src": tarball, "dest": "collections"}],
    }
    (tmp_path / "execution-environment.yml").write_text(yaml.safe_dump(definition))
    context = tmp_path / "context"
    run(
        [
            os.path.join(ANSIBLE_BIN, "ansible-builder"),
            "create",
            "-c",
            str(context),
            "--output-filename",
            "Containerfile",
        ],
        cwd=str(tmp_path),
    )

    build_dir = context / "_build"
    with open(str(build_dir / "requirements.yml")) as handle:
        assert yaml.safe_load(handle) == {"collections": [{"name": "collections/" + name, "type": "file"}]}
    assert (build_dir / "collections" / name).is_file()
    containerfile = (context / "Containerfile").read_text()
    assert "ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml" in containerfile
    assert "/output/scripts/introspect.py introspect --write-bindep=/tmp/src/bindep.txt" in containerfile

    # The image build's galaxy and builder stages, on this machine: the collection installed from
    # the context's requirements, then the context's introspect script over it.
    installed = tmp_path / "collections"
    galaxy = os.path.join(ANSIBLE_BIN, "ansible-galaxy")
    run([galaxy, "collection", "install", "-r", "requirements.yml", "-p", str(installed)], cwd=str(build_dir))
    assert (installed / "ansible_collections" / "netbpf" / "tcp_rto" / "meta" / "execution-environment.yml").is_file()
    found = tmp_path / "found"
    report = run(
        [
            os.path.join(ANSIBLE_BIN, "python"),
            str(build_dir / "scripts" / "introspect.py"),
            "introspect",
            "--write-bindep=%s" % (found / "bindep.txt"),
            "--write-pip=%s" % (found / "requirements.txt"),
            str(installed),
        ]
    )
    assert yaml.safe_load(report[report.index("---") :]) == {"python": [], "system": COLLECTION_BINDEP}, report
    assert (found / "bindep.txt").read_text().splitlines() == COLLECTION_BINDEP
    assert not (found / "requirements.txt").exists(), "the collection asks for no Python package"


def test_bindep_resolves_clang_and_headers_on_debian_and_rhel():
    """The image's assemble step installs what `bindep` lists for the default profile: clang, llvm and the
    headers package of the platform, in the final image (not a build-only `compile` profile)."""
    with open(os.path.join(REPO, "bindep.txt")) as handle:
        rules = Depends(handle.read())
    for platform, headers in (("platform:dpkg", "linux-libc-dev"), ("platform:rpm", "kernel-headers")):
        assert [rule[0] for rule in rules.active_rules([platform, "default"])] == ["clang", "llvm", headers]
