"""Harm warnings from an instance view: the bound, the samples, the default, and the thresholds."""

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import harm
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import ConfigError


def telemetry(p99_us, samples):
    return {"rtt_us": None if p99_us is None else {"p50": 1, "p90": 1, "p99": p99_us}, "rtt_samples": samples}


def instance(rules, default_rto_ms=None, default=None):
    return {
        "name": "dc",
        "rules": [dict(dest=dest, rto_ms=rto_ms, **telemetry(p99, samples)) for dest, rto_ms, p99, samples in rules],
        "default_rto_ms": default_rto_ms,
        "default_telemetry": default or telemetry(None, 0),
    }


def test_a_rule_below_the_factor_times_its_p99_warns_with_the_value_to_use():
    [warning] = harm.harm_warnings(instance([("10.0.0.0/8", 50, 20000, 100)]))
    assert {key: warning[key] for key in ("instance", "dest", "rto_ms", "p99_us", "samples")} == {
        "instance": "dc",
        "dest": "10.0.0.0/8",
        "rto_ms": 50,
        "p99_us": 20000,
        "samples": 100,
    }
    assert warning["message"].startswith("dc: rule 10.0.0.0/8: initial RTO 50 ms is below 3.0 x the p99")
    assert "Raise rto_ms to 60 or more" in warning["message"]


@pytest.mark.parametrize(
    "rto_ms, p99_us, samples, safety_factor, min_samples, warns",
    [
        (60, 20000, 100, 3, 100, False),  # exactly at the bound
        (59.996, 20000, 100, 3, 100, True),  # rounded jiffies just below it
        (50, 20000, 99, 3, 100, False),  # too few samples to trust the p99
        (50, 20000, 99, 3, 99, True),
        (50, 20000, 100, 2, 100, False),  # a smaller factor
        (50, None, 0, 3, 1, False),  # no samples at all
    ],
)
def test_bound_and_samples(rto_ms, p99_us, samples, safety_factor, min_samples, warns):
    found = harm.harm_warnings(instance([("10.0.0.0/8", rto_ms, p99_us, samples)]), safety_factor, min_samples)
    assert bool(found) is warns


def test_the_default_warns_only_when_the_instance_sets_it():
    slow = telemetry(200000, 500)
    assert harm.harm_warnings(instance([], None, slow)) == []  # the kernel's 1 s is not the instance's doing
    [warning] = harm.harm_warnings(instance([], 300, slow))
    assert warning["dest"] == harm.DEFAULT_RULE == "default"
    assert "dc: the default (rto_ms): initial RTO 300 ms" in warning["message"]


def test_rules_without_a_value_in_ms_are_skipped():
    """describe_current without a recorded HZ shows jiffies only."""
    view = instance([])
    view["rules"] = [dict(dest="10.0.0.0/8", rto_jiffies=2, **telemetry(90000, 1000))]
    assert harm.harm_warnings(view) == []


def test_auto_rules_and_default_are_skipped():
    """rto_ms auto gives each remote host its own value from its round trips (learned.py)."""
    assert harm.harm_warnings(instance([("10.0.0.0/8", "auto", 90000, 1000)], "auto", telemetry(90000, 1000))) == []


@pytest.mark.parametrize("safety_factor, min_samples", [(0, 100), (-1, 100), (3, 0), (3, None)])
def test_thresholds_that_mean_nothing_are_refused(safety_factor, min_samples):
    with pytest.raises(ConfigError):
        harm.check_thresholds(safety_factor, min_samples)
