# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Discovering the host: kernel release (its features are probed in features.py, its HZ in
hz.py, its cgroup v2 in cgroups.py), filesystems, bpffs, privileges, sysctls.

Plain stdlib: the boot-time restore imports it without Ansible. Every function takes the paths it
reads as parameters with the real ones as defaults, so that tests can point them at other files.
Every HostError says what is wrong and what to do about it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import os
import platform
import re
import resource
from typing import Optional, Tuple

# Filesystem magic numbers (include/uapi/linux/magic.h): statfs(2) f_type.
CGROUP2_SUPER_MAGIC = 0x63677270
CGROUP_SUPER_MAGIC = 0x27E0EB  # cgroup v1
BPF_FS_MAGIC = 0xCAFE4A11
_FS_NAMES = {
    CGROUP2_SUPER_MAGIC: "cgroup2",
    CGROUP_SUPER_MAGIC: "cgroup (v1)",
    BPF_FS_MAGIC: "bpf",
    0x01021994: "tmpfs",
    0x62656572: "sysfs",
    0x9FA0: "proc",
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x794C7630: "overlayfs",
    0x1373: "devfs",
    0x01021997: "v9fs",
}

# The program reads bpf_sock_ops.is_fullsock and .state, both added in 4.16; the sock_ops program
# type itself dates from 4.13. For messages: features.py probes the kernel for them.
MIN_KERNEL = (4, 16)
MIN_KERNEL_REASON = (
    "the program reads bpf_sock_ops.is_fullsock and bpf_sock_ops.state, added in "
    "Linux 4.16 (sock_ops programs themselves date from 4.13)"
)

DEFAULT_PIN_ROOT = "/sys/fs/bpf"
DEFAULT_PIN_DIR = DEFAULT_PIN_ROOT + "/tcp_rto"

# Capability bits (include/uapi/linux/capability.h).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39

_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_RELATIME = 1 << 21


class HostError(Exception):
    """The host cannot run the program as asked; the message says what is wrong and what to do."""


# --- kernel release ------------------------------------------------------------------------------

_RELEASE_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def kernel_release():
    return platform.release()


def parse_release(release: str) -> Tuple[int, int, int]:
    """'6.18.44-fc-v657' -> (6, 18, 44); '4.9' -> (4, 9, 0); '6.1.0-rc3' -> (6, 1, 0)."""
    match = _RELEASE_RE.match(release or "")
    if not match:
        raise HostError(
            "cannot read a kernel version from the release string %r: expected "
            "'MAJOR.MINOR[.PATCH]...' as printed by uname -r" % (release,)
        )
    return tuple(int(part or 0) for part in match.groups())


# --- statfs and mount through libc --------------------------------------------------------------

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        _libc.statfs.restype = ctypes.c_int
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        _libc.mount.restype = ctypes.c_int
        _libc.name_to_handle_at.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        _libc.name_to_handle_at.restype = ctypes.c_int
    return _libc


# struct statfs starts with f_type (__fsword_t: a long, except unsigned int on s390x); 256 bytes
# covers the whole struct on every architecture.
_F_TYPE = ctypes.c_uint if platform.machine() == "s390x" else ctypes.c_ulong


def fs_type(path):
    """statfs(2) f_type of the filesystem holding path (os.statvfs has no f_type). OSError on failure."""
    buf = ctypes.create_string_buffer(256)
    if libc().statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return _F_TYPE.from_buffer(buf).value & 0xFFFFFFFF


def fs_name(magic):
    return _FS_NAMES.get(magic, "0x%x" % magic)


