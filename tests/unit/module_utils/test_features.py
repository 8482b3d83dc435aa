"""features.py: each probe's reading of the kernel's answers, and the probes on this machine's kernel.

An old kernel's answers cannot be had here, so the errno interpretation is tested with the one bpf
call a probe makes replaced by one that fails with that errno; that those answers are what a kernel
gives for an unknown command or flag, and that every probe finds its feature on this kernel and
leaves nothing behind, is tested for real.
"""

import ctypes
import errno
import os
import resource
import time

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_info,
    bpf_maps,
    bpf_syscall,
    cgroups,
    features,
    host,
    uapi,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.features import FeatureProbeError

SOCK_OPS = uapi.BPF_CGROUP_SOCK_OPS


def failing(err, calls=None):
    """A stand-in for a bpf_syscall function: records its arguments, fails with err."""

    def call(*args, **kwargs):
        if calls is not None:
            calls.append(args)
        raise bpf_syscall.BpfError("BPF_TEST", err)

    return call


# --- errno interpretation -------------------------------------------------------------------------

# probe -> the bpf_syscall function it calls with invalid fds
COMMAND_PROBES = [
    (features.probe_prog_query, "prog_query"),
    (features.probe_allow_multi, "prog_attach"),
    (features.probe_prog_replace, "prog_attach"),
    (features.probe_link_create, "link_create"),
    (features.probe_link_update, "link_update"),
    (features.probe_link_detach, "link_detach"),
]
COMMAND_IDS = [probe.__name__ for probe, _call in COMMAND_PROBES]


@pytest.mark.parametrize("probe, call", COMMAND_PROBES, ids=COMMAND_IDS)
@pytest.mark.parametrize(
    "err, present",
    [(errno.EBADF, True), (errno.EINVAL, False), (errno.E2BIG, False)],
    ids=["EBADF-known", "EINVAL-unknown", "E2BIG-unknown-field"],
)
def test_command_probe_reads_the_errno(monkeypatch, probe, call, err, present):
    monkeypatch.setattr(bpf_syscall, call, failing(err))
    assert probe() is present


@pytest.mark.parametrize("probe, call", COMMAND_PROBES, ids=COMMAND_IDS)
@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS, errno.EFAULT])
def test_command_probe_refuses_to_guess(monkeypatch, probe, call, err):
    monkeypatch.setattr(bpf_syscall, call, failing(err))
    with pytest.raises(FeatureProbeError, match=r"failed unexpectedly.*seccomp"):
        probe()


@pytest.mark.parametrize("probe, call", COMMAND_PROBES, ids=COMMAND_IDS)
def test_command_probe_refuses_a_success(monkeypatch, probe, call):
    monkeypatch.setattr(bpf_syscall, call, lambda *args, **kwargs: 0)
    with pytest.raises(FeatureProbeError, match="invalid fds succeeded"):
        probe()


def test_attach_probes_ask_for_their_flag(monkeypatch):
    calls = []
    monkeypatch.setattr(bpf_syscall, "prog_attach", failing(errno.EBADF, calls))
    features.probe_allow_multi()
    features.probe_prog_replace()
    assert [call[3] for call in calls] == [
        uapi.BPF_F_ALLOW_MULTI,
        uapi.BPF_F_ALLOW_MULTI | uapi.BPF_F_REPLACE,
    ]
    assert all(call[:2] == (features.BAD_FD, features.BAD_FD) for call in calls)


@pytest.mark.parametrize("err, present", [(None, True), (errno.EPERM, False)])
def test_memcg_probe_reads_the_errno_and_restores_the_limit(monkeypatch, err, present):
    seen = []

    def map_create(*args):
        seen.append(resource.getrlimit(resource.RLIMIT_MEMLOCK)[0])
        if err:
            raise bpf_syscall.BpfError("BPF_MAP_CREATE", err)
        return os.open("/dev/null", os.O_RDONLY)

    before = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    monkeypatch.setattr(bpf_maps, "map_create", map_create)
    assert features.probe_memcg_accounting() is present
    assert seen == [0]  # the map was asked for under a soft limit of 0
    assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == before


def test_memcg_probe_refuses_to_guess(monkeypatch):
    before = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    monkeypatch.setattr(bpf_maps, "map_create", failing(errno.EINVAL))
    with pytest.raises(FeatureProbeError, match="RLIMIT_MEMLOCK 0"):
        features.probe_memcg_accounting()
    assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == before


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EACCES])
def test_program_probe_reads_a_refusal_as_missing(monkeypatch, err):
    monkeypatch.setattr(bpf_syscall, "prog_load", failing(err))
    assert features.load_probe_program() is None


def test_program_probe_refuses_to_guess(monkeypatch):
    monkeypatch.setattr(bpf_syscall, "prog_load", failing(errno.EPERM))
    with pytest.raises(FeatureProbeError, match="sock_ops programs"):
        features.load_probe_program()


