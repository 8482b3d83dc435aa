"""The ecosystem's own gates through ansible-test (tests/ansible-test), on every ansible-core the
collection supports (2.16 to 2.21): the integration targets under tests/integration/targets/ and
the sanity tests with empty ignore files on each, the unit tests on the newest."""

import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSIBLE_TEST = os.path.join(REPO, "tests", "ansible-test")

CORES = ["2.16", "2.17", "2.18", "2.19", "2.20", "2.21"]
ENDS = ("2.16", "2.21")
# Releases between the ends run every sanity test but the pure linters: their findings do not
# depend on the ansible-core release beyond the version of the linter it pins, which the two ends
# already cover, and pylint alone is about 70% of a warm sanity run (README, test table).
LINTERS_CHECKED_AT_THE_ENDS = ["pylint", "pep8", "yamllint", "changelog"]


def sanity_args(core):
    if core in ENDS:
        return ["sanity"]
    return ["sanity"] + [arg for test in LINTERS_CHECKED_AT_THE_ENDS for arg in ("--skip-test", test)]


GATES = (
    [pytest.param(core, sanity_args(core), id="sanity-" + core) for core in CORES]
    + [pytest.param("2.21", ["units"], id="units-2.21", marks=pytest.mark.kernel)]
    + [pytest.param(core, ["integration"], id="integration-" + core, marks=pytest.mark.kernel) for core in CORES]
)


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
    if command[0] == "sanity":
        ran = set(re.findall(r'^Running sanity test "([^"]+)"', output, re.MULTILINE))
        assert {"validate-modules", "import", "compile", "ansible-doc", "runtime-metadata"} <= ran, output[-20000:]
        skipped = set() if core in ENDS else set(LINTERS_CHECKED_AT_THE_ENDS)
        assert ran & set(LINTERS_CHECKED_AT_THE_ENDS) == set(LINTERS_CHECKED_AT_THE_ENDS) - skipped, sorted(ran)
