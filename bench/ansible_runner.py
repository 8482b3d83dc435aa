"""ansible-playbook runs for the benchmarks: a play written as JSON, timed from start to exit."""

import json
import os
import subprocess
import sys
import time

import lab

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
COLLECTIONS_ROOT = os.path.join(lab.REPO, ".cache", "collections")
MODULE = "netbpf.tcp_rto.tcp_initial_rto"


def localhost_inventory(workdir):
    path = os.path.join(workdir, "localhost.ini")
    with open(path, "w") as handle:
        handle.write("localhost ansible_connection=local ansible_python_interpreter=%s\n" % lab.MANAGED_PYTHON)
    return path


def write_play(workdir, name, hosts, task):
    path = os.path.join(workdir, name + ".yml")
    with open(path, "w") as handle:
        json.dump([{"hosts": hosts, "gather_facts": False, "tasks": [task]}], handle)
    return path


def timed_playbook(workdir, inventory, playbook, forks=None, extra_args=(), env=None, timeout=900):
    """Run the playbook (a file, or a collection's playbook by name) with extra_args and env added;
    -> wall seconds. Fails with the play's output when a task fails."""
    env = dict(
        os.environ,
        **(env or {}),
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_LOCAL_TEMP=workdir,
    )
    command = [ANSIBLE_PLAYBOOK, "-i", inventory, playbook, *extra_args] + (["--forks", str(forks)] if forks else [])
    start = time.perf_counter()
    try:
        lab.run(command, timeout=timeout, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError("%s failed:\n%s" % (os.path.basename(playbook), exc.output.decode(errors="replace")[-3000:]))
    return time.perf_counter() - start