@pytest.mark.parametrize("text, present", [("40\n", True), ("39", True), ("38\n", False), ("x", False), (None, False)])
def test_cap_bpf_probe(tmp_path, text, present):
    path = tmp_path / "cap_last_cap"
    if text is not None:
        path.write_text(text)
    assert features.probe_cap_bpf(str(path)) is present


# --- the link probe: a real link on a sandbox cgroup ---------------------------------------------


@pytest.fixture
def probe_program():
    fd = features.load_probe_program()
    assert fd is not None
    try:
        yield fd
    finally:
        os.close(fd)


def attached(cgroup):
    with bpf_syscall.closing_fd(os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)) as fd:
        return bpf_syscall.prog_query(fd, SOCK_OPS)[1]


@pytest.mark.kernel
def test_link_probe_real(cgroup, probe_program):
    assert features.probe_link_info(probe_program, cgroup) == (True, True)
    assert attached(cgroup) == []  # the link went with its fd


@pytest.mark.kernel
def test_link_probe_reads_link_info_einval_as_missing(monkeypatch, cgroup, probe_program):
    """As on 5.7: the link is made, BPF_OBJ_GET_INFO_BY_FD does not know it."""
    monkeypatch.setattr(bpf_info, "link_info", failing(errno.EINVAL))
    assert features.probe_link_info(probe_program, cgroup) == (True, False)
    assert attached(cgroup) == []


@pytest.mark.kernel
@pytest.mark.parametrize("err", [errno.EINVAL, errno.EPERM])
def test_link_probe_without_a_link(monkeypatch, cgroup, probe_program, err):
    """No cgroup links (EINVAL), or an exclusive attachment above (EPERM): neither feature is used."""
    monkeypatch.setattr(bpf_syscall, "link_create", failing(err))
    assert features.probe_link_info(probe_program, cgroup) == (False, False)


@pytest.mark.kernel
def test_link_probe_refuses_to_guess(monkeypatch, cgroup, probe_program):
    monkeypatch.setattr(bpf_info, "link_info", failing(errno.EFAULT))
    with pytest.raises(FeatureProbeError, match="link info"):
        features.probe_link_info(probe_program, cgroup)
    assert attached(cgroup) == []


# --- this kernel, for real --------------------------------------------------------------------------


def _raw_bpf(command, attr_bytes=b""):
    """bpf(command, attr) with a raw command number -> errno (0 on success)."""
    syscall, number = bpf_syscall._syscall()
    attr = ctypes.create_string_buffer(bytes(attr_bytes).ljust(uapi.ATTR_SIZE, b"\0"), uapi.ATTR_SIZE)
    ret = syscall(ctypes.c_long(number), ctypes.c_long(command), attr, ctypes.c_long(uapi.ATTR_SIZE))
    return ctypes.get_errno() if ret < 0 else 0


@pytest.mark.kernel
def test_this_kernel_answers_unknown_with_einval_and_bad_fds_with_ebadf():
    """What the command probes rely on: a command or flag the kernel does not know fails with
    EINVAL before it looks at the fds; a known one with invalid fds fails with EBADF."""
    assert _raw_bpf(9999) == errno.EINVAL
    unknown_flag = 1 << 30
    with pytest.raises(bpf_syscall.BpfError) as error:
        bpf_syscall.prog_attach(features.BAD_FD, features.BAD_FD, SOCK_OPS, uapi.BPF_F_ALLOW_MULTI | unknown_flag)
    assert error.value.errno == errno.EINVAL
    with pytest.raises(bpf_syscall.BpfError) as error:
        bpf_syscall.prog_attach(features.BAD_FD, features.BAD_FD, SOCK_OPS, uapi.BPF_F_ALLOW_MULTI)
    assert error.value.errno == errno.EBADF


def _program_ids_named(name):
    return [info.id for info in bpf_info.prog_infos() if info.name == name]


