"""host.py against this machine's real files (kernel release, /proc/config.gz, bpffs mounts, privileges,
sysctls) and tmp files for what this machine does not have."""

import gzip
import os
import platform
import resource
import uuid

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import cgroups, host, hz, syn_give_up
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.host import HostError
from ansible_collections.netbpf.tcp_rto.tests.support import sandbox

CGROUP_V1_DIR = "/sys/fs/cgroup/cpu"  # a cgroup v1 hierarchy on this (hybrid) machine


# --- kernel release (its features: test_features.py) ----------------------------------------------


@pytest.mark.parametrize(
    "release, expected",
    [
        ("6.18.44-fc-v657", (6, 18, 44)),
        ("5.10.0-28-cloud-amd64", (5, 10, 0)),
        ("4.9.0", (4, 9, 0)),
        ("6.1.0-rc3", (6, 1, 0)),
        ("6.8.0-45-generic", (6, 8, 0)),
        ("5.15", (5, 15, 0)),
        ("4.18.0-513.5.1.el8_9.x86_64", (4, 18, 0)),
        ("6.6.32+rpt-rpi-v8", (6, 6, 32)),
    ],
)
def test_parse_release(release, expected):
    assert host.parse_release(release) == expected


@pytest.mark.parametrize("release", ["", "linux", "v6.1", "6"])
def test_parse_release_garbage(release):
    with pytest.raises(HostError, match="uname -r"):
        host.parse_release(release)


def test_parse_release_of_this_machine():
    version = host.parse_release(platform.release())
    assert version[:2] == tuple(int(part) for part in platform.release().split(".")[:2])


# --- CONFIG_HZ ----------------------------------------------------------------------------------


def _hz_from_proc_config():
    with gzip.open("/proc/config.gz", "rt") as handle:
        for line in handle:
            if line.startswith("CONFIG_HZ="):
                return int(line.strip().split("=")[1])
    return None


@pytest.mark.skipif(not os.path.exists("/proc/config.gz"), reason="no /proc/config.gz here")
def test_config_hz_of_this_machine():
    # No /boot/config-* here: the answer comes from /proc/config.gz.
    found = hz.config_hz()
    assert found == (_hz_from_proc_config(), "/proc/config.gz")
    assert found[0] in (100, 250, 300, 1000)


def test_tick_hz():
    # measured HZ agrees with the kernel config wherever one is readable
    found = hz.config_hz()
    assert hz.tick_hz() in (100, 250, 300, 1000)
    if found:
        assert hz.tick_hz() == found[0]


def test_config_hz_prefers_boot_config(tmp_path):
    (tmp_path / "config-5.10.0-28-amd64").write_text("# comment\nCONFIG_HZ_1000=y\nCONFIG_HZ=1000\n")
    assert hz.config_hz("5.10.0-28-amd64", boot_dir=str(tmp_path), proc_config=str(tmp_path / "none.gz")) == (
        1000,
        str(tmp_path / "config-5.10.0-28-amd64"),
    )


def test_config_hz_from_gzip(tmp_path):
    proc_config = tmp_path / "config.gz"
    with gzip.open(str(proc_config), "wt") as handle:
        handle.write("CONFIG_HZ_300=y\nCONFIG_HZ=300\n")
    assert hz.config_hz("1.2.3", boot_dir=str(tmp_path), proc_config=str(proc_config)) == (300, str(proc_config))


def test_config_hz_missing_or_unreadable(tmp_path):
    assert hz.config_hz("1.2.3", boot_dir=str(tmp_path), proc_config=str(tmp_path / "missing.gz")) is None
    (tmp_path / "config-1.2.3").write_text("CONFIG_NO_HZ=y\n")  # no CONFIG_HZ= line
    (tmp_path / "broken.gz").write_bytes(b"not gzip at all")
    assert hz.config_hz("1.2.3", boot_dir=str(tmp_path), proc_config=str(tmp_path / "broken.gz")) is None


# --- bpffs --------------------------------------------------------------------------------------


def test_is_bpffs(bpffs, tmp_path):
    assert host.is_bpffs(bpffs)
    assert not host.is_bpffs(str(tmp_path))
    assert not host.is_bpffs(str(tmp_path / "missing"))
    assert not host.is_bpffs(cgroups.cgroup2_mount())


