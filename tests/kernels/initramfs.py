"""The guest's initramfs: a cached cpio of the userland (busybox-static and Debian 12's Python,
extracted from their packages, never installed here), and a second cpio with the project, which
the kernel unpacks over the first.
"""

import hashlib
import os
import shutil
import stat
import tempfile

from archive import CACHE, REPO, log, run
from steps import GUEST_ROOT

HERE = os.path.dirname(os.path.abspath(__file__))
OBJECT = os.path.join(REPO, "plugins", "plugin_utils", "tcp_initial_rto.bpf.o")  # the shipped object
GUEST_FILES = ["guest_job.py", "guest_kernel.py", "netem.py", "rtnetlink.py", "steps.py", "veth.py"]

# The guest userland: Debian 12's Python and what its interpreter and the stdlib modules the
# module imports (ctypes, hashlib, zipfile ...) link against.
GUEST_SUITE = "bookworm"
GUEST_PYTHON = "python3.11"
GUEST_PACKAGES = [
    "busybox-static",
    "libc6",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libffi8",
    "libssl3",
    "libexpat1",
    "zlib1g",
    "libbz2-1.0",
    "liblzma5",
]
GUEST_PRUNE = [
    "usr/share",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/x86_64-linux-gnu/engines-3",
    "usr/lib/x86_64-linux-gnu/ossl-modules",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/distutils",
]
GUEST_FORMAT = 1  # bump when the way the base image is built changes


class Cpio:
    """A newc cpio archive, as the kernel unpacks into its rootfs."""

    def __init__(self, handle):
        self.handle = handle
        self.ino = 0

    def add(self, name, mode, data=b"", mtime=0, rdev=(0, 0)):
        self.ino += 1
        name_bytes = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, int(mtime), len(data), 0, 0, rdev[0], rdev[1], len(name_bytes), 0)
        header = b"070701" + b"".join(b"%08x" % value for value in fields) + name_bytes
        self.handle.write(header + b"\0" * (-len(header) % 4) + data + b"\0" * (-len(data) % 4))

    def add_tree(self, root):
        for directory, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(directory, name)
                info = os.lstat(path)
                rel = os.path.relpath(path, root)
                if stat.S_ISLNK(info.st_mode):
                    self.add(rel, info.st_mode, os.readlink(path).encode(), info.st_mtime)
                elif stat.S_ISDIR(info.st_mode):
                    self.add(rel, info.st_mode, mtime=info.st_mtime)
                elif stat.S_ISREG(info.st_mode):
                    with open(path, "rb") as handle:
                        self.add(rel, info.st_mode, handle.read(), info.st_mtime)

    def close(self):
        self.add("TRAILER!!!", 0)
        self.handle.write(b"\0" * (-self.handle.tell() % 512))


def guest_base(apt, suites_ready):
    """The cached cpio of the guest userland; built from Debian packages when missing."""
    key = hashlib.sha256(repr((GUEST_SUITE, GUEST_PACKAGES, GUEST_PRUNE, GUEST_FORMAT)).encode()).hexdigest()[:16]
    path = os.path.join(CACHE, "guest-%s.cpio" % key)
    if os.path.exists(path):
        return path
    suites_ready()
    log("building the guest userland from %s packages" % GUEST_SUITE)
    work = tempfile.mkdtemp(dir=CACHE)
    try:
        debs = apt.download(["%s/%s" % (name, GUEST_SUITE) for name in GUEST_PACKAGES], work)
        root = os.path.join(work, "root")
        for deb in debs:
            run(["dpkg-deb", "-x", deb, root])
        for rel in GUEST_PRUNE:
            shutil.rmtree(os.path.join(root, rel), ignore_errors=True)
        for rel in ("sbin", "usr/sbin", "proc", "sys", "dev", "tmp", "root", "boot", "etc"):
            os.makedirs(os.path.join(root, rel), exist_ok=True)
        os.symlink(GUEST_PYTHON, os.path.join(root, "usr/bin/python3"))
        _compile_stdlib(root)
        with open(path + ".tmp", "wb") as handle:
            archive = Cpio(handle)
            archive.add_tree(root)
            archive.close()
        os.rename(path + ".tmp", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _compile_stdlib(root):
    """Byte-compile the guest's stdlib with the guest's own interpreter (run here through its own
    ld.so), so that the emulated CPU does not compile it at every module run."""
    libs = "%s/lib/x86_64-linux-gnu:%s/usr/lib/x86_64-linux-gnu" % (root, root)
    env = dict(PATH=os.environ.get("PATH", "/usr/bin:/bin"), PYTHONHOME=root + "/usr")
    run(
        [
            root + "/lib64/ld-linux-x86-64.so.2",
            "--library-path",
            libs,
            root + "/usr/bin/" + GUEST_PYTHON,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            root,
            "-p",
            "/",
            root + "/usr/lib/" + GUEST_PYTHON,
        ],
        env=env,
    )


def project_cpio(path, payloads, kernels):
    """The second cpio: /init, the job, the payloads, the shipped object, and per kernel its config
    in /boot (where the module reads CONFIG_HZ on a Debian host) and its sock_diag modules."""

    def read(*parts):
        with open(os.path.join(*parts), "rb") as handle:
            return handle.read()

    guest = GUEST_ROOT.lstrip("/")  # archive paths are relative
    # init is a busybox script; its interpreter line is added here (no busybox outside the guest).
    files = {
        "init": (0o755, b"#!/bin/busybox sh\n" + read(HERE, "init")),
        guest + "/tcp_initial_rto.bpf.o": (0o644, read(OBJECT)),
    }
    for name in GUEST_FILES:
        files[guest + "/" + name] = (0o644, read(HERE, name))
    utils = os.path.join(REPO, "plugins", "module_utils")
    for name in os.listdir(utils):
        if name.endswith(".py"):
            files[guest + "/ansible_collections/netbpf/tcp_rto/plugins/module_utils/" + name] = (
                0o644,
                read(utils, name),
            )
    for step, data in payloads.items():
        files[guest + "/payloads/" + step + ".py"] = (0o755, data)
    for kernel in kernels:
        files["boot/config-" + kernel["release"]] = (0o644, read(CACHE, kernel["key"], "config"))
        modules = "lib/modules/" + kernel["release"]
        files[modules + "/load"] = (0o644, "".join(name + "\n" for name in kernel["modules"]).encode())
        for name in kernel["modules"]:
            files[modules + "/" + name] = (0o644, read(CACHE, kernel["key"], name))
    with open(path, "wb") as handle:
        archive = Cpio(handle)
        archive.add("dev", stat.S_IFDIR | 0o755)
        archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        made = set()
        for name in sorted(files):
            parts = name.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    archive.add(directory, stat.S_IFDIR | 0o755)
                    made.add(directory)
            mode, data = files[name]
            archive.add(name, stat.S_IFREG | mode, data)
        archive.close()