@pytest.mark.kernel
def test_every_probe_finds_its_feature_here_and_leaves_nothing(cgroup, monkeypatch):
    monkeypatch.delenv(features.FORCE_MISSING_ENVIRONMENT, raising=False)
    before = _program_ids_named(features.PROBE_PROGRAM_NAME)
    kernel = features.detect(cgroup_root=cgroup)
    assert kernel.present == dict.fromkeys(features.PROBE_NAMES, True)
    assert kernel.link_mode and kernel.attach_mode() == "link"
    kernel.require()
    assert not [entry for entry in os.listdir(cgroup) if entry.startswith(features.PROBE_CGROUP_PREFIX)]
    deadline = time.monotonic() + 5  # a freed program's id goes after an RCU grace period
    while set(_program_ids_named(features.PROBE_PROGRAM_NAME)) - set(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(_program_ids_named(features.PROBE_PROGRAM_NAME)) - set(before)


@pytest.mark.kernel
def test_detect_on_the_cgroup2_root_leaves_no_cgroup(monkeypatch):
    """The module probes on the cgroup v2 mount: a child made there and removed."""
    monkeypatch.delenv(features.FORCE_MISSING_ENVIRONMENT, raising=False)
    root = cgroups.cgroup2_mount()
    assert features.detect().cgroup_link
    assert not [entry for entry in os.listdir(root) if entry == features.PROBE_CGROUP_PREFIX + str(os.getpid())]


@pytest.mark.kernel
def test_sweep_removes_probe_cgroups_of_dead_runs_only(cgroup):
    dead = os.path.join(cgroup, features.PROBE_CGROUP_PREFIX + "999999999")
    alive = os.path.join(cgroup, features.PROBE_CGROUP_PREFIX + str(os.getppid()))
    other = os.path.join(cgroup, "tcp_rto_probe_not_ours")
    for path in (dead, alive, other):
        os.mkdir(path)
    features.sweep_probe_cgroups(cgroup)
    assert sorted(os.listdir(cgroup)) == sorted(
        entry for entry in os.listdir(cgroup) if entry != os.path.basename(dead)
    )
    assert not os.path.exists(dead) and os.path.isdir(alive) and os.path.isdir(other)


# --- the test switch --------------------------------------------------------------------------------


def test_forced_missing_parses_names():
    environ = {features.FORCE_MISSING_ENVIRONMENT: " link_detach, link_info ,"}
    assert features.forced_missing(environ) == {"link_detach", "link_info"}
    assert features.forced_missing({}) == set()


def test_forced_missing_refuses_unknown_names():
    with pytest.raises(ValueError, match="link_detatch"):
        features.forced_missing({features.FORCE_MISSING_ENVIRONMENT: "link_detatch"})


@pytest.mark.kernel
@pytest.mark.parametrize("name", features.PROBE_NAMES)
def test_detect_reports_a_forced_feature_missing(cgroup, monkeypatch, name):
    monkeypatch.setenv(features.FORCE_MISSING_ENVIRONMENT, name)
    kernel = features.detect(cgroup_root=cgroup)
    assert kernel.present == dict(dict.fromkeys(features.PROBE_NAMES, True), **{name: False})
    assert kernel.as_dict()[name] is False


# --- what the module makes of the features -------------------------------------------------------


def kernel_with(**missing):
    present = dict.fromkeys(features.PROBE_NAMES, True)
    present.update(missing)
    return features.KernelFeatures("6.1.0-28-amd64", present)


@pytest.mark.parametrize("name", features.LINK_FEATURES)
def test_link_mode_needs_every_link_feature(name):
    kernel = kernel_with(**{name: False})
    assert kernel.link_mode is False
    assert kernel.attach_mode() == "multi"


def test_attach_mode():
    assert kernel_with().attach_mode() == "link"
    assert kernel_with(cgroup_link=False).attach_mode() == "multi"  # the test aid for legacy attach
    assert kernel_with(allow_multi=False).attach_mode() == "link"
    with pytest.raises(host.HostError, match=r"lacks cgroup bpf_link.*BPF_F_ALLOW_MULTI.*4\.15"):
        kernel_with(allow_multi=False, cgroup_link=False).attach_mode()
    with pytest.raises(host.HostError, match=r"lacks BPF_LINK_DETACH \(5\.9\).*BPF_F_ALLOW_MULTI"):
        kernel_with(allow_multi=False, link_detach=False).attach_mode()


@pytest.mark.parametrize("name", ["sock_ops", "prog_query"])
def test_require_refuses_a_kernel_that_cannot_run_the_program(name):
    with pytest.raises(host.HostError) as error:
        kernel_with(**{name: False}).require()
    message = str(error.value)
    assert "6.1.0-28-amd64" in message and "4.16" in message and "upgrade the kernel" in message
    assert {probe: what for probe, _since, what in features.PROBES}[name] in message


def test_as_dict():
    found = kernel_with(link_info=False).as_dict()
    assert set(features.PROBE_NAMES) <= set(found)
    assert found["link_info"] is False and found["cgroup_link"] is True
    assert (found["release"], found["version"]) == ("6.1.0-28-amd64", "6.1.0")
    assert (found["rto_capped"], found["synack_backoff_from_bpf"]) == (True, True)
    assert kernel_with().as_dict()["syn_linear_timeouts"] == os.path.exists(
        "/proc/sys/net/ipv4/tcp_syn_linear_timeouts"
    )


@pytest.mark.parametrize("release, capped", [("5.17.15", False), ("5.18.0", True), ("4.18.0-513.el8", False)])
def test_behaviours_from_the_release_are_informational(release, capped):
    kernel = features.KernelFeatures(release, dict.fromkeys(features.PROBE_NAMES, True))
    assert kernel.rto_capped is capped and kernel.synack_backoff_from_bpf is capped
    assert kernel.link_mode  # the release decides nothing the module does