def test_ensure_bpffs_already_mounted(bpffs):
    assert host.ensure_bpffs(os.path.join(bpffs, "tcp_rto"), pin_root=bpffs) is False
    os.mkdir(os.path.join(bpffs, "tcp_rto"))
    assert host.ensure_bpffs(os.path.join(bpffs, "tcp_rto", "deeper"), pin_root=bpffs) is False
    # a pin_dir on another bpffs than the pin root is fine too
    assert host.ensure_bpffs(os.path.join(bpffs, "x")) is False


def test_ensure_bpffs_other_filesystem(tmp_path):
    with pytest.raises(HostError) as error:
        host.ensure_bpffs(str(tmp_path / "pins"))
    assert "not bpffs" in str(error.value) and "mount -t bpf bpf" in str(error.value)


def test_ensure_bpffs_symlink_out_of_bpffs(bpffs, tmp_path):
    link = os.path.join(bpffs, "escape")
    os.symlink(str(tmp_path), link)
    with pytest.raises(HostError, match="resolves to %s" % tmp_path):
        host.ensure_bpffs(os.path.join(link, "tcp_rto"), pin_root=bpffs)


def test_ensure_bpffs_dotdot_out_of_bpffs(bpffs):
    with pytest.raises(HostError, match="not bpffs"):
        host.ensure_bpffs(os.path.join(bpffs, "..", "tcp_rto"), pin_root=bpffs)


@pytest.fixture
def unmounted_pin_root():
    """An empty directory standing in for an unmounted /sys/fs/bpf; unmounted and removed afterwards."""
    # named like sandbox.py's own mounts (<prefix>bpffs-<pid>-<random>) so that a sweep of leftovers
    # recognises it, and leaves it alone while this process runs
    path = os.path.join(
        sandbox.BPFFS_PARENT, "%sbpffs-%d-%s" % (sandbox.SANDBOX_PREFIX, os.getpid(), uuid.uuid4().hex[:8])
    )
    os.mkdir(path, 0o700)
    try:
        yield path
    finally:
        for _attempt in range(3):  # ensure_bpffs may have mounted it (once)
            if not host.is_bpffs(path):
                break
            sandbox.unmount_bpffs(path)
        if os.path.isdir(path):
            os.rmdir(path)


def test_ensure_bpffs_mounts_the_pin_root(unmounted_pin_root):
    pin_dir = os.path.join(unmounted_pin_root, "tcp_rto")
    assert not host.is_bpffs(unmounted_pin_root)
    assert host.ensure_bpffs(pin_dir, pin_root=unmounted_pin_root) is True
    assert host.is_bpffs(unmounted_pin_root)
    assert oct(os.stat(unmounted_pin_root).st_mode & 0o777) == oct(0o700)
    assert host.ensure_bpffs(pin_dir, pin_root=unmounted_pin_root) is False  # idempotent


def test_ensure_bpffs_check_mode_does_not_mount(unmounted_pin_root):
    assert (
        host.ensure_bpffs(os.path.join(unmounted_pin_root, "tcp_rto"), check_mode=True, pin_root=unmounted_pin_root)
        is True
    )
    assert not host.is_bpffs(unmounted_pin_root)


def test_ensure_bpffs_mount_false(unmounted_pin_root):
    with pytest.raises(HostError) as error:
        host.ensure_bpffs(os.path.join(unmounted_pin_root, "tcp_rto"), mount=False, pin_root=unmounted_pin_root)
    assert "not mounted at %s" % unmounted_pin_root in str(error.value)
    assert "mount -t bpf bpf %s" % unmounted_pin_root in str(error.value)
    assert not host.is_bpffs(unmounted_pin_root)


def test_ensure_bpffs_missing_pin_root(tmp_path):
    root = str(tmp_path / "no-bpf")
    with pytest.raises(HostError, match="does not exist"):
        host.ensure_bpffs(os.path.join(root, "tcp_rto"), pin_root=root)


# --- privileges and limits ----------------------------------------------------------------------


def _status(tmp_path, caps):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t%016x\n" % caps)
    return str(status)


def test_require_root_this_process():
    host.require_root(cap_bpf=True)  # the tests run as root


