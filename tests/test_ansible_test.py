"""The ecosystem's own gates through ansible-test (tests/ansible-test), on the oldest and the
newest ansible-core the collection supports: sanity with empty ignore files, the unit tests, and
the integration targets under tests/integration/targets/."""

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSIBLE_TEST = os.path.join(REPO, "tests", "ansible-test")

GATES = [
    pytest.param("2.16", ["sanity"], id="sanity-2.16"),
    pytest.param("2.21", ["sanity"], id="sanity-2.21"),
    pytest.param("2.21", ["units"], id="units-2.21", marks=pytest.mark.kernel),
    pytest.param("2.16", ["integration"], id="integration-2.16", marks=pytest.mark.kernel),
    pytest.param("2.21", ["integration"], id="integration-2.21", marks=pytest.mark.kernel),
]


def test_sanity_ignore_files_are_empty():
    ignores = os.path.join(REPO, "tests", "sanity")
    names = sorted(os.listdir(ignores)) if os.path.isdir(ignores) else []
    ignored = {name: open(os.path.join(ignores, name)).read() for name in names if name.startswith("ignore-")}
    assert {name: text for name, text in ignored.items() if text.strip()} == {}


@pytest.mark.parametrize("core, command", GATES)
def test_ansible_test_gate(core, command):
    proc = subprocess.run(
        [ANSIBLE_TEST, core, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=1800,
        check=False,
    )
    # pip's notes about the machine's unreachable extra index are noise here
    output = "\n".join(line for line in proc.stdout.splitlines() if "is ignored: it is neither" not in line)
    assert proc.returncode == 0, "tests/ansible-test %s %s failed:\n%s" % (core, " ".join(command), output[-20000:])
    # ansible-test also succeeds when it finds nothing to run
    assert "All targets skipped" not in output, output[-20000:]
    if command[0] == "integration":
        assert "ansible-playbook [core %s." % core in output, output[-20000:]
