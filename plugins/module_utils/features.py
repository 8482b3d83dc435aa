# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the running kernel offers, decided by probing it, never from its release: vendor kernels
(RHEL 8's 4.18, RHEL 9's 5.14) carry backports that a version check misjudges both ways.

Most probes make one bpf(2) call that cannot succeed and read the errno, as libbpf and cilium/ebpf
do: invalid fds make a known command (or flag) fail with EBADF, while an unknown one fails with
EINVAL (E2BIG for attr fields past the kernel's union bpf_attr). Link info needs a real link: a
tiny sock_ops program linked to a child cgroup the probe makes and removes again. Nothing is left
behind: every fd is closed and the cgroup removed before detect() returns.

Test aid: TCP_RTO_FORCE_MISSING=link_info,link_detach (names of PROBES) makes those probes report
the feature missing, so that the fallbacks run on a kernel that has everything (cgroup_link: the
legacy BPF_PROG_ATTACH where bpf_link exists). Unset outside tests.
Plain stdlib, usable without Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import resource
import struct
import sys

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_info,
    bpf_maps,
    bpf_syscall,
    cgroups,
    host,
    uapi,
)

FORCE_MISSING_ENVIRONMENT = "TCP_RTO_FORCE_MISSING"

# -1 in the kernel's u32 fd fields: fdget() fails, so a known command answers EBADF.
BAD_FD = 0xFFFFFFFF
# What a kernel answers for a command, flag or attr field it does not know.
UNKNOWN = (errno.EINVAL, errno.E2BIG)

PROBE_CGROUP_PREFIX = "tcp_rto_probe-"
PROBE_PROGRAM_NAME = "tcp_rto_probe"

# struct bpf_sock_ops offsets (include/uapi/linux/bpf.h) of the fields the shipped program reads
# last among those it needs: both 4.16.
_SOCK_OPS_IS_FULLSOCK = 72
_SOCK_OPS_STATE = 88


def insn(code, dst=0, src=0, off=0, imm=0):
    """struct bpf_insn; its register bitfields follow the host's bit order."""
    regs = (dst << 4 | src) if sys.byteorder == "big" else (src << 4 | dst)
    return struct.pack("=BBhi", code, regs, off, imm)


# r2 = ctx->is_fullsock; r2 = ctx->state; r0 = 1; exit. The verifier refuses the loads (EACCES)
# where the fields do not exist, and the program type (EINVAL) before 4.13.
PROBE_PROGRAM = b"".join(
    [
        insn(0x61, dst=2, src=1, off=_SOCK_OPS_IS_FULLSOCK),  # BPF_LDX | BPF_MEM | BPF_W
        insn(0x61, dst=2, src=1, off=_SOCK_OPS_STATE),
        insn(0xB7, dst=0, imm=1),  # BPF_ALU64 | BPF_MOV | BPF_K
        insn(0x95),  # BPF_JMP | BPF_EXIT
    ]
)


class FeatureProbeError(host.HostError):
    """A probe got an answer that says neither present nor missing."""


def unexpected(feature, exc):
    return FeatureProbeError(
        "probing the kernel for %s failed unexpectedly: %s. The module cannot tell whether this kernel "
        "has it; check that bpf(2) is not filtered (seccomp, a container's profile, LSM policy)" % (feature, exc)
    )


def _command_known(feature, call):
    """call() with invalid fds: True on EBADF (the kernel knows the command and flags and went on
    to the fds), False on EINVAL/E2BIG (it does not)."""
    try:
        call()
    except bpf_syscall.BpfError as exc:
        if exc.errno == errno.EBADF:
            return True
        if exc.errno in UNKNOWN:
            return False
        raise unexpected(feature, exc)
    raise FeatureProbeError("probing the kernel for %s: a call with invalid fds succeeded" % feature)


# ---------------------------------------------------------------- the probes


def probe_prog_query():
    """BPF_PROG_QUERY (4.15): lists a cgroup's programs."""
    return _command_known("BPF_PROG_QUERY", lambda: bpf_syscall.prog_query(BAD_FD, uapi.BPF_CGROUP_SOCK_OPS))


