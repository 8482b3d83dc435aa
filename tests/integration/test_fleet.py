"""A fleet on this machine: five inventory hosts (local connection), each with its own child cgroup
and instance, through the collection's rollout, rollback and report playbooks. Every claim is
checked against the kernel (bpftool, a TCP_INFO probe), not only against Ansible's output."""

import csv
import json
import os

import pytest
from conftest import MANAGED_PYTHON, cgroup_program_ids, observed_rto_us

pytestmark = pytest.mark.kernel

HOSTS = ["h1", "h2", "h3", "h4", "h5"]
BATCHES = '[1, 2, "100%"]'  # h1 | h2 h3 | h4 h5


class Fleet:
    def __init__(self, playbook, cgroup, bpffs, tmp_path):
        self.playbook = playbook
        self.root = str(tmp_path / "root")
        self.cgroups = {host: os.path.join(cgroup, host) for host in HOSTS}
        for path in self.cgroups.values():
            os.mkdir(path)
        # one machine stands in for five: each host pins under its own directory and keeps its files
        # under its own root, as it would on its own bpffs and filesystem
        self.pin_dirs = {host: os.path.join(bpffs, host) for host in HOSTS}
        self.roots = {host: os.path.join(self.root, host) for host in HOSTS}
        self.inventory = str(tmp_path / "fleet.ini")
        self.write_inventory({})

    def write_inventory(self, host_vars):
        lines = ["[fleet]"]
        for host in HOSTS:
            extra = " ".join("%s=%s" % (key, value) for key, value in host_vars.get(host, {}).items())
            lines.append(
                "%s ansible_connection=local ansible_python_interpreter=%s tcp_rto_name=%s tcp_rto_cgroup=%s "
                "tcp_rto_pin_dir=%s tcp_rto_persist_root=%s %s"
                % (host, MANAGED_PYTHON, host, self.cgroups[host], self.pin_dirs[host], self.roots[host], extra)
            )
        lines += ["[fleet:vars]", "tcp_rto_mount_bpffs=false"]
        with open(self.inventory, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def play(self, name, **extra_vars):
        extra_vars.setdefault("tcp_rto_hosts", "fleet")
        return self.playbook.run_playbook("netbpf.tcp_rto." + name, self.inventory, ["-e", json.dumps(extra_vars)])

    def rollout(self, rto_ms, **extra_vars):
        return self.play(
            "rollout",
            tcp_rto_batches=json.loads(BATCHES),
            tcp_rto_rules=[{"dest": "127.0.0.0/8", "rto_ms": rto_ms}],
            **extra_vars,
        )

    def rto_ms(self):
        """The initial RTO a socket in each host's cgroup gets, per the kernel."""
        return {host: observed_rto_us(path) // 1000 for host, path in self.cgroups.items()}

    def program_ids(self):
        return {host: cgroup_program_ids(path) for host, path in self.cgroups.items()}


@pytest.fixture
def fleet(playbook, cgroup, bpffs, tmp_path):
    return Fleet(playbook, cgroup, bpffs, tmp_path)


def summary(run):
    [entry] = [result for result in run.results if result["task"].startswith("Per batch")]
    return entry["msg"]


def test_rollout_failed_batch_rollback_report(fleet, tmp_path):
    first = fleet.rollout(300)
    assert first.returncode == 0, first.output
    assert fleet.rto_ms() == dict.fromkeys(HOSTS, 300)
    assert [batch["hosts"] for batch in summary(first)] == [["h1"], ["h2", "h3"], ["h4", "h5"]]
    assert [batch["changed"] for batch in summary(first)] == [["h1"], ["h2", "h3"], ["h4", "h5"]]
    unchanged = fleet.rollout(300)
    assert unchanged.returncode == 0, unchanged.output
    assert [batch["unchanged"] for batch in summary(unchanged)] == [["h1"], ["h2", "h3"], ["h4", "h5"]]
    before = fleet.program_ids()
    assert all(len(ids) == 1 for ids in before.values())

    # v2 with a health gate that fails on h3, in the second batch
    fleet.write_inventory({"h3": {"tcp_rto_health_command": "'exit 3'"}})
    second = fleet.rollout(200)
    assert second.returncode != 0
    assert "rollout stopped: a host of batch 2 failed" in second.output
    batches = summary(second)
    assert len(batches) == 2
    assert batches[0] == dict(hosts=["h1"], changed=["h1"], unchanged=[], failed=[], failures={}, rolled_back=[])
    assert batches[1]["failed"] == ["h3"] and batches[1]["rolled_back"] == ["h2", "h3"], second.output
    assert fleet.rto_ms() == dict(h1=200, h2=300, h3=300, h4=300, h5=300)
    after = fleet.program_ids()
    assert after["h4"] == before["h4"] and after["h5"] == before["h5"]  # later batch untouched
    for host in HOSTS:
        assert len(after[host]) == 1, (host, after[host])

    # h1 alone kept v2: roll it back to its configuration before the last change (v1); a second
    # rollback finds no history and changes nothing. The other hosts are not targeted.
    fleet.write_inventory({})
    back = fleet.play("rollback", tcp_rto_hosts="h1")
    assert back.returncode == 0, back.output
    assert fleet.rto_ms() == dict.fromkeys(HOSTS, 300)
    assert fleet.program_ids()["h4"] == before["h4"]
    again = fleet.play("rollback", tcp_rto_hosts="h1")
    assert again.returncode == 0 and not [result for result in again.results if result.get("changed")], again.output
    assert fleet.rto_ms() == dict.fromkeys(HOSTS, 300)

    report_dir = str(tmp_path / "report")
    report = fleet.play("report", tcp_rto_report_dir=report_dir)
    assert report.returncode == 0, report.output
    with open(os.path.join(report_dir, "tcp_rto_report.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["host"] for row in rows] == HOSTS
    for row in rows:
        assert row["supported"] == "yes" and row["instance"] == row["host"]
        assert row["rules"] == "127.0.0.0/8=300ms"
        assert [int(row["program_id"])] == fleet.program_ids()[row["host"]]
        assert int(row["hits"]) >= 1
    with open(os.path.join(report_dir, "tcp_rto_report.md")) as handle:
        markdown = handle.read().splitlines()
    assert markdown[0].startswith("| host | kernel | hz |") and len(markdown) == 2 + len(HOSTS)

    # remove everything: zero kernel objects, zero files
    gone = fleet.play("rollback", tcp_rto_state="absent")
    assert gone.returncode == 0, gone.output
    assert fleet.program_ids() == {host: [] for host in HOSTS}
    assert fleet.rto_ms() == dict.fromkeys(HOSTS, 1000)
    assert not [path for path in fleet.pin_dirs.values() if os.path.exists(path)]
    assert [files for _dir, _sub, files in os.walk(fleet.root) if files] == []
