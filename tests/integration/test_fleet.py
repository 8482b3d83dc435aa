"""A fleet on this machine: five inventory hosts (local connection), each with its own child cgroup
and instance, through the collection's rollout, rollback and report playbooks. Every claim is
checked against the kernel (bpftool, a TCP_INFO probe), not only against Ansible's output."""

import csv
import json
import os
import shlex
import shutil

import pytest
from ansible.release import __version__ as ansible_version

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host_paths
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.paths import MANAGED_PYTHON, REPO
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import observed_rto_us

pytestmark = pytest.mark.kernel

HOSTS = ["h1", "h2", "h3", "h4", "h5"]
BATCHES = '[1, 2, "100%"]'  # h1 | h2 h3 | h4 h5
ANSIBLE_CORE = tuple(int(part) for part in ansible_version.split(".")[:2])  # the release the playbooks run on


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
        # the collection's playbooks set no environment: each host's Python sets the test aid that
        # puts its files of persistence and history under its root
        self.pythons = {host: str(tmp_path / ("python-" + host)) for host in HOSTS}
        for host, path in self.pythons.items():
            with open(path, "w") as handle:
                handle.write(
                    '#!/bin/sh\n%s=%s exec %s "$@"\n'
                    % (host_paths.TEST_ROOT_ENVIRONMENT, shlex.quote(self.roots[host]), shlex.quote(MANAGED_PYTHON))
                )
            os.chmod(path, 0o755)
        self.inventory = str(tmp_path / "fleet.ini")
        self.write_inventory({})

    def write_inventory(self, host_vars, named=True):
        """An INI inventory: each host names its instance after itself unless named is False (then
        the instance name comes from the command line, or the role's default)."""
        lines = ["[fleet]"]
        for host in HOSTS:
            extra = dict(tcp_rto_name=host) if named else {}
            extra.update(host_vars.get(host, {}))
            lines.append(
                "%s ansible_connection=local ansible_python_interpreter=%s tcp_rto_cgroup=%s "
                "tcp_rto_pin_dir=%s %s"
                % (
                    host,
                    self.pythons[host],
                    self.cgroups[host],
                    self.pin_dirs[host],
                    " ".join("%s=%s" % (key, value) for key, value in extra.items()),
                )
            )
        lines += ["[fleet:vars]", "tcp_rto_mount_bpffs=false"]
        with open(self.inventory, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def play(self, name, extra_args=(), **extra_vars):
        extra_vars.setdefault("tcp_rto_hosts", "fleet")
        return self.playbook.run_playbook(
            "netbpf.tcp_rto." + name, self.inventory, ["-e", json.dumps(extra_vars), *list(extra_args)]
        )

    def rollout(self, rto_ms, **extra_vars):
        return self.play(
            "rollout",
            tcp_rto_batches=json.loads(BATCHES),
            tcp_rto_rules=[{"dest": "127.0.0.0/8", "rto_ms": rto_ms}],
            **extra_vars,
        )

    def rto_ms(self, hosts=None):
        """The initial RTO a socket in each host's cgroup gets, per the kernel (every host by default)."""
        return {host: observed_rto_us(self.cgroups[host]) // 1000 for host in hosts or HOSTS}

    def etc_files(self, host):
        """The files of the host's /etc/tcp_rto (records and history)."""
        path = os.path.join(self.roots[host], "etc", "tcp_rto")
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

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
    assert second.custom_stats["_run"]["tcp_rto_rollout"] == batches  # set_stats, for workflows
    assert len(batches) == 2
    assert batches[0] == dict(
        hosts=["h1"], changed=["h1"], unchanged=[], failed=[], failures={}, rolled_back=[], not_rolled_back={}
    )
    assert batches[1]["failed"] == ["h3"] and batches[1]["rolled_back"] == ["h2", "h3"], second.output
    assert batches[1]["not_rolled_back"] == {}, second.output
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
        # the telemetry columns: the loopback handshakes of the verifications, no harm warnings
        assert int(row["handshakes"]) >= 0 and int(row["syn_retransmits"]) >= 0 and row["warnings"] == "0"
    # what a rollback of each would do: h1's record was used; h2 ran v2 in one module run, whose record
    # (v1) went when its batch was put back, and that record had taken the place of the first
    # rollout's (one step kept); h3's health gate failed before its record was written; h4 and h5
    # have the record of their first rollout
    assert {row["host"]: row["rollback"] for row in rows} == dict(
        h1="", h2="", h3="1: no instance", h4="1: no instance", h5="1: no instance"
    )
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


def test_a_host_runs_the_role_in_two_tasks_when_no_phase_needs_the_controller(fleet):
    """Without a health gate each host takes one module run per instance; from ansible-core 2.18 the
    role then leaves the host with meta end_role, decided on the controller, so the role's tasks on a
    host are its argument check and that run (before 2.18 an include chooses the path: one more)."""
    for _run in range(2):  # a change, then a run that changes nothing
        run = fleet.rollout(300)
        assert run.returncode == 0, run.output
        role_tasks = [
            result["task"].split(" : ", 1)[1].split(" against ")[0]
            for result in run.results
            if result["host"] == "h2" and result["task"].startswith("netbpf.tcp_rto.tcp_rto : ")
        ]
        chooser = (
            [] if ANSIBLE_CORE >= (2, 18) else ["Run the runbook, in one module run per instance or phase by phase"]
        )
        assert role_tasks == ["Validating arguments", *chooser, "Set the initial RTO of each instance"], run.output


# the actions of the role and playbooks that run on the host; the others run on the controller
REMOTE_ACTIONS = {"netbpf.tcp_rto.tcp_initial_rto", "netbpf.tcp_rto.tcp_initial_rto_info", "ansible.builtin.command"}


def remote_runs(run, host):
    """The tasks of run that ran on host, once per loop item."""
    return [
        result["task"].split(" : ", 1)[-1]
        for result in run.results
        if result["host"] == host and result["action"] in REMOTE_ACTIONS and result["status"] != "skipped"
        for _item in result.get("results") or [result]
    ]


def test_a_rollback_reads_puts_back_and_moves_the_records_in_three_module_runs(fleet):
    """Per host and instance: the info module reads every history record; the instance goes back to
    its configuration in one module run (verified and persistent, as the rollout's run) or, when its
    last change created it, its records and then it are removed; the used record goes."""
    for rto_ms in (300, 200):
        run = fleet.rollout(rto_ms, tcp_rto_hosts="h1:h2")
        assert run.returncode == 0, run.output
    run = fleet.rollout(250, tcp_rto_hosts="h3")
    assert run.returncode == 0, run.output
    back = fleet.play("rollback", tcp_rto_hosts="h2:h3")
    assert back.returncode == 0, back.output
    assert fleet.rto_ms(["h1", "h2", "h3"]) == dict(h1=200, h2=300, h3=1000)
    assert remote_runs(back, "h2") == [
        "Read the history records",
        "Set the initial RTO of each instance",
        "Drop the newest history record (the older ones move up)",
    ], back.output
    assert fleet.etc_files("h2") == ["h2.json"]
    assert remote_runs(back, "h3") == [
        "Read the history records",
        "Remove their history",
        "Remove the instances, their persistence and their files",
    ], back.output
    assert fleet.etc_files("h3") == [] and fleet.program_ids()["h3"] == []


def test_rollback_without_a_name_rolls_back_every_instance_with_history(fleet):
    """As the README shows it: the rollout names its instance on the command line, the rollback
    names none."""
    fleet.write_inventory({}, named=False)
    pair = ["h1", "h2"]
    for rto_ms in (300, 200):
        run = fleet.rollout(rto_ms, tcp_rto_name="dc", tcp_rto_hosts="h1:h2")
        assert run.returncode == 0, run.output
    # a second instance with history, on h1 only, in a child cgroup (one instance per cgroup)
    wan_cgroup = os.path.join(fleet.cgroups["h1"], "wan")
    os.mkdir(wan_cgroup)
    wan = fleet.play(
        "rollout",
        tcp_rto_hosts="h1",
        tcp_rto_name="wan",
        tcp_rto_cgroup=wan_cgroup,
        tcp_rto_rules=[{"dest": "10.0.0.0/8", "rto_ms": 50}],
        tcp_rto_verify=False,
    )
    assert wan.returncode == 0, wan.output
    assert fleet.rto_ms(pair) == dict(h1=200, h2=200)
    assert fleet.etc_files("h1") == ["dc.json", "dc.previous.json", "wan.json", "wan.previous.json"]

    back = fleet.play("rollback", tcp_rto_hosts="h1:h2")
    assert back.returncode == 0, back.output
    assert fleet.rto_ms(pair) == dict(h1=300, h2=300)  # dc one change back: its first rollout
    assert not os.path.exists(os.path.join(fleet.pin_dirs["h1"], "wan"))  # wan's change created it
    assert fleet.etc_files("h1") == fleet.etc_files("h2") == ["dc.json"]
    assert [len(ids) for ids in fleet.program_ids().values()] == [1, 1, 0, 0, 0]

    # nothing left to roll back: said so, nothing changed
    again = fleet.play("rollback", tcp_rto_hosts="h1:h2")
    assert again.returncode == 0, again.output
    assert not [result for result in again.results if result.get("changed")], again.output
    assert "nothing to roll back" in again.output
    assert fleet.rto_ms(pair) == dict(h1=300, h2=300)

    # removing needs the instance's name: without one the rollback fails and lists what each host holds
    refused = fleet.play("rollback", tcp_rto_hosts="h1:h2", tcp_rto_state="absent")
    assert refused.returncode != 0
    messages = [result["msg"] for result in refused.results if result["status"] == "failed"]
    assert len(messages) == 2 and all("dc" in message and "tcp_rto_name" in message for message in messages), messages
    assert fleet.rto_ms(pair) == dict(h1=300, h2=300)
    gone = fleet.play("rollback", tcp_rto_hosts="h1:h2", tcp_rto_state="absent", tcp_rto_name="dc")
    assert gone.returncode == 0, gone.output
    assert fleet.program_ids() == {host: [] for host in HOSTS}


def test_a_batch_put_back_drops_the_history_its_run_wrote(fleet):
    """With two steps kept, the hosts of a stopped batch keep the history they had before the run:
    h2 ran v2 in one module run (which writes its record), h3 phase by phase (its health gate failed
    before its persist phase wrote one); a rollback then undoes their first rollout."""
    hosts = dict(tcp_rto_hosts="h1:h2:h3", tcp_rto_rollback_steps=2)
    first = fleet.rollout(300, **hosts)
    assert first.returncode == 0, first.output
    fleet.write_inventory({"h3": {"tcp_rto_health_command": "'exit 3'"}})
    second = fleet.rollout(200, **hosts)
    assert second.returncode != 0
    assert summary(second)[1]["rolled_back"] == ["h2", "h3"], second.output
    assert fleet.rto_ms(["h1", "h2", "h3"]) == dict(h1=200, h2=300, h3=300)
    assert fleet.etc_files("h1") == ["h1.json", "h1.previous.2.json", "h1.previous.json"]
    for host in ("h2", "h3"):
        assert fleet.etc_files(host) == [host + ".json", host + ".previous.json"], second.output
        with open(os.path.join(fleet.roots[host], "etc", "tcp_rto", host + ".previous.json")) as handle:
            assert json.load(handle) == {"state": "absent"}
    back = fleet.play("rollback", **hosts)
    assert back.returncode == 0, back.output
    assert fleet.rto_ms(["h1", "h2", "h3"]) == dict(h1=300, h2=1000, h3=1000)
    assert fleet.program_ids()["h2"] == fleet.program_ids()["h3"] == []


def test_failed_canary_is_rolled_back_and_summarized(fleet):
    """v2's health gate fails on the only host of the first batch: the batch goes back to v1 (the
    gate does not judge the configuration put back) and the run still ends with its summary."""
    first = fleet.rollout(300)
    assert first.returncode == 0, first.output
    before = fleet.program_ids()
    fleet.write_inventory({"h1": {"tcp_rto_health_command": "'exit 3'"}})
    run = fleet.rollout(200)
    assert run.returncode != 0
    assert "rollout stopped: a host of batch 1 failed" in run.output, run.output
    [batch] = summary(run)
    assert batch["failed"] == ["h1"] and list(batch["failures"]) == ["h1"], batch
    assert batch["rolled_back"] == ["h1"] and batch["changed"] == [] and batch["unchanged"] == [], batch
    assert fleet.program_ids() == before
    assert fleet.rto_ms() == dict.fromkeys(HOSTS, 300)


def test_host_that_cannot_be_put_back_is_named_not_claimed(fleet):
    """The restore of a failed batch fails too (its boot files cannot be written any more): the run
    still ends with its summary, which names that host instead of counting it as rolled back."""
    first = fleet.rollout(300, tcp_rto_hosts="h1")
    assert first.returncode == 0, first.output
    lib_dir = os.path.join(fleet.roots["h1"], "var", "lib", "tcp_rto")
    # the gate turns the directory of the boot files into a file, then fails
    fleet.write_inventory({"h1": {"tcp_rto_health_command": "'rm -rf %s && touch %s; exit 3'" % (lib_dir, lib_dir)}})
    run = fleet.rollout(200, tcp_rto_hosts="h1")
    assert run.returncode != 0
    [batch] = summary(run)
    assert batch["failed"] == ["h1"] and batch["rolled_back"] == [], batch
    assert list(batch["not_rolled_back"]) == ["h1"] and "not a directory" in batch["not_rolled_back"]["h1"], batch
    assert "that batch was rolled back except on h1, which could not be put back" in run.output, run.output


def test_failures_within_max_fail_percentage_roll_back_only_the_failed_hosts(fleet):
    """tcp_rto_max_fail_percentage=50: one failed host of two is tolerated (it goes back alone, the
    rollout goes on); the run still fails at the end, naming it. The summary is published with
    set_stats for Automation Platform workflows."""
    fleet.write_inventory({"h3": {"tcp_rto_health_command": "'exit 3'"}})
    run = fleet.rollout(300, tcp_rto_max_fail_percentage=50)
    assert run.returncode != 0
    assert "rollout finished with failed hosts within tcp_rto_max_fail_percentage (50%)" in run.output, run.output
    batches = summary(run)
    assert [batch["hosts"] for batch in batches] == [["h1"], ["h2", "h3"], ["h4", "h5"]]
    assert batches[1] == dict(
        hosts=["h2", "h3"],
        changed=["h2"],
        unchanged=[],
        failed=["h3"],
        failures={"h3": "non-zero return code"},
        rolled_back=["h3"],
        not_rolled_back={},
    )
    assert batches[2]["changed"] == ["h4", "h5"] and batches[2]["failed"] == []
    assert fleet.rto_ms() == dict(h1=300, h2=300, h3=1000, h4=300, h5=300)
    assert run.custom_stats["_run"]["tcp_rto_rollout"] == batches


def test_report_dir_relative_to_where_ansible_playbook_started(fleet, playbook):
    relative = "tcp_rto_report_relative_%d" % os.getpid()
    inside_collection = os.path.join(REPO, "playbooks", relative)
    try:
        run = fleet.play("report", tcp_rto_report_dir=relative)
        assert run.returncode == 0, run.output
        # the tests start ansible-playbook in the playbook fixture's work directory
        for suffix in ("csv", "md"):
            assert os.path.isfile(os.path.join(playbook.workdir, relative, "tcp_rto_report." + suffix))
        assert not os.path.exists(inside_collection)
    finally:
        shutil.rmtree(inside_collection, ignore_errors=True)


def test_role_booleans_from_an_ini_inventory(fleet):
    """INI inventory values are strings: "false" must mean false in every condition of the role and
    the playbooks (ansible-core 2.19 refuses a string as a condition)."""
    fleet.write_inventory(
        {
            "h1": dict(tcp_rto_persistent="false", tcp_rto_history="true", tcp_rto_verify="true"),
            "h2": dict(tcp_rto_persistent="true", tcp_rto_history="false", tcp_rto_verify="false"),
        }
    )
    pair = ["h1", "h2"]
    run = fleet.rollout(300, tcp_rto_hosts="h1:h2")
    assert run.returncode == 0, run.output
    assert fleet.rto_ms(pair) == dict(h1=300, h2=300)
    assert fleet.etc_files("h1") == ["h1.previous.json"]  # history, no boot record
    assert fleet.etc_files("h2") == ["h2.json"]  # boot record, no history

    back = fleet.play("rollback", tcp_rto_hosts="h1:h2")
    assert back.returncode == 0, back.output
    assert fleet.rto_ms(pair) == dict(h1=1000, h2=300)  # h1 back to no instance, h2 had no history
    gone = fleet.play("rollback", tcp_rto_hosts="h1:h2", tcp_rto_state="absent")
    assert gone.returncode == 0, gone.output
    assert fleet.program_ids() == {host: [] for host in HOSTS}


def test_failed_module_run_puts_the_batch_back_to_what_the_module_reported(fleet, tmp_path):
    """No health gate: each host takes one module run (preflight to history record). h2's run fails
    (its cgroup is not there); h3, in the same batch, changed: it goes back to the configuration the
    module returned as before, and h2 keeps its own. Later batches are not started."""
    first = fleet.rollout(300)
    assert first.returncode == 0, first.output
    before = fleet.program_ids()
    fleet.write_inventory({"h2": {"tcp_rto_cgroup": str(tmp_path / "no_such_cgroup")}})
    run = fleet.rollout(200)
    assert run.returncode != 0
    assert "rollout stopped: a host of batch 2 failed" in run.output, run.output
    batches = summary(run)
    assert batches[1]["failed"] == ["h2"] and batches[1]["rolled_back"] == ["h2", "h3"], batches
    fleet.write_inventory({})
    assert fleet.rto_ms() == dict(h1=200, h2=300, h3=300, h4=300, h5=300)
    assert fleet.program_ids()["h4"] == before["h4"]
    # h3's run wrote its history record (v1), which went with the put-back; with one step kept it had
    # taken the place of the first rollout's (test_a_batch_put_back_drops_the_history_its_run_wrote keeps two)
    assert fleet.etc_files("h3") == ["h3.json"]
