"""The parts of unit: that need no systemd: names, the own cgroup, a unit's cgroup path."""

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import service_unit


def test_own_cgroup_of_a_service_and_of_a_delegated_one(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/api.service\n")
    assert service_unit.own_cgroup("/sys/fs/cgroup", str(proc)) == "/sys/fs/cgroup/system.slice/api.service"
    proc.write_text("12:cpu:/x\n0::/system.slice/api.service/.control\n")
    assert service_unit.own_cgroup("/sys/fs/cgroup/unified", str(proc)) == (
        "/sys/fs/cgroup/unified/system.slice/api.service"
    )


def test_unit_of_cgroup():
    assert service_unit.unit_of_cgroup("/sys/fs/cgroup/system.slice/api.service") == "api.service"
    assert service_unit.unit_of_cgroup("/sys/fs/cgroup/user.slice/user-1.slice/session-3.scope/") == "session-3.scope"
    assert service_unit.unit_of_cgroup("/sys/fs/cgroup/system.slice") is None
    assert service_unit.unit_of_cgroup(None) is None


@pytest.mark.parametrize("name", ["api", "system.slice", "a b.service", "../x.service", ""])
def test_only_service_names(name):
    with pytest.raises(service_unit.UnitError, match="not the name of a systemd service"):
        service_unit.check_name(name)


def test_running_cgroup():
    def show(state, cgroup="/system.slice/api.service", load="loaded"):
        return lambda _unit, _names: {"LoadState": load, "ActiveState": state, "ControlGroup": cgroup}

    assert service_unit.running_cgroup("api.service", "/sys/fs/cgroup", show("active")) == (
        "/sys/fs/cgroup/system.slice/api.service"
    )
    assert service_unit.running_cgroup("api.service", "/sys/fs/cgroup", show("inactive", cgroup="")) is None
    with pytest.raises(service_unit.UnitError, match=r"systemd has no unit api\.service"):
        service_unit.running_cgroup("api.service", "/sys/fs/cgroup", show("inactive", load="not-found"))