def probe_allow_multi():
    """BPF_F_ALLOW_MULTI on BPF_PROG_ATTACH (4.15): the kernel checks the flags before the fds."""
    return _command_known(
        "BPF_F_ALLOW_MULTI",
        lambda: bpf_syscall.prog_attach(BAD_FD, BAD_FD, uapi.BPF_CGROUP_SOCK_OPS, uapi.BPF_F_ALLOW_MULTI),
    )


def probe_prog_replace():
    """BPF_F_REPLACE on BPF_PROG_ATTACH (5.6), checked like BPF_F_ALLOW_MULTI."""
    return _command_known(
        "BPF_F_REPLACE",
        lambda: bpf_syscall.prog_attach(
            BAD_FD, BAD_FD, uapi.BPF_CGROUP_SOCK_OPS, uapi.BPF_F_ALLOW_MULTI | uapi.BPF_F_REPLACE
        ),
    )


def probe_link_create():
    """BPF_LINK_CREATE (5.7 with cgroup links, the first kind there was)."""
    return _command_known("BPF_LINK_CREATE", lambda: bpf_syscall.link_create(BAD_FD, BAD_FD, uapi.BPF_CGROUP_SOCK_OPS))


def probe_link_update():
    """BPF_LINK_UPDATE (5.7): replaces a link's program."""
    return _command_known("BPF_LINK_UPDATE", lambda: bpf_syscall.link_update(BAD_FD, BAD_FD))


def probe_link_detach():
    """BPF_LINK_DETACH (5.9): detaches a link that others may still hold open."""
    return _command_known("BPF_LINK_DETACH", lambda: bpf_syscall.link_detach(BAD_FD))


