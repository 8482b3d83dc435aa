"""The real-host image: Debian 12 with systemd as PID 1, openssh-server, sudo and python3, built by
debootstrap from the Debian mirror this machine's apt uses (read from /etc/apt/sources.list*,
never written into the repo) and cached under .cache/vm/<key>/, where key hashes the recipe below:
a changed recipe builds a new image. No loop mount: the root file system is made with
`mkfs.ext4 -d`. The guest boots the image's own kernel and initrd, extracted next to it.

`PYTHONPATH=.cache/collections .venv/bin/python -m ansible_collections.netbpf.tcp_rto.tests.vm.image`
builds (or finds) the image and prints its directory.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from ansible_collections.netbpf.tcp_rto.tests.kernels import archive  # the kernel matrix's reader of apt sources

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(REPO, ".cache", "vm")

SUITE = "bookworm"
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "python3",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "iproute2",
]
USER = "ansible"
IMAGE_SIZE = "3G"
# Network: systemd-networkd with DHCP on qemu's user network, so network-online.target means
# something; a serial console for the boot log; no clean-up timers racing the tests.
NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
SUDOERS = "%s ALL=(ALL) NOPASSWD:ALL\n" % USER
FSTAB = "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n"
# Bump when the steps of build() change in a way the values above do not show.
RECIPE_VERSION = 1


def cache_key():
    recipe = json.dumps(
        [RECIPE_VERSION, SUITE, PACKAGES, USER, IMAGE_SIZE, NETWORK, SUDOERS, FSTAB], sort_keys=True
    ).encode()
    return hashlib.sha256(recipe).hexdigest()[:16]


def log(message):
    print("[vm image] " + message, file=sys.stderr, flush=True)


def _run(command, **kwargs):
    proc = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False, **kwargs
    )
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(command[:4]), proc.returncode, proc.stdout[-3000:]))
    return proc.stdout


def _write(path, text, mode=0o644):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def _chroot(rootfs, *command):
    return _run(["chroot", rootfs, *command], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C"))


def build(cache=CACHE):
    """-> the directory holding rootfs.img, vmlinuz, initrd.img and the SSH key id_ed25519."""
    final = os.path.join(cache, cache_key())
    if os.path.exists(os.path.join(final, "done")):
        return final
    for tool in ("debootstrap", "mkfs.ext4", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise RuntimeError("%s is not installed (scripts/setup-env installs it)" % tool)
    os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix="build-", dir=cache)
    try:
        rootfs = os.path.join(work, "rootfs")
        mirror, _security = archive.debian_mirrors()
        log("debootstrap %s (%s)" % (SUITE, ", ".join(PACKAGES)))
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(PACKAGES),
                "--keyring=" + archive.DEBIAN_KEYRING,
                SUITE,
                rootfs,
                mirror,
            ]
        )
        _configure(rootfs, work)
        boot = os.path.join(rootfs, "boot")
        kernel = [name for name in os.listdir(boot) if name.startswith("vmlinuz-")]
        initrd = [name for name in os.listdir(boot) if name.startswith("initrd.img-")]
        if len(kernel) != 1 or len(initrd) != 1:
            raise RuntimeError("expected one kernel and one initrd in /boot, found %s" % os.listdir(boot))
        shutil.copy(os.path.join(boot, kernel[0]), os.path.join(work, "vmlinuz"))
        shutil.copy(os.path.join(boot, initrd[0]), os.path.join(work, "initrd.img"))
        for mounted in ("proc", "sys", "dev/pts", "dev"):  # debootstrap may leave them mounted
            subprocess.call(["umount", "-l", os.path.join(rootfs, mounted)], stderr=subprocess.DEVNULL)
        log("mkfs.ext4 -d (%s)" % IMAGE_SIZE)
        _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", rootfs, os.path.join(work, "rootfs.img"), IMAGE_SIZE])
        shutil.rmtree(rootfs)
        open(os.path.join(work, "done"), "w").close()
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(work, final)
    finally:
        if os.path.exists(work):
            for mounted in ("proc", "sys", "dev/pts", "dev"):
                subprocess.call(["umount", "-l", os.path.join(work, "rootfs", mounted)], stderr=subprocess.DEVNULL)
            shutil.rmtree(work, ignore_errors=True)
    for old in os.listdir(cache):  # images of an earlier recipe
        if old != os.path.basename(final) and not old.startswith("build-"):
            shutil.rmtree(os.path.join(cache, old), ignore_errors=True)
    log("image ready in %s" % final)
    return final


def _configure(rootfs, work):
    etc = os.path.join(rootfs, "etc")
    _write(os.path.join(etc, "hostname"), "tcp-rto-vm\n")
    _write(os.path.join(etc, "hosts"), "127.0.0.1 localhost\n127.0.1.1 tcp-rto-vm\n")
    _write(os.path.join(etc, "fstab"), FSTAB)
    _write(os.path.join(etc, "systemd", "network", "80-dhcp.network"), NETWORK)
    _write(os.path.join(etc, "sudoers.d", "ansible"), SUDOERS, 0o440)
    # Every boot gets its own machine id (systemd makes it when the file is empty).
    _write(os.path.join(etc, "machine-id"), "")
    _chroot(rootfs, "systemctl", "enable", "systemd-networkd", "ssh")
    _chroot(rootfs, "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_reap.service")
    _chroot(rootfs, "useradd", "--create-home", "--shell", "/bin/bash", USER)
    key = os.path.join(work, "id_ed25519")
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tcp-rto-vm", "-f", key])
    ssh_dir = os.path.join(rootfs, "home", USER, ".ssh")
    os.makedirs(ssh_dir, mode=0o700)
    shutil.copy(key + ".pub", os.path.join(ssh_dir, "authorized_keys"))
    _chroot(rootfs, "chown", "-R", "%s:%s" % (USER, USER), "/home/%s/.ssh" % USER)
    _chroot(rootfs, "apt-get", "clean")


if __name__ == "__main__":
    print(build())
