"""One module run without Ansible, as its own process: reconcile.run on the parameters in argv[1]
(JSON, every option of the module), the way the module calls it. Prints the result as JSON, or
{"error": message} and exits 1. The crash tests kill it with TCP_RTO_FAULT_AT; the concurrency
tests start several at once.

The test-only parameters of tests/support/aids.py set the test aids for the run; `_check_mode: true`
runs it in check mode.
"""

import copy
import json
import os
import subprocess
import sys

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import features, host_paths, reconcile
from ansible_collections.netbpf.tcp_rto.tests.support import aids, paths


def main():
    params = json.loads(sys.argv[1])
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
    TCP_RTO_FORCE_MISSING, the kernel features its probes report missing; params may hold the
    test-only parameters of aids.py."""
    params, aid_environment = aids.split(params, force_missing)
    faults = ("TCP_RTO_FAULT_AT", "TCP_RTO_FAIL_AT")  # fault.ENVIRONMENT, fault.FAIL_ENVIRONMENT
    unset = (*faults, features.FORCE_MISSING_ENVIRONMENT, host_paths.TEST_ROOT_ENVIRONMENT)
    env = paths.python_env({key: value for key, value in os.environ.items() if key not in unset})
    for name, value in zip(faults, (fault, fail_at)):
        if value:
            env[name] = value
    env.update(aid_environment)
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


def sandbox_params(name, cgroup, bpffs, **given):
    """module_params() for instance name in a test's sandbox cgroup and bpffs, then given."""
    return module_params(name=name, cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, **given)


def applied(name, cgroup, bpffs, **options):
    """A run that must succeed on instance name in the sandbox's cgroup and bpffs (the shipped
    object, no verification unless options ask for it) -> its result."""
    returncode, result, err = run(sandbox_params(name, cgroup, bpffs, **dict(dict(verify=False), **options)))
    assert returncode == 0, (result, err)
    return result
