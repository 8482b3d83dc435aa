"""The test aids of module_utils (docs/architecture.md) as the test-only parameters every test
driver takes: reconcile_run (reconcile.run in a process of its own), Playbook.module (the module
through Ansible, the aids set with the task's `environment:`) and applied() (reconcile.run in the
test's own process). No module option reaches them.

`_no_prog_replace: true` behaves as a kernel before 5.6, without BPF_F_REPLACE: attach the new
program, then detach the old one; `_legacy_attach: true` attaches with BPF_PROG_ATTACH and
BPF_F_ALLOW_MULTI where bpf_link exists (both through TCP_RTO_FORCE_MISSING); `_persist_root: <dir>`
puts every file of persistence under dir instead of / (TCP_RTO_TEST_PERSIST_ROOT)."""

import contextlib
import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import features, host_paths

# test-only parameter -> the kernel feature it makes the probes report missing
FORCED_MISSING = (("_no_prog_replace", "prog_replace"), ("_legacy_attach", "cgroup_link"))


def split(params, force_missing=None):
    """-> (params without the test-only keys, the environment variables that set what they ask
    for); force_missing: more features to report missing ("a,b")."""
    params = dict(params)
    missing = [force_missing] if force_missing else []
    missing += [feature for key, feature in FORCED_MISSING if params.pop(key, False)]
    environment = {}
    if missing:
        environment[features.FORCE_MISSING_ENVIRONMENT] = ",".join(missing)
    root = params.pop("_persist_root", None)
    if root:
        environment[host_paths.TEST_ROOT_ENVIRONMENT] = root
    return params, environment


@contextlib.contextmanager
def applied(params):
    """For reconcile.run in this process: params without the test-only keys, their aids set in
    os.environ until the block ends."""
    params, environment = split(params)
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        yield params
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
