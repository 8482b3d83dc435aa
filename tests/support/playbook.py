"""ansible-playbook against localhost with this checkout as the collection: each task's result
recorded as JSON (callback_plugins/record_results.py) for the tests, wall time for the benchmarks."""

import json
import os
import subprocess
import time

from ansible_collections.netbpf.tcp_rto.tests.support import aids, lab, paths

CALLBACK_PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callback_plugins")


def localhost_inventory(workdir):
    path = os.path.join(workdir, "inventory.ini")
    with open(path, "w") as handle:
        handle.write("localhost ansible_connection=local ansible_python_interpreter=%s\n" % paths.MANAGED_PYTHON)
    return path


def write_play(path, hosts, tasks):
    with open(path, "w") as handle:
        json.dump([{"hosts": hosts, "gather_facts": False, "tasks": tasks}], handle)
    return path


def ansible_env(workdir, collections_root=paths.COLLECTIONS_ROOT, results_file=None):
    """The environment of an ansible-playbook run in workdir; results_file: record each task there."""
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=collections_root,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_LOCAL_TEMP=workdir,
    )
    if results_file:
        env.update(
            ANSIBLE_CALLBACK_PLUGINS=CALLBACK_PLUGINS,
            ANSIBLE_CALLBACKS_ENABLED="record_results",
            RECORD_RESULTS_FILE=results_file,
        )
    return env


def playbook_command(inventory, playbook, extra_args=()):
    return [os.path.join(paths.ANSIBLE_BIN, "ansible-playbook"), "-i", inventory, playbook, *list(extra_args)]


class Playbook:
    """Writes tasks into a playbook for localhost, runs it, returns each task's result."""

    def __init__(self, workdir, collections_root=paths.COLLECTIONS_ROOT):
        self.workdir = workdir
        self.collections_root = collections_root
        self.inventory = localhost_inventory(workdir)
        self.runs = 0

    def run(self, tasks, check=False, diff=False, extra_args=()):
        """Run tasks in a play for localhost."""
        self.runs += 1
        playbook = write_play(os.path.join(self.workdir, "play%d.yml" % self.runs), "localhost", tasks)
        return self.run_playbook(
            playbook, self.inventory, (["--check"] if check else []) + (["--diff"] if diff else []) + list(extra_args)
        )

    def run_playbook(self, playbook, inventory, extra_args=()):
        """Run a playbook file, or a collection playbook by FQCN; each task's result is recorded."""
        self.runs += 1
        results_file = os.path.join(self.workdir, "results%d.jsonl" % self.runs)
        proc = subprocess.run(
            playbook_command(inventory, playbook, extra_args),
            env=ansible_env(self.workdir, self.collections_root, results_file),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
            timeout=600,
            cwd=self.workdir,
            check=False,
        )
        results = []
        if os.path.exists(results_file):
            with open(results_file) as handle:
                results = [json.loads(line) for line in handle]
        custom_stats = {}
        if os.path.exists(results_file + ".custom_stats"):
            with open(results_file + ".custom_stats") as handle:
                custom_stats = json.load(handle)
        return PlaybookRun(proc.returncode, proc.stdout, results, custom_stats)

    def module(self, check=False, diff=False, **args):
        """One task of the module; returns its result dict (with .output for debugging). args may
        hold the test-only parameters of aids.py, set through the task's environment."""
        args, environment = aids.split(args)
        task = {"name": "tcp_initial_rto", paths.MODULE: args, "ignore_errors": True, "environment": environment}
        run = self.run([task], check=check, diff=diff)
        assert run.results, "no result recorded:\n" + run.output
        result = run.results[-1]
        result["_output"] = run.output
        return result


class PlaybookRun:
    def __init__(self, returncode, output, results, custom_stats=None):
        self.returncode, self.output, self.results = returncode, output, results
        # what the playbook published with set_stats: {"_run": {...}} for data not per host
        self.custom_stats = custom_stats or {}


def timed_playbook(workdir, inventory, playbook, forks=None, extra_args=(), env=None, timeout=900):
    """Run the playbook (a file, or a collection's playbook by name) in its own session (lab.run:
    killed on interrupt or after timeout seconds) with extra_args and env added -> wall seconds.
    Fails with the play's output when a task fails."""
    command = playbook_command(inventory, playbook, [*extra_args, *(["--forks", str(forks)] if forks else [])])
    start = time.perf_counter()
    try:
        lab.run(
            command,
            timeout=timeout,
            env=dict(ansible_env(workdir), **(env or {})),
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except subprocess.CalledProcessError as exc:
        output = exc.output.decode(errors="replace")
        # at a hundred hosts the output's tail is the recap: the failed tasks' lines say why
        failures = [line for line in output.splitlines() if line.startswith(("fatal:", "failed:"))][:10]
        raise RuntimeError(
            "%s failed:\n%s\n...\n%s" % (os.path.basename(playbook), "\n".join(failures), output[-1500:])
        )
    return time.perf_counter() - start
