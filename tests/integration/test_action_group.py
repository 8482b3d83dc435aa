"""meta/runtime.yml's action group: module_defaults for group/netbpf.tcp_rto.tcp_rto reach both
modules, so a play sets pin_dir (and the other shared options) once."""

import json
import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host_paths
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids

pytestmark = pytest.mark.kernel


def test_module_defaults_for_the_group_reach_both_modules(playbook, cgroup, bpffs, tmp_path):
    pin_dir = os.path.join(bpffs, "grouped")
    root = str(tmp_path / "root")
    play = {
        "hosts": "localhost",
        "gather_facts": False,
        "environment": {host_paths.TEST_ROOT_ENVIRONMENT: root},
        "module_defaults": {
            "group/netbpf.tcp_rto.tcp_rto": dict(pin_dir=pin_dir),
            "netbpf.tcp_rto.tcp_initial_rto": dict(mount_bpffs=False),  # an option of that module only
        },
        "tasks": [
            {
                "name": "Apply",
                "netbpf.tcp_rto.tcp_initial_rto": dict(name="grouped", cgroup=cgroup, rto_ms=300, persistent=True),
            },
            {"name": "Read", "netbpf.tcp_rto.tcp_initial_rto_info": {}},
            {"name": "Remove", "netbpf.tcp_rto.tcp_initial_rto": dict(name="grouped", state="absent")},
        ],
    }
    path = str(tmp_path / "grouped.yml")
    with open(path, "w") as handle:
        json.dump([play], handle)
    run = playbook.run_playbook(path, playbook.inventory)
    assert run.returncode == 0, run.output
    applied, read, removed = run.results
    assert applied["changed"] and applied["instance"]["pin_dir"] == os.path.join(pin_dir, "grouped")
    assert "record %s" % os.path.join(root, "etc", "tcp_rto", "grouped.json") in applied["actions"], applied["actions"]
    assert [instance["name"] for instance in read["instances"]] == ["grouped"]
    assert read["instances"][0]["persistent"]
    assert removed["changed"] and not os.path.exists(pin_dir)
    assert cgroup_program_ids(cgroup) == []
