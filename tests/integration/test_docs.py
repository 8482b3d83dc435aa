"""The module's documentation parses and renders as users read it (ansible-doc)."""

import json
import os
import subprocess

from ansible_collections.netbpf.tcp_rto.plugins.modules import tcp_initial_rto
from ansible_collections.netbpf.tcp_rto.tests.support.paths import ANSIBLE_BIN, COLLECTIONS_ROOT


def ansible_doc_json(plugin):
    out = subprocess.run(
        [os.path.join(ANSIBLE_BIN, "ansible-doc"), "-j", plugin],
        check=True,
        stdout=subprocess.PIPE,
        universal_newlines=True,
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT),
    ).stdout
    return json.loads(out)[plugin]


def test_module_doc_renders_and_matches_argument_spec():
    doc = ansible_doc_json("netbpf.tcp_rto.tcp_initial_rto")
    options = doc["doc"]["options"]
    assert set(options) == set(tcp_initial_rto.ARGUMENT_SPEC)
    for name, spec in tcp_initial_rto.ARGUMENT_SPEC.items():
        assert options[name]["type"] == spec["type"], name
        assert options[name].get("default") == spec.get("default"), name
        assert options[name].get("choices") == spec.get("choices"), name
    assert set(doc["doc"]["attributes"]) == {"action", "check_mode", "diff_mode", "platform"}
    assert {
        "instance",
        "kernel",
        "verification",
        "syn_give_up_s",
        "foreign_programs",
        "actions",
        "conflicts",
        "drift",
        "harm_warnings",
    } <= set(doc["return"])
    assert "netbpf.tcp_rto.tcp_initial_rto:" in doc["examples"]


def test_info_module_doc_renders():
    doc = ansible_doc_json("netbpf.tcp_rto.tcp_initial_rto_info")
    assert set(doc["doc"]["options"]) == {"pin_dir", "cgroups", "safety_factor", "min_samples", "metrics_textfile"}
    assert {"supported", "unsupported_reasons", "kernel", "instances", "foreign_programs"} <= set(doc["return"])
