"""probe.py on this machine's kernel: real sockets on the loopback in the fixture cgroup, with and
without a tiny sock_ops program (compiled with clang, loaded and attached with bpftool)."""

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import time

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host, probe, probe_child, syn_give_up
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.hz import discover
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.probe import ProbeError

pytestmark = pytest.mark.kernel

PROGRAM_SOURCE = r"""
#include <linux/bpf.h>
__attribute__((section("sockops"), used))
int set_initial_rto(struct bpf_sock_ops *skops)
{
    if (skops->op == BPF_SOCK_OPS_TIMEOUT_INIT)
        skops->reply = %d;
    return 1;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


@pytest.fixture(scope="module")
def hz():
    """CONFIG_HZ from the kernel config (/proc/config.gz here), else as measured."""
    return discover()[0]


def _has_ipv6_loopback():
    try:
        with contextlib.closing(socket.socket(socket.AF_INET6, socket.SOCK_STREAM)) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 here")


@contextlib.contextmanager
def attached_program(cgroup, bpffs, tmp_path, reply):
    """A sock_ops program setting reply = <reply> jiffies on TIMEOUT_INIT, attached (multi) to cgroup."""
    for tool in ("clang", "bpftool"):
        if not shutil.which(tool):
            pytest.skip("%s is not installed" % tool)
    source = tmp_path / ("rto%d.c" % reply)
    obj = tmp_path / ("rto%d.o" % reply)
    source.write_text(PROGRAM_SOURCE % reply)
    arch_include = "/usr/include/%s-linux-gnu" % os.uname().machine
    subprocess.run(
        ["clang", "-O2", "-g0", "-target", "bpf", "-I", arch_include, "-c", str(source), "-o", str(obj)], check=True
    )
    pin = os.path.join(bpffs, "rto%d" % reply)
    subprocess.run(["bpftool", "prog", "load", str(obj), pin, "type", "sockops"], check=True)
    subprocess.run(["bpftool", "cgroup", "attach", cgroup, "sock_ops", "pinned", pin, "multi"], check=True)
    try:
        yield
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", cgroup, "sock_ops", "pinned", pin], check=True)


def _leaves(cgroup):
    return [entry for entry in os.listdir(cgroup) if entry.startswith(probe_child.LEAF_PREFIX)]


# --- without a program: the kernel default (TCP_TIMEOUT_INIT, 1 s) --------------------------------


def test_outgoing_default(cgroup):
    assert probe.outgoing_rto_us(cgroup) == 1000000


def test_incoming_default(cgroup, hz):
    result = probe.incoming_rto_ms(cgroup)
    assert result.jiffy_ms == pytest.approx(1000.0 / hz)
    assert_incoming(result, 1000)
    if result.exact:  # read within the jiffy the timer was armed in: the remaining time is the whole timeout
        assert result.resolution_ms == 0 and result.remaining_ms == 1000
        assert result.elapsed_ms < result.jiffy_ms


def assert_incoming(result, expected_ms):
    """The timer was armed between the connect and the read, so its full length lies in
    [remaining, remaining + elapsed], give or take a jiffy of timer granularity: on a busy machine
    the read comes late and the estimate (exact=False) rounds within that range."""
    assert result.remaining_ms - result.jiffy_ms <= expected_ms, result
    assert expected_ms <= result.remaining_ms + result.elapsed_ms + result.jiffy_ms, result
    if result.exact:
        assert result.rto_ms == expected_ms, result


@needs_ipv6
def test_ipv6_default(cgroup, hz):
    assert probe.outgoing_rto_us(cgroup, "::1") == 1000000
    assert_incoming(probe.incoming_rto_ms(cgroup, "::1"), 1000)


# --- with a program -------------------------------------------------------------------------------


def test_with_program(cgroup, bpffs, tmp_path, hz):
    with attached_program(cgroup, bpffs, tmp_path, 750):
        assert probe.outgoing_rto_us(cgroup) == 750 * 1000000 // hz  # 3000000 at HZ 250
        assert_incoming(probe.incoming_rto_ms(cgroup), 750 * 1000.0 / hz)  # 3000 at HZ 250
    assert probe.outgoing_rto_us(cgroup) == 1000000  # detached: back to the default


@needs_ipv6
def test_with_program_ipv6(cgroup, bpffs, tmp_path, hz):
    with attached_program(cgroup, bpffs, tmp_path, 750):
        assert probe.outgoing_rto_us(cgroup, "::1") == 750 * 1000000 // hz
        assert_incoming(probe.incoming_rto_ms(cgroup, "::1"), 750 * 1000.0 / hz)


@pytest.mark.parametrize("reply", [1, 25])
def test_small_values(cgroup, bpffs, tmp_path, hz, reply):
    # One jiffy is the smallest initial RTO; reading the request socket's timer takes well under one.
    with attached_program(cgroup, bpffs, tmp_path, reply):
        assert probe.outgoing_rto_us(cgroup) == reply * 1000000 // hz
        assert_incoming(probe.incoming_rto_ms(cgroup), reply * 1000.0 / hz)


def test_incoming_timer_fired_before_read(cgroup, bpffs, tmp_path, monkeypatch):
    # A slow reader (20 ms) and a one-jiffy timeout: the first expiry resends the SYN-ACK, the
    # client's ACK to it completes the connection; that must be an error, never a wrong value.
    real_read = probe._diag_request_sockets

    def slow_read(*args):
        time.sleep(0.02)
        return real_read(*args)

    monkeypatch.setattr(probe, "_diag_request_sockets", slow_read)
    with attached_program(cgroup, bpffs, tmp_path, 1):
        with pytest.raises(ProbeError, match="fired before it could be read"):
            probe.incoming_rto_ms(cgroup)


def test_program_on_parent_reaches_child_cgroup(cgroup, bpffs, tmp_path, hz):
    child = os.path.join(cgroup, "child")
    os.mkdir(child)
    with attached_program(cgroup, bpffs, tmp_path, 750):
        assert probe.outgoing_rto_us(child) == 750 * 1000000 // hz


# --- cgroups that refuse processes: the temporary leaf -------------------------------------------


@pytest.fixture
def refusing_target(monkeypatch, tmp_path):
    """Make joining the target cgroup itself fail with EBUSY, as the "no internal processes" rule does
    for a cgroup with controllers in its cgroup.subtree_control. That cannot be made real here: the
    root delegates no controller (cgroup.subtree_control of the v2 root is empty, hugetlb the only
    one available), and enabling one would change the root cgroup. Joins are logged to a file, as
    they happen in the forked child."""
    log = tmp_path / "joins"
    real_write_procs = probe_child._write_procs
    refused = []

    def write_procs(path):
        with open(str(log), "a") as handle:
            handle.write(path + "\n")
        if path in refused:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        return real_write_procs(path)

    monkeypatch.setattr(probe_child, "_write_procs", write_procs)

    def refuse(path):
        refused.append(path)
        return lambda: log.read_text().split()

    return refuse


def test_leaf_when_cgroup_refuses_processes(cgroup, bpffs, tmp_path, hz, refusing_target):
    joins = refusing_target(cgroup)
    with attached_program(cgroup, bpffs, tmp_path, 750):
        # the leaf inherits the cgroup's effective programs
        assert probe.outgoing_rto_us(cgroup) == 750 * 1000000 // hz
        first = joins()
        assert first[0] == cgroup and os.path.dirname(first[1]) == cgroup
        assert os.path.basename(first[1]).startswith(probe_child.LEAF_PREFIX)
        assert_incoming(probe.incoming_rto_ms(cgroup), 750 * 1000.0 / hz)
    assert _leaves(cgroup) == []


def test_leaf_removed_on_timeout(cgroup, refusing_target, monkeypatch):
    refusing_target(cgroup)

    def hanging_body(address, timeout):
        def body(send, wait_parent, joined):
            time.sleep(60)

        return body

    monkeypatch.setattr(probe, "_outgoing_body", hanging_body)
    start = time.monotonic()
    with pytest.raises(ProbeError, match=r"no answer within 1\.0 s"):
        probe.outgoing_rto_us(cgroup, timeout=1.0)
    assert time.monotonic() - start < 5
    assert _leaves(cgroup) == []
    with open(os.path.join(cgroup, "cgroup.procs")) as handle:
        assert handle.read().split() == []


def test_domain_invalid_cgroup(cgroup):
    # A real EOPNOTSUPP: once a child of the fixture is threaded, its other domain children are
    # "domain invalid" and can hold no process, nor can any leaf below them.
    threaded = os.path.join(cgroup, "threaded")
    invalid = os.path.join(cgroup, "invalid")
    os.mkdir(threaded)
    os.mkdir(invalid)
    try:
        with open(os.path.join(threaded, "cgroup.type"), "w") as handle:
            handle.write("threaded")
        with open(os.path.join(invalid, "cgroup.type")) as handle:
            assert handle.read().strip() == "domain invalid"
        with pytest.raises(ProbeError) as error:
            probe.outgoing_rto_us(invalid)
        assert "nor its temporary leaf" in str(error.value) and "Operation not supported" in str(error.value)
        assert _leaves(invalid) == []
        # the threaded domain itself still takes processes
        assert probe.outgoing_rto_us(cgroup) == 1000000
    finally:
        # (the fixture's teardown cannot empty a threaded cgroup: cgroup.kill is not supported there;
        # these hold no process)
        for path in (threaded, invalid):
            os.rmdir(path)


# --- errors -----------------------------------------------------------------------------------------


def test_missing_cgroup(cgroup):
    missing = os.path.join(cgroup, "missing")
    with pytest.raises(ProbeError, match="does not exist"):
        probe.outgoing_rto_us(missing)
    with pytest.raises(ProbeError, match="does not exist"):
        probe.incoming_rto_ms(missing)


def test_cgroup_v1_directory():
    # refused before anything moves: the sockets would not be in that cgroup for sock_ops
    with pytest.raises(ProbeError, match="not a cgroup v2 directory"):
        probe.outgoing_rto_us("/sys/fs/cgroup/cpu")


def test_error_in_child_comes_back_as_probe_error(cgroup):
    # 192.0.2.1 (TEST-NET-1) is no local address: bind() fails in the child, nothing is sent.
    with pytest.raises(ProbeError) as error:
        probe.outgoing_rto_us(cgroup, "192.0.2.1")
    assert "Cannot assign requested address" in str(error.value) and cgroup in str(error.value)
    with pytest.raises(ProbeError, match="Cannot assign requested address"):
        probe.incoming_rto_ms(cgroup, "192.0.2.1")


# --- the SYN give-up time of syn_give_up.syn_give_up_seconds, measured -----------------------------------


def _give_up_body(syn_retries):
    def body(send, wait_parent, joined):
        listener = socket.socket()
        filler = socket.socket()
        sock = socket.socket()
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            filler.connect(listener.getsockname())
            time.sleep(0.05)  # the filler is queued: further SYNs are dropped
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syn_retries)
            sock.settimeout(30)
            start = time.monotonic()
            try:
                sock.connect(listener.getsockname())
                send({"error": "connected"})
            except OSError as exc:
                send({"seconds": time.monotonic() - start, "errno": exc.errno})
        finally:
            for each in (sock, filler, listener):
                each.close()

    return body


@pytest.mark.parametrize("syn_retries", [1, 2, 3])
def test_syn_give_up_time(cgroup, bpffs, tmp_path, hz, syn_retries):
    reply = 25  # jiffies: 100 ms at HZ 250
    linear = host.read_sysctl("net.ipv4.tcp_syn_linear_timeouts", 0)
    expected = syn_give_up.syn_give_up_seconds(reply / float(hz), syn_retries, linear)
    with attached_program(cgroup, bpffs, tmp_path, reply):
        child = probe_child.ProbeChild(cgroup, _give_up_body(syn_retries), 30)
        try:
            result = child.receive()
        finally:
            child.close()
    assert result["errno"] == errno.ETIMEDOUT
    # timers fire on jiffy ticks and the timer wheel adds some slack, never less
    assert expected <= result["seconds"] <= expected * 1.15 + 0.05
