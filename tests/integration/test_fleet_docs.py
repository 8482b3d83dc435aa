"""The examples of docs/fleet.md as they are written there, run: the Automation Platform job
template (extra variables and survey answers), the workflow's failure path fed with the rollout's
set_stats, the execution environment definition (ansible-builder create), and the group-merged
rules and instances examples (parsed, their keys checked against the role's)."""

import json
import os
import subprocess

import pytest
import yaml
from test_fleet import HOSTS, Fleet

from ansible_collections.netbpf.tcp_rto.tests.support.paths import ANSIBLE_BIN, REPO

FLEET_DOC = os.path.join(REPO, "docs", "fleet.md")


def doc_blocks():
    """{first line: text} of every fenced block of docs/fleet.md."""
    with open(FLEET_DOC) as handle:
        lines = handle.read().splitlines()
    blocks, inside = {}, None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("```"):
            if inside is None:
                inside = []
            else:
                if inside:
                    blocks.setdefault(inside[0].strip(), "\n".join(inside))
                inside = None
        elif inside is not None:
            inside.append(line)
    return blocks


def doc_block(first_line):
    blocks = doc_blocks()
    assert first_line in blocks, "docs/fleet.md has no block starting with %r" % first_line
    return blocks[first_line]


def survey():
    [spec] = [text for first, text in doc_blocks().items() if first == "{"]
    return json.loads(spec)


@pytest.fixture
def fleet(playbook, cgroup, bpffs, tmp_path):
    return Fleet(playbook, cgroup, bpffs, tmp_path)


def role_variables():
    with open(os.path.join(REPO, "roles", "tcp_rto", "meta", "argument_specs.yml")) as handle:
        return set(yaml.safe_load(handle)["argument_specs"]["main"]["options"])


PLAYBOOK_VARIABLES = {"tcp_rto_hosts", "tcp_rto_batches", "tcp_rto_max_fail_percentage", "tcp_rto_report_dir"}


def test_survey_asks_for_role_and_playbook_variables():
    spec = survey()["spec"]
    own = {"rto_network", "rto_ms_answer"}  # answers the job template's extra variables use
    job_vars = yaml.safe_load(doc_block('# job template "tcp_rto rollout": extra variables'))
    assert {question["variable"] for question in spec} - own <= role_variables() | PLAYBOOK_VARIABLES
    assert set(job_vars) <= role_variables() | PLAYBOOK_VARIABLES
    for question in spec:
        assert question["type"] in ("text", "textarea", "integer", "multiplechoice"), question


@pytest.mark.kernel
def test_job_template_and_workflow_failure_path(fleet, tmp_path):
    """The job template's extra variables with the survey's answers roll out; a batch whose health
    gate fails goes back, and the workflow's failure node, given the rollout's set_stats as AAP
    gives them, puts the hosts that kept the new value back too."""
    fleet.write_inventory({}, named=False)
    job_vars = yaml.safe_load(doc_block('# job template "tcp_rto rollout": extra variables'))
    answers = {question["variable"]: question["default"] for question in survey()["spec"]}
    answers.update(tcp_rto_hosts="fleet", rto_network="127.0.0.0/8")
    job_file = tmp_path / "job_vars.yml"
    job_file.write_text(yaml.safe_dump(job_vars))

    def rollout(rto_ms, health_command):
        # AAP: the template's extra variables, then the survey answers; here the health command
        # stands for the doc's curl against a service this machine does not run
        extra = dict(answers, rto_ms_answer=rto_ms, tcp_rto_health_command=health_command)
        return fleet.playbook.run_playbook(
            "netbpf.tcp_rto.rollout", fleet.inventory, ["-e", "@" + str(job_file), "-e", json.dumps(extra)]
        )

    first = rollout(300, "true")
    assert first.returncode == 0, first.output
    assert fleet.rto_ms() == dict.fromkeys(HOSTS, 300)

    # batches [1, "10%", "100%"] of five hosts: h1 | h2 | h3 h4 h5; h3's gate fails
    second = rollout(200, "{{ 'exit 3' if inventory_hostname == 'h3' else 'true' }}")
    assert second.returncode != 0
    stats = second.custom_stats["_run"]
    assert [batch["changed"] for batch in stats["tcp_rto_rollout"]] == [["h1"], ["h2"], []], stats
    assert fleet.rto_ms() == dict(h1=200, h2=200, h3=300, h4=300, h5=300)

    node_vars = tmp_path / "node_vars.yml"
    node_vars.write_text(doc_block('# workflow node "back on failure": extra variables of the rollback job template'))
    back = fleet.playbook.run_playbook(
        "netbpf.tcp_rto.rollback", fleet.inventory, ["-e", "@" + str(node_vars), "-e", json.dumps(stats)]
    )
    assert back.returncode == 0, back.output
    assert fleet.rto_ms() == dict.fromkeys(HOSTS, 300)
    touched = {result["task"] for result in back.results if result.get("changed")}
    assert touched, back.output

    # nothing kept the new value: the node acts on no host
    nothing = fleet.playbook.run_playbook(
        "netbpf.tcp_rto.rollback",
        fleet.inventory,
        ["-e", "@" + str(node_vars), "-e", json.dumps(dict(tcp_rto_rollout=[dict(changed=[])]))],
    )
    assert nothing.returncode == 0, nothing.output
    assert not [result for result in nothing.results if result.get("changed")], nothing.output


def test_execution_environment_definition_builds_a_context(tmp_path):
    (tmp_path / "execution-environment.yml").write_text(
        doc_block("# execution-environment.yml, for: ansible-builder build -t tcp-rto-ee")
    )
    subprocess.run(
        [os.path.join(ANSIBLE_BIN, "ansible-builder"), "create", "-c", str(tmp_path / "context")],
        cwd=str(tmp_path),
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    with open(str(tmp_path / "context" / "_build" / "requirements.yml")) as handle:
        assert yaml.safe_load(handle) == {"collections": [{"name": "netbpf.tcp_rto"}]}


def test_project_files_name_the_collection_and_its_playbook():
    assert yaml.safe_load(doc_block("# collections/requirements.yml")) == {"collections": [{"name": "netbpf.tcp_rto"}]}
    [play] = yaml.safe_load(doc_block("# tcp_rto_rollout.yml"))
    assert play["ansible.builtin.import_playbook"] == "netbpf.tcp_rto.rollout"


def test_instances_and_group_rules_examples_use_the_role_keys():
    instances = yaml.safe_load(doc_block("tcp_rto_instances:"))["tcp_rto_instances"]
    keys = {"name", "state", "cgroup", "unit", "rules", "rules_vars", "rto_ms", "direction", "verify", "persistent"}
    keys |= {"history", "src", "hz"}
    assert all(set(instance) <= keys for instance in instances)
    groups = yaml.safe_load(doc_block("# group_vars/dc.yml"))
    assert all(name.startswith("tcp_rto_rules__") for name in groups)
