"""The role_module_args filter: the module options of one instance in a run of the role."""

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.filter.role_module_args import role_module_args

# an instance as role_targets settles it, with its values as an INI inventory gives them (strings)
TARGET = dict(
    name="web",
    state="present",
    cgroup="/sys/fs/cgroup/web",
    unit=None,
    rules=[dict(dest="10.0.0.0/8", rto_ms="200")],
    rto_ms="auto",
    auto_min_ms="50",
    direction="both",
    verify="true",
    persistent="true",
    history="true",
    history_steps=2,
    rules_vars="^tcp_rto_rules__.+",
)
# the role's own options but metrics_textfile, which each test gives
ROLE = dict(
    pin_dir="/sys/fs/bpf/tcp_rto", mount_bpffs="true", safety_factor="2.0", min_samples="20", metrics_interval_s="60"
)


def test_one_run_takes_the_instance_as_written_and_the_role_options():
    args = role_module_args(TARGET, verify=True, persistent=True, record_history=True, metrics_textfile=None, **ROLE)
    # the module converts and checks the values; keys that are the role's own (state, history, rules_vars) stay out
    assert {key: args[key] for key in ("name", "cgroup", "rules", "rto_ms", "auto_min_ms", "direction")} == {
        key: TARGET[key] for key in ("name", "cgroup", "rules", "rto_ms", "auto_min_ms", "direction")
    }
    assert not {"state", "history", "rules_vars"} & set(args)
    assert (args["verify"], args["persistent"], args["history_steps"]) == (True, True, 2)
    # a persistent run sets the metrics timer: an empty path removes it
    assert args["metrics_textfile"] == ""
    assert {key: args[key] for key in ROLE} == ROLE


def test_the_apply_phase_leaves_persistence_and_the_timer_as_they_are():
    args = role_module_args(
        TARGET, verify=True, persistent=None, record_history=False, metrics_textfile="/m.prom", **ROLE
    )
    assert args["persistent"] is None and args["metrics_textfile"] is None and args["history_steps"] == 0


@pytest.mark.parametrize(
    "switch, own, expected",
    [(True, "true", True), (True, "no", False), ("false", True, False), (False, "yes", False)],
)
def test_verify_and_persistent_need_both_the_run_and_the_instance(switch, own, expected):
    args = role_module_args(
        dict(TARGET, verify=own, persistent=own),
        verify=switch,
        persistent=switch,
        record_history=False,
        metrics_textfile="/m.prom",
        **ROLE,
    )
    assert (args["verify"], args["persistent"]) == (expected, expected)
    assert args["metrics_textfile"] == ("/m.prom" if expected else None)
