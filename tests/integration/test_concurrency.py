"""Runs at the same time: 8 module runs on one instance take turns through its lock and leave one
attachment holding the configuration of one of them; a run that may not wait is told to retry;
instances on other cgroups never wait for each other. Each run is its own process
(tests/support/reconcile_run.py), on this machine's kernel."""

import hashlib
import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import lock, rto_program, views
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current
from ansible_collections.netbpf.tcp_rto.tests.support import bpf_inventory, reconcile_run, sandbox
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz
from ansible_collections.netbpf.tcp_rto.tests.support.paths import SHIPPED_OBJECT
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import observed_rto_us

pytestmark = pytest.mark.kernel

HZ = kernel_hz()
RUNS = 8
# Half the runs ask for one configuration, half for another; one of the second half brings a new
# object version too.
REQUESTS = [dict(rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}], rto_ms=500)] * (RUNS // 2) + [
    dict(rules=[{"dest": "127.0.0.0/8", "rto_ms": 300}, {"dest": "10.0.0.0/8", "rto_ms": 40}])
] * (RUNS // 2)


def expected_config(request):
    with open(request.get("src", SHIPPED_OBJECT), "rb") as handle:
        sha256 = hashlib.sha256(handle.read()).hexdigest()
    rules = [
        {"dest": rule["dest"], "rto_ms": rule["rto_ms"], "rto_jiffies": -(-rule["rto_ms"] * HZ // 1000)}
        for rule in request["rules"]
    ]
    return dict(rules=rules, default_rto_ms=request.get("rto_ms"), object_sha256=sha256)


def jiffies_us(ms):
    return -(-ms * HZ // 1000) * (1000000 // HZ)


@pytest.mark.parametrize("legacy", [False, True], ids=["link", "legacy"])
def test_eight_runs_at_once_on_one_instance(cgroup, bpffs, second_object, legacy):
    pin_dir = os.path.join(bpffs, "tcp_rto")
    before = bpf_inventory.steady([cgroup], quiet=0.1, timeout=3)
    requests = [dict(request) for request in REQUESTS]
    requests[-1]["src"] = second_object
    runs = [
        reconcile_run.start(
            reconcile_run.module_params(
                name="busy", cgroup=cgroup, pin_dir=pin_dir, mount_bpffs=False, _legacy_attach=legacy, **request
            )
        )
        for request in requests
    ]
    outcomes = [reconcile_run.finish(run) for run in runs]
    assert [(returncode, err) for returncode, _result, err in outcomes] == [(0, "")] * RUNS, outcomes
    assert all(result["verification"]["ok"] for _rc, result, _err in outcomes)

    # The configuration the kernel holds is one of the requests, whole (rules, default, object).
    instance_dir = os.path.join(pin_dir, "busy")
    current = Current(instance_dir)
    try:
        program_id = current.prog_info.id
        described = views.describe_current(current)
    finally:
        current.close()
    held = {key: described[key] for key in ("rules", "default_rto_ms", "object_sha256")}
    assert held in [expected_config(request) for request in requests]
    assert cgroup_program_ids(cgroup) == [program_id]
    loopback_ms = next(rule["rto_ms"] for rule in held["rules"] if rule["dest"] == "127.0.0.0/8")
    assert observed_rto_us(cgroup) == jiffies_us(loopback_ms)
    assert sorted(os.listdir(instance_dir)) == bpf_inventory.instance_pins(link=not legacy)
    leftover = bpf_inventory.unaccounted(before, [cgroup], bpffs)
    assert leftover["progs"] == {program_id}
    # the object's maps and the meta record the loader adds
    assert len(leftover["maps"]) == len(rto_program.MAP_CONTRACT) + 1 and len(leftover["links"]) == (0 if legacy else 1)

    lock_file = lock.lock_path("busy", pin_dir)
    assert os.path.exists(lock_file)
    returncode, result, err = reconcile_run.run(
        reconcile_run.module_params(name="busy", state="absent", pin_dir=pin_dir, mount_bpffs=False)
    )
    assert returncode == 0, (result, err)
    assert not os.path.exists(lock_file)
    assert cgroup_program_ids(cgroup) == []


def test_a_run_that_may_not_wait_is_told_to_retry(cgroup, bpffs):
    pin_dir = os.path.join(bpffs, "tcp_rto")
    params = reconcile_run.module_params(
        name="held", cgroup=cgroup, pin_dir=pin_dir, mount_bpffs=False, lock_timeout=0, rto_ms=200
    )
    with lock.InstanceLock("held", pin_dir, timeout=0) as other_run:
        returncode, result, _err = reconcile_run.run(params)
        assert returncode == 1
        assert result["error"] == (
            "the instance held is locked by another run (pid %d, lock %s), still after 0 s (lock_timeout): "
            "retry when that run has finished" % (os.getpid(), other_run.path)
        )
        assert cgroup_program_ids(cgroup) == []
        assert not os.path.exists(pin_dir)
        other_run.remove_file()
    returncode, result, err = reconcile_run.run(params)
    assert returncode == 0, (result, err)
    assert reconcile_run.run(dict(params, state="absent"))[0] == 0


def test_other_instances_do_not_wait(cgroup, bpffs):
    """While one instance's lock is held, runs on two other instances (other cgroups) go through
    at the same time without waiting at all (lock_timeout 0)."""
    pin_dir = os.path.join(bpffs, "tcp_rto")
    with sandbox.sandbox_cgroup(label="second") as second, sandbox.sandbox_cgroup(label="third") as third:
        with lock.InstanceLock("first", pin_dir, timeout=0) as held:
            runs = [
                reconcile_run.start(
                    reconcile_run.module_params(
                        name=name, cgroup=place, pin_dir=pin_dir, mount_bpffs=False, lock_timeout=0, rto_ms=300
                    )
                )
                for name, place in (("second", second), ("third", third))
            ]
            outcomes = [reconcile_run.finish(run) for run in runs]
            held.remove_file()
        assert [returncode for returncode, _result, _err in outcomes] == [0, 0], outcomes
        for place in (second, third):
            assert observed_rto_us(place) == jiffies_us(300)
        for name in ("second", "third"):
            params = reconcile_run.module_params(name=name, state="absent", pin_dir=pin_dir, mount_bpffs=False)
            assert reconcile_run.run(params)[0] == 0
        assert cgroup_program_ids(second) == cgroup_program_ids(third) == []
