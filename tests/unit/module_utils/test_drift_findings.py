"""drift: what changed in the kernel since tcp_rto last wrote an instance, told as sentences, on a
stand-in for what the kernel reader (current.Current) found. No kernel: the cgroup is a temporary
directory and the cgroup id comes from a stand-in. tests/integration/test_drift.py makes the same
drifts on the kernel with bpftool."""

import collections
import ipaddress
import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import cgroups, desired, drift, pins, rto_program

HZ = 250
ProgInfo = collections.namedtuple("ProgInfo", "id")
LinkInfo = collections.namedtuple("LinkInfo", "prog_id cgroup_id")


def rules(*pairs):
    return [desired.Rule(ipaddress.ip_network(dest), jiffies) for dest, jiffies in pairs]


WRITTEN = tuple(rules(("10.0.0.0/8", 50), ("192.168.0.0/16", 100)))


def wanted(written=WRITTEN, default_jiffies=125, direction="both", cgroup="/cg"):
    return desired.Desired("t", "/pins", cgroup, HZ, list(written), default_jiffies, direction, "link", None)


class FakeCurrent:
    """The attributes of instance.Current that drift reads: an intact, attached instance whose maps
    hold what wanted() wrote, until a test changes them."""

    def __init__(self, cgroup, attach_mode="link", written=WRITTEN, default_jiffies=125, direction="both"):
        directions = rto_program.DIRECTIONS[direction]
        self.exists = True
        self.instance_dir = "/pins/t"
        self.missing_pins = []
        self.prog_adopted = self.meta_adopted = False
        self.prog_info = ProgInfo(7)
        self.link_info = LinkInfo(7, 1234)
        self.link_fd = 5 if attach_mode == "link" else None
        self.attached = True
        self.meta = dict(
            cgroup=cgroup,
            attach_mode=attach_mode,
            maps_sha256=pins.maps_fingerprint(written, default_jiffies, directions),
        )
        self.maps = {rto_program.RULES_MAP: 3, rto_program.CONFIG_MAP: 4}
        self.rules = [(rule, slot) for slot, rule in enumerate(written)]
        self.default_jiffies = default_jiffies
        self.default_syn_retries = None
        self.default_auto = False
        self.auto_config = None
        self.directions = directions

    @property
    def cgroup(self):
        return self.meta["cgroup"] if self.meta else None

    @property
    def attach_mode(self):
        return self.meta["attach_mode"] if self.meta else None


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    path = str(tmp_path / "cg")
    os.mkdir(path)
    monkeypatch.setattr(cgroups, "cgroup_id", lambda _path: 1234)
    return path


def test_nothing_drifted(cgroup):
    assert drift.findings(FakeCurrent(cgroup), wanted(cgroup=cgroup)) == []
    assert not drift.maps_edited(FakeCurrent(cgroup))


def test_an_instance_that_does_not_exist_has_no_drift(cgroup):
    current = FakeCurrent(cgroup)
    current.exists = False
    current.missing_pins = ["prog"]
    assert drift.findings(current, wanted(cgroup=cgroup)) == []


def test_missing_pins_are_named_with_their_path(cgroup):
    current = FakeCurrent(cgroup)
    current.missing_pins = [rto_program.HITS_MAP]
    assert drift.findings(current, wanted(cgroup=cgroup)) == ["pin /pins/t/hits is missing"]


def test_an_adopted_program_is_said_to_be_still_attached(cgroup):
    current = FakeCurrent(cgroup)
    current.missing_pins, current.prog_adopted = [pins.PROG_PIN], True
    assert drift.findings(current, wanted(cgroup=cgroup)) == [
        "pin /pins/t/prog is missing; program 7 is still attached (found by id)"
    ]


def test_an_adopted_record_names_where_the_program_was_found(cgroup):
    current = FakeCurrent(cgroup)
    current.missing_pins, current.meta_adopted = [pins.META_MAP], True
    assert drift.findings(current, wanted(cgroup=cgroup)) == [
        "pin /pins/t/meta (the instance record) is missing; program 7 found attached to %s" % cgroup
    ]


