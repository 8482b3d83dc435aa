"""The code that runs on managed hosts (module_utils) works on every Python from 3.6 on that this
machine has: Debian's own, and pyenv's when present (RHEL 8's platform-python is 3.6).

Each of them also runs the pure-logic unit tests: the ones that need no kernel (PURE_LOGIC_TESTS,
without the tests marked kernel), with a pytest for that Python from a small virtualenv under
.cache/target-pythons/, made once per Python version and requirement."""

import glob
import hashlib
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERPRETERS = sorted({"/usr/bin/python3", *glob.glob("/root/.pyenv/versions/3.*/bin/python3")})

SNIPPET = """
import os, sys
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import apply, bpf_maps, bpf_object, bpf_syscall
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import desired, host, hz, probe, reconcile, rto_program, uapi
obj = bpf_object.BpfObject.from_file(os.path.join(sys.argv[1], "plugins", "plugin_utils", "tcp_initial_rto.bpf.o"))
bpf_object.check_contract(obj)
rules = desired.parse_rules([{"dest": "10.0.0.0/8", "rto_ms": 50}, {"dest": "fd00::/8", "rto_ms": 4}], 250)
assert [rule.rto_jiffies for rule in rules] == [13, 1], rules
fd = bpf_maps.map_create(uapi.BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0, "pycheck")
os.close(fd)
print(host.kernel_release())
"""


@pytest.mark.parametrize("python", INTERPRETERS)
def test_module_utils_on_target_python(python):
    proc = subprocess.run(
        [python, "-c", SNIPPET, REPO],
        env=dict(os.environ, PYTHONPATH=os.path.join(REPO, ".cache", "collections")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip() == os.uname()[2]


# The domain (rules, jiffies, plan) and the BPF object reader (ELF parsing, the program contract).
PURE_LOGIC_TESTS = [
    "tests/unit/module_utils/test_desired.py",
    "tests/unit/module_utils/test_plan.py",
    "tests/unit/module_utils/test_bpf_object.py",
    "tests/unit/module_utils/test_bytecode.py",
]
# The newest pytest each Python runs, installed in this order. Python 3.6's own pip (18) does not
# check what Python a wheel from a local --find-links directory needs: a newer pip first.
PYTEST_REQUIREMENTS = {
    "3.6": ("pip==21.3.1", "pytest==7.0.1"),
    "3.7": ("pytest==7.4.4",),
    "3.8": ("pytest==8.3.5",),
    "3.9": ("pytest==8.4.2",),
}
PYTEST_REQUIREMENTS_NEWER = ("pytest>=8,<10",)


def pytest_venv(python):
    """A virtualenv of python with pytest, made once per Python version and requirement."""
    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        stdout=subprocess.PIPE,
        universal_newlines=True,
        check=True,
    ).stdout.strip()
    requirements = PYTEST_REQUIREMENTS.get(version.rsplit(".", 1)[0], PYTEST_REQUIREMENTS_NEWER)
    key = hashlib.sha256(" ".join((version, *requirements)).encode()).hexdigest()[:12]
    venv = os.path.join(REPO, ".cache", "target-pythons", "%s-%s" % (version, key))
    if not os.path.exists(os.path.join(venv, ".complete")):
        subprocess.run(["rm", "-rf", venv], check=True)
        subprocess.run([python, "-m", "venv", venv], check=True)
        for requirement in requirements:
            subprocess.run(
                [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 requirement],
                check=True,
            )  # fmt: skip
        open(os.path.join(venv, ".complete"), "w").close()
    return os.path.join(venv, "bin", "python")


@pytest.mark.parametrize("python", INTERPRETERS)
def test_pure_logic_tests_on_target_python(python):
    proc = subprocess.run(
        [pytest_venv(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not kernel", *PURE_LOGIC_TESTS],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout
