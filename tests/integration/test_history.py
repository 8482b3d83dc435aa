"""The history record's configuration (history.configuration, what netbpf.tcp_rto.rollback puts
back) read from an instance on this kernel: applied again as module parameters, it changes nothing,
auto settings and syn_give_up_s deadlines included. Without a boot record it is read from what the
kernel holds (the role's persistent instances, whose record words are replayed instead, are
test_instances.py's rollback test)."""

import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import history, reconcile, record
from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run

pytestmark = pytest.mark.kernel

REPLAYED = ("rules", "rto_ms", "syn_give_up_s", "direction", *record.AUTO_KEYS)


def replayed(name, cgroup, bpffs):
    """The instance's history configuration applied again: -> (configuration, the run's result)."""
    config = history.configuration(os.path.join(bpffs, "tcp_rto"), name)
    params = reconcile_run.sandbox_params(name, cgroup, bpffs, verify=False, **{key: config[key] for key in REPLAYED})
    return config, reconcile.run(params)


@pytest.mark.parametrize(
    "options",
    [
        dict(
            rules=[
                {"dest": "10.0.0.0/8", "rto_ms": 200, "syn_give_up_s": 3},
                {"dest": "192.168.0.0/16", "rto_ms": 120},
            ],
            rto_ms=300,
            syn_give_up_s=5,
        ),
        dict(
            rules=[{"dest": "127.0.0.0/8", "rto_ms": "auto"}, {"dest": "10.0.0.0/8", "rto_ms": 90, "syn_give_up_s": 1}],
            rto_ms="auto",
            auto_min_ms=60,
            auto_max_ms=700,
            auto_factor=3,
            auto_table_size=64,
            direction="outgoing",
        ),
    ],
    ids=["give-up", "auto"],
)
def test_a_configuration_read_from_the_kernel_applies_again_unchanged(cgroup, bpffs, options):
    first = reconcile_run.applied("hist", cgroup, bpffs, **options)
    config, again = replayed("hist", cgroup, bpffs)
    assert not again["changed"], (config, again["actions"])
    assert again["instance"]["rules"] == first["instance"]["rules"]
    assert again["instance"]["auto"] == first["instance"]["auto"] and again["syn_give_up_s"] == first["syn_give_up_s"]
    # what the record holds: deadlines no shorter than asked, and the auto settings as given
    given_give_up = {rule["dest"]: rule.get("syn_give_up_s", options.get("syn_give_up_s")) for rule in options["rules"]}
    for rule in config["rules"]:
        if given_give_up[rule["dest"]] is None:
            assert rule["syn_give_up_s"] is None
        else:
            assert rule["syn_give_up_s"] >= given_give_up[rule["dest"]]
    if options["rto_ms"] == "auto":
        assert (config["auto_min_ms"], config["auto_max_ms"], config["auto_factor"], config["auto_table_size"]) == (
            60,
            700,
            3.0,
            64,
        )
