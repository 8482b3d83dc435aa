"""A Debian 12 guest with systemd as PID 1 under qemu, reached over SSH like a real managed host.

The guest boots the cached image (tests/vm/image.py) with -snapshot: every Guest starts from the
clean image, a reboot inside the guest keeps what this Guest changed, and nothing is written back.
qemu runs under `timeout` in its own process group; stop() kills the group in every outcome.
KVM is used only when a guest really runs under it (nested KVM often starts qemu but runs nothing),
else TCG. TCP_RTO_VM_ACCEL=kvm|tcg skips that probe.
"""

import os
import signal
import socket
import subprocess
import time

SSH_OPTIONS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=30",
    "-o",
    "ServerAliveInterval=15",
]
# A TCG guest on a busy host can miss the SSH banner deadline: connection failures (ssh's exit code
# 255 with one of these) are retried this many times.
SSH_ATTEMPTS = 5
CONNECTION_FAILURES = ("banner exchange", "Connection refused", "Connection timed out", "Connection reset", "closed by")
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"
# Bounds, not expectations: TCG boots in 35-80 s and reboots in 80-130 s on a busy 2-core host.
BOOT_TIMEOUT = 420
SESSION_TIMEOUT = 3600


class GuestError(Exception):
    pass


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _qemu(accel, image):
    return [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-m",
        "1024M",
        "-smp",
        "1",
        "-nographic",
        "-nodefaults",
        "-monitor",
        "none",
        "-kernel",
        os.path.join(image, "vmlinuz"),
        "-initrd",
        os.path.join(image, "initrd.img"),
    ]


def choose_accel(image, logdir):
    """kvm when a guest prints its kernel banner under KVM within a short bound, else tcg."""
    forced = os.environ.get("TCP_RTO_VM_ACCEL")
    if forced:
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    log = os.path.join(logdir, "kvm-probe.log")
    with open(log, "wb") as out:
        subprocess.run(
            ["timeout", "-k", "2", "15", *_qemu("kvm", image), "-serial", "stdio", "-no-reboot", "-append",
             "console=ttyS0 panic=-1 root=/dev/null"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    return "kvm" if b"Linux version" in open(log, "rb").read() else "tcg"


class Guest:
    def __init__(self, image, logdir, accel):
        self.image, self.logdir, self.accel = image, logdir, accel
        self.key = os.path.join(image, "id_ed25519")
        self.user = "ansible"
        self.port = _free_port()
        self.console = os.path.join(logdir, "console.log")
        self.control = os.path.join(logdir, "ssh-control")
        self.ansible_control = os.path.join(logdir, "cp")
        os.makedirs(self.ansible_control, exist_ok=True)
        self.proc = None

    def start(self):
        command = [
            "timeout",
            "-k",
            "10",
            str(SESSION_TIMEOUT),
            *_qemu(self.accel, self.image),
            "-append",
            KERNEL_CMDLINE,
            "-serial",
            "file:" + self.console,
            "-drive",
            "file=%s,if=virtio,format=raw" % os.path.join(self.image, "rootfs.img"),
            "-snapshot",
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:%d-:22" % self.port,
            "-device",
            "virtio-net-pci,netdev=net0,romfile=",
        ]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(self.logdir, "qemu.log"), "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self):
        """Kill qemu (and timeout) by process group; nothing of the guest is left running."""
        if self.proc is None:
            return
        self.close_connection()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def close_connection(self):
        """End the shared SSH connections (their master processes): ours and Ansible's."""
        ansible = [os.path.join(self.ansible_control, name) for name in os.listdir(self.ansible_control)]
        for control in [self.control, *ansible]:
            subprocess.run(
                ["ssh", "-o", "ControlPath=" + control, "-O", "exit", "127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False,
            )  # fmt: skip

    def ssh_command(self, command):
        # one connection shared by the calls (a TCG guest's key exchange is slow); stop() ends it
        shared = ["-o", "ControlMaster=auto", "-o", "ControlPath=" + self.control, "-o", "ControlPersist=300"]
        return ["ssh", *SSH_OPTIONS, *shared, "-i", self.key, "-p", str(self.port), "%s@127.0.0.1" % self.user, command]

    def ssh(self, command, check=True, timeout=300, input=None, attempts=SSH_ATTEMPTS):
        """Run command in the guest as the SSH user (prefix sudo for root), input on its stdin;
        -> CompletedProcess."""
        for _attempt in range(attempts):
            proc = subprocess.run(
                self.ssh_command(command),
                input=input if input is not None else "",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                universal_newlines=True,
                timeout=timeout,
                check=False,
            )
            if proc.returncode != 255 or not any(failure in proc.stderr for failure in CONNECTION_FAILURES):
                break
            time.sleep(5)
        if check and proc.returncode != 0:
            raise GuestError("%r failed (%d): %s%s" % (command, proc.returncode, proc.stdout, proc.stderr))
        return proc

    def root(self, command, check=True, timeout=300, input=None):
        return self.ssh("sudo sh -c %s" % _quote(command), check=check, timeout=timeout, input=input)

    def write(self, path, text, mode="0644"):
        """A file in the guest, owned by root."""
        self.root("cat > %s && chmod %s %s" % (path, mode, path), input=text)

    def wait_ssh(self, timeout=BOOT_TIMEOUT, not_boot=None):
        """Wait until SSH answers (on another boot than not_boot) -> boot id; GuestError with the
        console's tail when qemu exits or the bound passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GuestError("qemu exited (%d):\n%s" % (self.proc.returncode, self.console_tail()))
            try:
                proc = self.ssh("cat /proc/sys/kernel/random/boot_id", check=False, timeout=60, attempts=1)
            except subprocess.TimeoutExpired:
                continue
            boot = proc.stdout.strip()
            if proc.returncode == 0 and boot and boot != not_boot:
                return boot
            time.sleep(2)
        raise GuestError("no SSH within %d s:\n%s" % (timeout, self.console_tail()))

    def boot_id(self):
        return self.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def reboot(self):
        """systemctl reboot, then wait for SSH on the new boot -> its boot id."""
        before = self.boot_id()
        # from a timer, so that this SSH call returns before the connection goes
        self.root("systemd-run --no-block --on-active=1 systemctl reboot")
        self.close_connection()
        return self.wait_ssh(not_boot=before)

    def wait_system_running(self, timeout=BOOT_TIMEOUT):
        """`systemctl is-system-running --wait` -> its answer (running, degraded, ...)."""
        return self.ssh("systemctl is-system-running --wait", check=False, timeout=timeout).stdout.strip()

    def console_tail(self, lines=40):
        try:
            text = open(self.console, "rb").read().decode("utf-8", "replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def inventory(self, path, group="realhosts", name="vm"):
        """An INI inventory for ansible-playbook over SSH with become."""
        with open(path, "w") as handle:
            handle.write(
                "[%s]\n%s ansible_host=127.0.0.1 ansible_port=%d ansible_user=%s ansible_ssh_private_key_file=%s "
                "ansible_become=true ansible_python_interpreter=/usr/bin/python3 "
                "ansible_ssh_common_args='%s' ansible_control_path_dir=%s\n"
                % (group, name, self.port, self.user, self.key, " ".join(SSH_OPTIONS[:6]), self.ansible_control)
            )
        return path


def _quote(text):
    return "'" + text.replace("'", "'\\''") + "'"