def test_a_missing_link_pin_is_the_lost_attachment(cgroup):
    current = FakeCurrent(cgroup)
    current.link_fd, current.attached = None, False
    assert drift.findings(current, wanted(cgroup=cgroup)) == [
        "pin /pins/t/link is missing, and with it the bpf_link that attached the program"
    ]


def test_detached_from_a_cgroup_that_is_gone(cgroup):
    current = FakeCurrent(cgroup, attach_mode="multi")
    current.attached = False
    os.rmdir(cgroup)
    [finding] = drift.findings(current, wanted(cgroup=cgroup))
    assert (
        finding == "program 7 is not attached to %s (the cgroup no longer exists; systemd removes a unit's "
        "cgroup when the unit stops)" % cgroup
    )


def test_detached_from_a_recreated_cgroup(cgroup):
    current = FakeCurrent(cgroup)
    current.attached = False
    current.link_info = LinkInfo(7, 99)  # the link holds the id of the cgroup that was removed
    assert "the cgroup was removed and re-created" in drift.detach_cause(current)
    assert "detached outside tcp_rto" not in drift.detach_cause(current)


def test_detached_from_the_same_cgroup(cgroup):
    current = FakeCurrent(cgroup, attach_mode="multi")
    current.attached = False
    current.link_info = None
    assert drift.detach_cause(current).startswith("detached outside tcp_rto, or the cgroup was removed")


def test_rule_edits_are_told_one_by_one(cgroup):
    current = FakeCurrent(cgroup)
    current.rules = [(rule, slot) for slot, rule in enumerate(rules(("10.0.0.0/8", 75), ("172.16.0.0/12", 25)))]
    assert drift.maps_edited(current)
    assert drift.findings(current, wanted(cgroup=cgroup)) == [
        "rules map: 10.0.0.0/8 holds 75 jiffies, tcp_rto wrote 50",
        "rules map: the rule for 192.168.0.0/16 (100 jiffies) was deleted",
        "rules map: a rule for 172.16.0.0/12 (25 jiffies) was added",
    ]


def test_config_edits_are_told(cgroup):
    current = FakeCurrent(cgroup)
    current.default_jiffies, current.directions = 0, rto_program.DIRECTIONS["incoming"]
    assert drift.findings(current, wanted(cgroup=cgroup)) == [
        "config map: the default holds 0 jiffies, tcp_rto wrote 125 (0: kernel default)",
        "config map: the direction holds incoming, tcp_rto wrote both",
    ]


def test_auto_edits_are_told(cgroup):
    """bpftool set a rule's rto_ms: auto flag and the default's auto settings behind tcp_rto's back."""
    current = FakeCurrent(cgroup)
    rule, slot = current.rules[0]
    current.rules[0] = (rule._replace(auto=True), slot)
    current.auto_config = (5, 200, 3, 600, 3, HZ)
    assert drift.findings(current, wanted(cgroup=cgroup)) == [
        "rules map: the rto_ms: auto flag of %s was set" % rule.dest,
        "config map: the rto_ms: auto flag of the default or the auto settings differ from what tcp_rto wrote",
    ]


def test_an_edit_with_new_parameters_is_told_as_one_finding(cgroup):
    """The parameters changed too: which difference is drift and which is the change is unknown."""
    current = FakeCurrent(cgroup)
    current.default_jiffies = 0
    assert drift.findings(current, wanted(default_jiffies=250, cgroup=cgroup)) == [
        "the rules or config map was edited outside tcp_rto since the last run"
    ]


def test_new_parameters_alone_are_not_drift(cgroup):
    assert drift.findings(FakeCurrent(cgroup), wanted(written=rules(("10.0.0.0/8", 60)), cgroup=cgroup)) == []


def test_a_record_without_a_fingerprint_tells_no_map_drift(cgroup):
    """Records of releases before the fingerprint: nothing to compare with."""
    current = FakeCurrent(cgroup)
    del current.meta["maps_sha256"]
    current.default_jiffies = 0
    assert drift.findings(current, wanted(cgroup=cgroup)) == []
    assert not drift.maps_edited(current)