def _mount(source, target, fstype, flags, data):
    if (
        libc().mount(
            os.fsencode(source), os.fsencode(target), os.fsencode(fstype), flags, os.fsencode(data) if data else None
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def is_within(path, root):
    """Whether path is root or lies below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


# --- bpffs --------------------------------------------------------------------------------------


def is_bpffs(path: str) -> bool:
    """True when path (followed through symlinks) is on a bpffs; False when it is elsewhere or missing."""
    try:
        return fs_type(path) == BPF_FS_MAGIC
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise HostError("cannot statfs %s: %s" % (path, exc))


def _deepest_existing(path):
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def ensure_bpffs(
    pin_dir: str = DEFAULT_PIN_DIR, mount: bool = True, check_mode: bool = False, pin_root: str = DEFAULT_PIN_ROOT
) -> bool:
    """Make sure pin_dir (which need not exist yet) lies on a bpffs. -> True when bpffs was (or, in
    check mode, would be) mounted at pin_root, False when it was there already; HostError otherwise.

    pin_dir is resolved through symlinks and '..' first: a symlink out of bpffs is refused. When the
    pin root (/sys/fs/bpf) is not mounted and pin_dir lies under it, bpffs is mounted there with
    mount(2) (no mount binary needed) if mount is True.
    """
    real = os.path.realpath(pin_dir)
    existing = _deepest_existing(real)
    if is_bpffs(existing):
        return False
    real_root = os.path.realpath(pin_root)
    how = "mount -t bpf bpf %s (or enable systemd's sys-fs-bpf.mount)" % pin_root
    if not is_within(real, real_root):
        raise HostError(
            "pin_dir %s%s is on a %s filesystem, not bpffs: choose a pin_dir under a bpffs "
            "mount (default %s) or mount one at its parent: mount -t bpf bpf <dir>"
            % (pin_dir, "" if real == pin_dir else " (resolves to %s)" % real, _fs_name_of(existing), DEFAULT_PIN_DIR)
        )
    if not os.path.isdir(real_root):
        raise HostError(
            "%s does not exist, so bpffs cannot be mounted there (a kernel without "
            "CONFIG_BPF_SYSCALL has no /sys/fs/bpf): use a kernel with BPF support, or a "
            "pin_dir under another bpffs mount" % pin_root
        )
    if existing != real_root:
        raise HostError(
            "%s is not a bpffs mount, and %s lies on %s below it: remove what is there and %s"
            % (pin_root, existing, _fs_name_of(existing), how)
        )
    if not mount:
        raise HostError("bpffs is not mounted at %s, where pins live: %s, or let the module mount it" % (pin_root, how))
    if check_mode:
        return True
    try:
        _mount("bpf", real_root, "bpf", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RELATIME, "mode=700")
    except OSError as exc:
        hint = " (mounting needs CAP_SYS_ADMIN)" if exc.errno == errno.EPERM else ""
        raise HostError("cannot mount bpffs at %s: %s%s; mount it yourself: %s" % (pin_root, exc, hint, how))
    # Check again: the new mount might hold a symlink on the way to pin_dir.
    real = os.path.realpath(pin_dir)
    if not is_bpffs(_deepest_existing(real)):
        raise HostError(
            "pin_dir %s resolves to %s, outside the bpffs mounted at %s: remove the symlink "
            "or choose another pin_dir" % (pin_dir, real, pin_root)
        )
    return True


def check_pin_path(pin_dir: str, name: str) -> None:
    """HostError when a symlink on bpffs lies on the way to the instance's pins: a component of
    pin_dir, the instance directory <pin_dir>/<name>, or an entry in it. Followed, such a link
    would make the module read, replace or unpin (state absent) the pins of another program."""
    instance_dir = os.path.join(pin_dir, name)
    parts = instance_dir.split("/")
    paths = ["/".join(parts[: count + 1]) or "/" for count in range(len(parts)) if parts[count]]
    if os.path.isdir(instance_dir) and not os.path.islink(instance_dir):
        paths += [os.path.join(instance_dir, entry) for entry in sorted(os.listdir(instance_dir))]
    for path in paths:
        if os.path.islink(path) and is_bpffs(os.path.dirname(path) or "."):
            raise HostError(
                "%s is a symlink on bpffs (to %s): the module does not follow symlinks in bpffs, where "
                "they could lead it to another program's pins; remove the symlink or give the real "
                "directory as pin_dir" % (path, os.readlink(path))
            )


def _fs_name_of(path):
    try:
        return fs_name(fs_type(path))
    except OSError:
        return "an unknown"


# --- privileges and limits ----------------------------------------------------------------------


def effective_capabilities(status: str = "/proc/self/status") -> Optional[int]:
    """CapEff of this process as an int, or None when it cannot be read."""
    try:
        with open(status) as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def require_root(cap_bpf: bool, status: str = "/proc/self/status") -> None:
    """HostError unless this process may load and attach the program: CAP_NET_ADMIN plus CAP_BPF
    (where the kernel has it: cap_bpf, probed) or CAP_SYS_ADMIN. Root normally has all of them; a
    container may have dropped some."""
    caps = effective_capabilities(status)
    if caps is None:
        if os.geteuid() == 0:
            return
        missing = ["root"]
    else:

        def has(cap):
            return bool(caps & (1 << cap))

        missing = []
        if not has(CAP_NET_ADMIN):
            missing.append("CAP_NET_ADMIN")
        if not (has(CAP_SYS_ADMIN) or (cap_bpf and has(CAP_BPF))):
            missing.append("CAP_BPF or CAP_SYS_ADMIN" if cap_bpf else "CAP_SYS_ADMIN")
        if not missing:
            return
    raise HostError(
        "insufficient privileges (uid %d, missing %s): loading and attaching a BPF sock_ops "
        "program needs root, or CAP_BPF + CAP_NET_ADMIN (CAP_SYS_ADMIN + CAP_NET_ADMIN before "
        "Linux 5.8); run with become: true" % (os.geteuid(), ", ".join(missing))
    )


def raise_memlock(required=False):
    """Raise RLIMIT_MEMLOCK to infinity (kernels before 5.11 charge BPF maps and programs to it).

    -> True when the limit is now infinite. Without CAP_SYS_RESOURCE the hard limit cannot be raised:
    the soft limit goes up to the hard one and the result is False, or HostError when required.
    """
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == infinity:
        return True
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (infinity, infinity))
        return True
    except (ValueError, OSError):
        pass
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
    if hard == infinity:
        return True
    if required:
        raise HostError(
            "RLIMIT_MEMLOCK is limited to %d KiB and cannot be raised (no CAP_SYS_RESOURCE); this "
            "kernel charges BPF memory to it: run as full root, or raise the limit for the "
            "service (ulimit -l unlimited, LimitMEMLOCK=infinity)" % (hard // 1024)
        )
    return False


# --- sysctls ---------------------------------------------------------------------


def read_sysctl(name, default=None, proc_sys="/proc/sys"):
    """net.ipv4.tcp_syn_retries -> int (or the stripped text when not a number); default when the
    file does not exist (an older kernel) or cannot be read."""
    path = os.path.join(proc_sys, *name.split("."))
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError:
        return default
    try:
        return int(text)
    except ValueError:
        return text