def test_require_root_capabilities(tmp_path):
    bpf_net = (1 << host.CAP_BPF) | (1 << host.CAP_NET_ADMIN)
    host.require_root(True, status=_status(tmp_path, bpf_net))
    host.require_root(False, status=_status(tmp_path, (1 << host.CAP_SYS_ADMIN) | (1 << host.CAP_NET_ADMIN)))
    with pytest.raises(HostError, match="missing CAP_SYS_ADMIN"):
        host.require_root(False, status=_status(tmp_path, bpf_net))  # a kernel without CAP_BPF
    with pytest.raises(HostError, match="missing CAP_BPF or CAP_SYS_ADMIN"):
        host.require_root(True, status=_status(tmp_path, 1 << host.CAP_NET_ADMIN))
    with pytest.raises(HostError) as error:
        host.require_root(True, status=_status(tmp_path, 0))
    message = str(error.value)
    assert "CAP_NET_ADMIN" in message and "root" in message and "become" in message


def test_require_root_without_status_file(tmp_path):
    host.require_root(True, status=str(tmp_path / "missing"))  # euid 0 is enough then


def _in_child(function):
    """Run function in a forked child (rlimits stay untouched here); -> its return value or exception."""
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                result = ("ok", function())
            except Exception as exc:
                result = ("error", exc)
            os.write(write_end, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise value
    return value


def _has_cap(cap):
    return bool(host.effective_capabilities() & (1 << cap))


def test_raise_memlock():
    def lowered_then_raised():
        _soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, hard))
        return host.raise_memlock(), resource.getrlimit(resource.RLIMIT_MEMLOCK), hard

    result, (soft, hard), original_hard = _in_child(lowered_then_raised)
    if _has_cap(24):  # CAP_SYS_RESOURCE: the hard limit can go up
        assert result is True and soft == hard == resource.RLIM_INFINITY
    else:  # as here: the hard limit stays, the soft limit reaches it
        assert soft == hard == original_hard
        assert result is (hard == resource.RLIM_INFINITY)


def test_raise_memlock_required():
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if _has_cap(24) or hard == resource.RLIM_INFINITY:
        assert _in_child(lambda: host.raise_memlock(required=True)) is True
    else:
        with pytest.raises(HostError, match="LimitMEMLOCK=infinity"):
            _in_child(lambda: host.raise_memlock(required=True))


# --- sysctls and SYN timing ---------------------------------------------------------------------


def test_read_sysctl_real():
    with open("/proc/sys/net/ipv4/tcp_syn_retries") as handle:
        assert host.read_sysctl("net.ipv4.tcp_syn_retries") == int(handle.read())
    linear = "/proc/sys/net/ipv4/tcp_syn_linear_timeouts"
    if os.path.exists(linear):  # 6.5+
        with open(linear) as handle:
            assert host.read_sysctl("net.ipv4.tcp_syn_linear_timeouts", 0) == int(handle.read())
    assert isinstance(host.read_sysctl("net.ipv4.tcp_congestion_control"), str)


def test_read_sysctl_missing_and_fake(tmp_path):
    assert host.read_sysctl("net.ipv4.tcp_no_such_thing") is None
    assert host.read_sysctl("net.ipv4.tcp_syn_linear_timeouts", 0, proc_sys=str(tmp_path)) == 0
    (tmp_path / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net" / "ipv4" / "tcp_syn_retries").write_text("  3\n")
    assert host.read_sysctl("net.ipv4.tcp_syn_retries", proc_sys=str(tmp_path)) == 3


@pytest.mark.parametrize(
    "rto, retries, linear, expected",
    [
        (1.0, 6, 0, 127.0),  # before 6.5: 1+2+4+...+64
        (1.0, 6, 4, 131.0),  # 6.5+ defaults: 1+1+1+1+1 + 2+4+...+64
        (0.01, 6, 4, 1.31),
        (0.01, 6, 0, 1.27),
        (1.0, 5, 0, 63.0),
        (0.1, 1, 4, 0.3),  # the time limit (2^(N+1)-1)·R ends it before N+L retransmits
        (0.1, 2, 4, 0.7),
        (0.1, 3, 4, 1.9),
        (0.1, 2, 2, 0.9),
        (1.0, 15, 0, 1207.0),  # backoff capped at 120 s: 127 + 9·120
        (3.0, 6, 0, 3.0 + 6 + 12 + 24 + 48 + 96 + 120),
    ],
)
def test_syn_give_up_seconds(rto, retries, linear, expected):
    assert syn_give_up.syn_give_up_seconds(rto, retries, linear) == pytest.approx(expected)
