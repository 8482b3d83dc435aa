"""The role netbpf.tcp_rto.tcp_rto: one playbook per scenario in tests/roles/, each cleaning up in
always:, run against a sandbox cgroup, a private bpffs and a temporary root for its files."""

import glob
import json
import os

import pytest
import yaml

from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.paths import MANAGED_PYTHON, REPO

ROLE = os.path.join(REPO, "roles", "tcp_rto")
SCENARIOS = sorted(glob.glob(os.path.join(REPO, "tests", "roles", "tests_*.yml")))


@pytest.mark.kernel
@pytest.mark.parametrize("scenario", SCENARIOS, ids=os.path.basename)
def test_scenario(playbook, cgroup, bpffs, tmp_path, scenario):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("sandbox ansible_connection=local ansible_python_interpreter=%s\n" % MANAGED_PYTHON)
    root = tmp_path / "root"
    extra = dict(
        tcp_rto_cgroup=cgroup,
        tcp_rto_pin_dir=os.path.join(bpffs, "tcp_rto"),
        tcp_rto_mount_bpffs=False,
        test_persist_root=str(root),  # tests/roles/*.yml: the environment of the play
    )
    run = playbook.run_playbook(scenario, str(inventory), ["-e", json.dumps(extra)])
    assert run.returncode == 0, run.output
    assert cgroup_program_ids(cgroup) == []  # the always: cleanup left nothing
    assert not os.path.exists(extra["tcp_rto_pin_dir"])
    assert not root.exists() or [files for _dir, _sub, files in os.walk(str(root)) if files] == []


def test_argument_specs_match_defaults():
    with open(os.path.join(ROLE, "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    with open(os.path.join(ROLE, "meta", "argument_specs.yml")) as handle:
        options = yaml.safe_load(handle)["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, spec in options.items():
        assert spec.get("default") == defaults[name], name
        assert all(not name.startswith("__") for name in defaults)
