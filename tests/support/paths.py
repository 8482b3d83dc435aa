"""Where things are: the repository, the collections root that makes it importable and the tools
that run it."""

import functools
import os
import subprocess
import sys

# the checkout itself, not its path through the collections root's link (a script started through that
# path would re-link the collection inside itself)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
# ansible_collections/netbpf/tcp_rto in here is a symlink to REPO (scripts/setup-env makes it)
COLLECTIONS_ROOT = os.path.join(REPO, ".cache", "collections")
ANSIBLE_BIN = os.path.dirname(sys.executable)
# Debian's own Python, as on a real managed host (pyenv shims may name a python3.X not installed).
MANAGED_PYTHON = "/usr/bin/python3"
MODULE = "netbpf.tcp_rto.tcp_initial_rto"
SHIPPED_OBJECT = os.path.join(REPO, "plugins", "plugin_utils", "tcp_initial_rto.bpf.o")


def python_env(env=None):
    """env (default: this process's) for a Python that imports the collection and this package."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [COLLECTIONS_ROOT, env.get("PYTHONPATH")]))
    return env


@functools.lru_cache(maxsize=None)
def managed_cache_tag():
    """MANAGED_PYTHON's sys.implementation.cache_tag: the <tag> of the code it compiles beside
    persistence's copies (module_utils/__pycache__/<name>.<tag>.pyc)."""
    return subprocess.run(
        [MANAGED_PYTHON, "-c", "import sys; print(sys.implementation.cache_tag)"],
        stdout=subprocess.PIPE,
        universal_newlines=True,
        check=True,
    ).stdout.strip()
