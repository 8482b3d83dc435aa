"""An instance applied by release 0.2.0 (its code and object, from git) and then by this code: the
new object brings maps the old one lacked (stats, syn_rtx_time), and the run says it upgrades the
instance, not that it repairs one or that anything drifted."""

import json
import os
import subprocess

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import info
from ansible_collections.netbpf.tcp_rto.tests.support import paths, reconcile_run

pytestmark = pytest.mark.kernel

RELEASE = "53e4551"  # Release 0.2.0: before the telemetry maps
RULES = [{"dest": "127.0.0.0/8", "rto_ms": 200}]
# Options of 0.2.0's module that are test aids now (tests/support/aids.py), at their defaults then.
RELEASE_OPTIONS = dict(force_legacy_attach=False, persist_root="/")
RUN_RELEASE = (
    "import json, sys\n"
    "from ansible_collections.netbpf.tcp_rto.plugins.module_utils import reconcile\n"
    "print(json.dumps(reconcile.run(json.loads(sys.argv[1]))))\n"
)


@pytest.fixture
def release_root(tmp_path):
    """A collection root holding release 0.2.0's plugins."""
    collection = tmp_path / "release" / "ansible_collections" / "netbpf" / "tcp_rto"
    collection.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", paths.REPO, "archive", RELEASE, "plugins"], stdout=subprocess.PIPE, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(collection)], input=archive, check=True)
    return str(tmp_path / "release")


def params(cgroup, bpffs, **given):
    return reconcile_run.module_params(
        name="upgrade", cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, **given
    )


def test_an_instance_of_the_earlier_release_is_upgraded_not_repaired(cgroup, bpffs, release_root):
    old_object = os.path.join(
        release_root, "ansible_collections/netbpf/tcp_rto/plugins/plugin_utils/tcp_initial_rto.bpf.o"
    )
    old = subprocess.run(
        [
            paths.MANAGED_PYTHON,
            "-c",
            RUN_RELEASE,
            json.dumps(params(cgroup, bpffs, rules=RULES, src=old_object, **RELEASE_OPTIONS)),
        ],
        env=dict(os.environ, PYTHONPATH=release_root),
        stdout=subprocess.PIPE,
        check=True,
        timeout=300,
    )
    assert json.loads(old.stdout.decode())["changed"]
    assert "stats" not in os.listdir(os.path.join(bpffs, "tcp_rto", "upgrade"))
    (reported,) = info.gather(os.path.join(bpffs, "tcp_rto"))["instances"]
    assert reported["state"] == "ok"
    assert reported["problems"] == [
        "applied from an earlier object, without the maps stats, syn_rtx_time, learned, auto_conn: apply the instance again to upgrade it"
    ]

    returncode, result, err = reconcile_run.run(params(cgroup, bpffs, rules=RULES))
    assert returncode == 0, (result, err)
    assert result["drift"] == []
    assert not [action for action in result["actions"] if "repair" in action], result["actions"]
    assert [action for action in result["actions"] if action.startswith("upgrade")] == [
        "upgrade the instance from an earlier object (its program has no maps stats, syn_rtx_time, learned, auto_conn)"
    ]
    assert "replace the attached program atomically (link)" in result["actions"]
    assert {"stats", "syn_rtx_time"} <= set(os.listdir(os.path.join(bpffs, "tcp_rto", "upgrade")))
    assert result["verification"]["ok"]

    returncode, again, err = reconcile_run.run(params(cgroup, bpffs, rules=RULES))
    assert returncode == 0, (again, err)
    assert (again["changed"], again["drift"]) == (False, [])
