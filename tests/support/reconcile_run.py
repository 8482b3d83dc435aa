"""One module run without Ansible, as its own process: reconcile.run on the parameters in argv[1]
(JSON, every option of the module), the way the module calls it. Prints the result as JSON, or
{"error": message} and exits 1. The crash tests kill it with TCP_RTO_FAULT_AT; the concurrency
tests start several at once.

A parameter `_no_prog_replace: true` (test only) makes the run behave as on a kernel before 5.6,
without BPF_F_REPLACE: attach the new program, then detach the old one (the same as starting it
with force_missing="prog_replace"); `_check_mode: true` runs it in check mode.
"""

import copy
import json
import os
import subprocess
import sys

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import reconcile
from ansible_collections.netbpf.tcp_rto.tests.support import paths

FORCE_MISSING = "TCP_RTO_FORCE_MISSING"  # features.FORCE_MISSING_ENVIRONMENT


def main():
    params = json.loads(sys.argv[1])
    if params.pop("_no_prog_replace", False):
        os.environ[FORCE_MISSING] = "prog_replace"
    check_mode = params.pop("_check_mode", False)
    try:
        result = reconcile.run(params, check_mode=check_mode)
    except reconcile.VerificationFailed as exc:
        print(json.dumps(dict(exc.result, error=str(exc))))
        return 1
    except reconcile.ERRORS as exc:
        print(json.dumps({"error": reconcile.describe_error(exc)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------- for the tests that start it


def module_params(**given):
    """Every option of the module at its default, the shipped object as src, then given."""
    from ansible_collections.netbpf.tcp_rto.plugins.modules.tcp_initial_rto import ARGUMENT_SPEC

    params = {key: copy.deepcopy(spec.get("default")) for key, spec in ARGUMENT_SPEC.items()}
    params["src"] = paths.SHIPPED_OBJECT
    params.update(given)
    return params


def start(params, fault=None, fail_at=None, force_missing=None):
    """This script on params in a new process (the managed host's Python); fault: TCP_RTO_FAULT_AT
    (killed there), fail_at: TCP_RTO_FAIL_AT (a failed step there); force_missing:
    TCP_RTO_FORCE_MISSING, the kernel features its probes report missing."""
    aids = ("TCP_RTO_FAULT_AT", "TCP_RTO_FAIL_AT", FORCE_MISSING)
    env = paths.python_env({key: value for key, value in os.environ.items() if key not in aids})
    for name, value in zip(aids, (fault, fail_at, force_missing)):
        if value:
            env[name] = value
    return subprocess.Popen(
        [paths.MANAGED_PYTHON, "-m", __spec__.name, json.dumps(params)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )


def finish(proc, timeout=300):
    """-> (returncode, result dict or None, stderr) of a started run."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, (json.loads(out) if out.strip() else None), err


def run(params, fault=None, fail_at=None, force_missing=None):
    return finish(start(params, fault, fail_at, force_missing))