def probe_memcg_accounting():
    """BPF memory charged to the memory cgroup (5.11) rather than RLIMIT_MEMLOCK: with the soft limit
    at 0 for a moment, a one-entry map is refused (EPERM) where the kernel charges the rlimit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, hard))
    try:
        os.close(bpf_maps.map_create(uapi.BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0, PROBE_PROGRAM_NAME))
        return True
    except bpf_syscall.BpfError as exc:
        if exc.errno == errno.EPERM:
            return False
        raise unexpected("memory accounting (a map under RLIMIT_MEMLOCK 0)", exc)
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))


def load_probe_program():
    """The probe program's fd, or None where the kernel refuses it: no sock_ops programs (EINVAL)
    or no is_fullsock/state fields in their context (EACCES)."""
    try:
        return bpf_syscall.prog_load(uapi.BPF_PROG_TYPE_SOCK_OPS, PROBE_PROGRAM, "GPL", PROBE_PROGRAM_NAME)
    except bpf_syscall.BpfError as exc:
        if exc.errno in (errno.EINVAL, errno.EACCES):
            return None
        raise unexpected("sock_ops programs", exc)


def probe_link_info(prog_fd, cgroup):
    """-> (cgroup_link, link_info) from a real link of prog_fd to cgroup (a child cgroup made for
    it). BPF_OBJ_GET_INFO_BY_FD answers EINVAL for a link before 5.8. Where no link can be made
    (EINVAL; EPERM under an exclusive attachment of an ancestor) neither is used."""
    with bpf_syscall.closing_fd(os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)) as cgroup_fd:
        try:
            link_fd = bpf_syscall.link_create(prog_fd, cgroup_fd, uapi.BPF_CGROUP_SOCK_OPS)
        except bpf_syscall.BpfError:
            return False, False
    with bpf_syscall.closing_fd(link_fd):  # an unpinned link detaches with its last fd
        try:
            bpf_info.link_info(link_fd)
        except bpf_syscall.BpfError as exc:
            if exc.errno in UNKNOWN:
                return True, False
            raise unexpected("link info (BPF_OBJ_GET_INFO_BY_FD on a link)", exc)
    return True, True


def probe_cap_bpf(cap_last_cap="/proc/sys/kernel/cap_last_cap"):
    """CAP_BPF (5.8): the kernel knows capabilities up to cap_last_cap."""
    try:
        with open(cap_last_cap) as handle:
            return int(handle.read()) >= host.CAP_BPF
    except (OSError, ValueError):
        return False  # then CAP_SYS_ADMIN is asked for, which root has anyway


# ---------------------------------------------------------------- the throwaway cgroup


def sweep_probe_cgroups(cgroup_root):
    """Remove probe cgroups whose run was killed mid-probe (empty: the link went with its fds)."""
    for entry in os.listdir(cgroup_root):
        if not entry.startswith(PROBE_CGROUP_PREFIX):
            continue
        pid = entry[len(PROBE_CGROUP_PREFIX) :]
        if pid.isdigit() and not os.path.exists("/proc/" + pid):
            try:
                os.rmdir(os.path.join(cgroup_root, entry))
            except OSError:
                pass


def _probe_links(cgroup_root, prog_fd):
    """probe_link_info on a child cgroup of cgroup_root made for it and removed after."""
    if cgroup_root is None:
        return False, False
    sweep_probe_cgroups(cgroup_root)
    cgroup = os.path.join(cgroup_root, PROBE_CGROUP_PREFIX + str(os.getpid()))
    try:
        os.mkdir(cgroup)
    except OSError:
        return False, False  # a read-only cgroup2 (some containers): links are not tried
    try:
        return probe_link_info(prog_fd, cgroup)
    finally:
        os.rmdir(cgroup)


# ---------------------------------------------------------------- all of them

# Every probed feature: the kernel that brought it upstream (for messages and docs only), what it is.
PROBES = (
    ("sock_ops", "4.16", "sock_ops programs reading is_fullsock and state"),
    ("prog_query", "4.15", "BPF_PROG_QUERY"),
    ("allow_multi", "4.15", "BPF_F_ALLOW_MULTI"),
    ("prog_replace", "5.6", "BPF_F_REPLACE"),
    ("cgroup_link", "5.7", "cgroup bpf_link (BPF_LINK_CREATE)"),
    ("link_update", "5.7", "BPF_LINK_UPDATE"),
    ("link_info", "5.8", "link info (BPF_OBJ_GET_INFO_BY_FD on a link)"),
    ("link_detach", "5.9", "BPF_LINK_DETACH"),
    ("memcg_accounting", "5.11", "BPF memory charged to the memory cgroup, not RLIMIT_MEMLOCK"),
    ("cap_bpf", "5.8", "CAP_BPF"),
)
PROBE_NAMES = tuple(name for name, _since, _what in PROBES)
# Probed only when a run needs them (they take a forked process): syn_retries_probe.settable().
LAZY_PROBES = (("syn_retries", "5.9", "bpf_setsockopt(TCP_SYNCNT) from a sock_ops program"),)
LINK_FEATURES = ("cgroup_link", "link_update", "link_info", "link_detach")


def forced_missing(environ=None):
    """The features TCP_RTO_FORCE_MISSING names; an unknown name is a programming error."""
    value = (os.environ if environ is None else environ).get(FORCE_MISSING_ENVIRONMENT, "")
    names = {name.strip() for name in value.split(",") if name.strip()}
    known = PROBE_NAMES + tuple(name for name, _since, _what in LAZY_PROBES)
    unknown = sorted(names - set(known))
    if unknown:
        raise ValueError(
            "%s names %s, not among the probes %s" % (FORCE_MISSING_ENVIRONMENT, ", ".join(unknown), ", ".join(known))
        )
    return names


def detect(release=None, cgroup_root=None, status="/proc/self/status"):
    """Probe the running kernel -> KernelFeatures. The bpf(2) probes need privileges, so this first
    checks them (HostError); where BPF memory is charged to RLIMIT_MEMLOCK it raises that limit,
    before anything is loaded. cgroup_root: the cgroup v2 mount (found when None; without one the
    link features read missing)."""
    release = release if release is not None else host.kernel_release()
    forced = forced_missing()

    def unless_forced(name, present):
        return bool(present) and name not in forced

    found = {"cap_bpf": unless_forced("cap_bpf", probe_cap_bpf())}
    host.require_root(found["cap_bpf"], status=status)
    found["memcg_accounting"] = unless_forced("memcg_accounting", probe_memcg_accounting())
    if not found["memcg_accounting"]:
        host.raise_memlock()
    for name, check in (
        ("prog_query", probe_prog_query),
        ("allow_multi", probe_allow_multi),
        ("prog_replace", probe_prog_replace),
        ("link_update", probe_link_update),
        ("link_detach", probe_link_detach),
    ):
        found[name] = unless_forced(name, check())
    prog_fd = load_probe_program()
    found["sock_ops"] = unless_forced("sock_ops", prog_fd is not None)
    cgroup_link = link_info = False
    if prog_fd is not None:
        try:
            if probe_link_create():
                if cgroup_root is None:
                    try:
                        cgroup_root = cgroups.cgroup2_mount()
                    except host.HostError:
                        pass
                cgroup_link, link_info = _probe_links(cgroup_root, prog_fd)
        finally:
            os.close(prog_fd)
    found["cgroup_link"] = unless_forced("cgroup_link", cgroup_link)
    found["link_info"] = unless_forced("link_info", link_info)
    return KernelFeatures(release, found)


class KernelFeatures:
    """The probed features (attributes named as in PROBES, True when present), plus two TCP
    behaviours nothing here can probe, read from the release for the result and docs only."""

    def __init__(self, release, present):
        self.release = release
        self.version = host.parse_release(release)
        self.present = {name: bool(present.get(name)) for name in PROBE_NAMES}
        for name, value in self.present.items():
            setattr(self, name, value)
        version = self.version[:2]
        # 5903123f662e (5.18): the reply is capped at TCP_RTO_MAX (120 s) ...
        self.rto_capped = version >= (5, 18)
        # ... and SYN-ACK retransmits double from the BPF value (before: 1 s, 2 s, 4 s ...). A 2024
        # 5.15-stable backport exists; its exact 5.15.y is not known here, so 5.15 reads False.
        self.synack_backoff_from_bpf = version >= (5, 18)

    @property
    def link_mode(self):
        """Whether instances attach through a bpf_link: creating, updating, reading it back on
        every run and detaching it all work (5.9 upstream); else BPF_PROG_ATTACH with multi."""
        return all(self.present[name] for name in LINK_FEATURES)

    def missing(self, names):
        """'BPF_LINK_DETACH (5.9), ...' for the names among names this kernel lacks."""
        return ", ".join(
            "%s (%s)" % (what, since) for name, since, what in PROBES if name in names and not self.present[name]
        )

    def require(self):
        """HostError unless the kernel can run the program and list what is attached to a cgroup."""
        if not (self.sock_ops and self.prog_query):
            raise host.HostError(
                "kernel %s lacks %s: Linux %d.%d or later is needed because %s (a vendor kernel "
                "that backports them works too); upgrade the kernel"
                % (
                    self.release,
                    self.missing(("sock_ops", "prog_query")),
                    host.MIN_KERNEL[0],
                    host.MIN_KERNEL[1],
                    host.MIN_KERNEL_REASON,
                )
            )

    def attach_mode(self):
        """'link' where every link feature works, else 'multi'
        (HostError where BPF_F_ALLOW_MULTI is missing too)."""
        if self.link_mode:
            return "link"
        if not self.allow_multi:
            raise host.HostError(
                "kernel %s can attach the program neither through a bpf_link (lacks %s) nor with %s: "
                "upgrade the kernel"
                % (
                    self.release,
                    self.missing(LINK_FEATURES),
                    self.missing(("allow_multi",)),
                )
            )
        return "multi"

    def as_dict(self):
        result = dict(self.present)
        result.update(
            rto_capped=self.rto_capped,
            synack_backoff_from_bpf=self.synack_backoff_from_bpf,
            syn_linear_timeouts=os.path.exists("/proc/sys/net/ipv4/tcp_syn_linear_timeouts"),
            release=self.release,
            version=".".join(str(part) for part in self.version),
        )
        return result

    def __repr__(self):
        return "KernelFeatures(%r, %r)" % (self.release, self.present)
