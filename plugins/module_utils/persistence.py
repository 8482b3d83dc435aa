# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keeping an instance across reboots, which the kernel does not.

On the host: the instance's parameters in /etc/tcp_rto/<name>.json (the record), its object and
the collection's own stdlib code under /var/lib/tcp_rto/, and a systemd template unit
tcp-rto@.service enabled as tcp-rto@<name>.service, whose ExecStart runs that code on that record.
No Ansible, compiler or bpftool at boot. Every path lies under `root` ("/" but in tests).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import pkgutil
import shutil
import subprocess
import sys

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import fault

MODULE_UTILS = "ansible_collections.netbpf.tcp_rto.plugins.module_utils"
# The module_utils the restore imports, directly or not.
CODE_FILES = (
    "rto_program",
    "bpf_syscall",
    "bpf_object",
    "host",
    "probe",
    "instance",
    "apply",
    "coexistence",
    "drift",
    "reconcile",
    "persistence",
    "restore",
    "fault",
    "lock",
)
RECORD_FORMAT = 1
# Module parameters the record keeps: what reconcile.run needs to apply the instance again.
RECORDED = (
    "name",
    "cgroup",
    "rules",
    "rto_ms",
    "direction",
    "pin_dir",
    "mount_bpffs",
    "hz",
    "verify",
    "force_legacy_attach",
)
UNIT_TEMPLATE = "tcp-rto@.service"

UNIT_TEXT = """\
# Installed by the Ansible collection netbpf.tcp_rto: restores the instance named %i after a boot.
[Unit]
Description=TCP initial RTO instance %i (netbpf.tcp_rto)
Documentation=file://{record_dir}/%i.json
# cgroup2 and bpffs: restore mounts bpffs itself when the record says so (mount_bpffs).
After=local-fs.target sys-fs-cgroup.mount sys-fs-bpf.mount
Before=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={python} {script} %i

[Install]
WantedBy=multi-user.target
"""

SCRIPT_TEXT = """\
# Installed by the Ansible collection netbpf.tcp_rto: tcp-rto@.service runs this at boot.
import sys
sys.path.insert(0, {lib!r})
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import restore
sys.exit(restore.main(sys.argv[1:], root={root!r}))
"""


class RecordError(Exception):
    """The record is missing or not one this code wrote; the message says which and what to do."""


class Layout:
    """Where the files of persistence live under root."""

    def __init__(self, root="/"):
        self.root = root
        self.record_dir = os.path.join(root, "etc", "tcp_rto")
        self.lib_dir = os.path.join(root, "var", "lib", "tcp_rto")
        self.code_dir = os.path.join(self.lib_dir, "lib", *MODULE_UTILS.split("."))
        self.script = os.path.join(self.lib_dir, "restore.py")
        self.unit_dir = os.path.join(root, "etc", "systemd", "system")
        self.unit = os.path.join(self.unit_dir, UNIT_TEMPLATE)

    def record(self, name):
        return os.path.join(self.record_dir, name + ".json")

    def object(self, name):
        return os.path.join(self.lib_dir, "objects", name + ".bpf.o")

    def wants_link(self, name):
        return os.path.join(self.unit_dir, "multi-user.target.wants", "tcp-rto@%s.service" % name)

    def recorded_names(self):
        if not os.path.isdir(self.record_dir):
            return []
        # Instance names have no dot, so <name>.previous.json (the role's history) is no record.
        return sorted(
            entry[:-5] for entry in os.listdir(self.record_dir) if entry.endswith(".json") and "." not in entry[:-5]
        )


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def _write(path, content, mode, check_mode):
    """Write content atomically when it differs; -> whether it differed."""
    if _read(path) == content and (os.stat(path).st_mode & 0o777) == mode:
        return False
    if not check_mode:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        temporary = _temporary(path)
        with open(temporary, "wb") as handle:
            handle.write(content)
        os.chmod(temporary, mode)
        fault.point("persist_temp_file_written")
        os.rename(temporary, path)
    return True


def _temporary(path):
    """Where _write puts the content before renaming it over path: a killed run may leave it."""
    return path + ".tmp"


def _symlink(target, link, check_mode):
    if os.path.islink(link) and os.readlink(link) == target:
        return False
    if not check_mode:
        if not os.path.isdir(os.path.dirname(link)):
            os.makedirs(os.path.dirname(link), 0o755)
        _remove(link, False)
        os.symlink(target, link)
    return True


def _remove(path, check_mode):
    if not os.path.lexists(path):
        return False
    if not check_mode:
        os.unlink(path)
    return True


def _code(module):
    """The source of one of CODE_FILES: through the package loader (Ansible runs the module from a
    zip), or from beside this file when the package is a plain directory without __init__.py,
    whose loader reads no data."""
    source = pkgutil.get_data(MODULE_UTILS, module + ".py")
    if source is None:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), module + ".py"), "rb") as handle:
            source = handle.read()
    return source


def record_content(params, object_sha256, object_path):
    record = {key: params[key] for key in RECORDED}
    record.update(format=RECORD_FORMAT, src=object_path, object_sha256=object_sha256)
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")


def install(params, object_path, object_sha256, root="/", python=None, check_mode=False):
    """Record the instance and set up its boot-time restore; -> list of what changed."""
    layout = Layout(root)
    name = params["name"]
    changes = []
    with open(object_path, "rb") as handle:
        if _write(layout.object(name), handle.read(), 0o644, check_mode):
            changes.append("copy object to %s" % layout.object(name))
    fault.point("persist_object_copied")
    code_changed = False
    for module in CODE_FILES:
        code_changed |= _write(
            os.path.join(layout.code_dir, module + ".py"),
            _code(module),
            0o644,
            check_mode,
        )
    code_changed |= _write(
        layout.script,
        SCRIPT_TEXT.format(lib=os.path.join(layout.lib_dir, "lib"), root=root).encode("utf-8"),
        0o644,
        check_mode,
    )
    if code_changed:
        changes.append("copy restore code to %s" % layout.lib_dir)
    fault.point("persist_code_copied")
    unit = UNIT_TEXT.format(
        record_dir="/etc/tcp_rto" if root == "/" else layout.record_dir,
        python=python or sys.executable,
        script=layout.script,
    )
    if _write(layout.unit, unit.encode("utf-8"), 0o644, check_mode):
        changes.append("install %s" % layout.unit)
    fault.point("persist_unit_written")
    if _write(layout.record(name), record_content(params, object_sha256, layout.object(name)), 0o644, check_mode):
        changes.append("record %s" % layout.record(name))
    fault.point("persist_record_written")
    if _symlink(os.path.join("..", UNIT_TEMPLATE), layout.wants_link(name), check_mode):
        changes.append("enable tcp-rto@%s.service" % name)
    fault.point("persist_enabled")
    if changes and not check_mode:
        _reload_systemd(root)
    return changes


def remove(name, root="/", check_mode=False):
    """Forget the instance: record, object, unit enablement, and the files a killed install left;
    the shared files once no instance has a record (also when an earlier remove was killed after
    the record went)."""
    layout = Layout(root)
    changes = []
    for path in (layout.wants_link(name), layout.record(name), layout.object(name)):
        for leftover in (path, _temporary(path)):
            if _remove(leftover, check_mode):
                changes.append("remove %s" % leftover)
                fault.point("unpersist_first_file_removed")
    if not [other for other in layout.recorded_names() if other != name]:
        for path in (layout.unit, _temporary(layout.unit)):
            if _remove(path, check_mode):
                changes.append("remove %s" % path)
                fault.point("unpersist_unit_removed")
        if os.path.isdir(layout.lib_dir):
            changes.append("remove %s" % layout.lib_dir)
            if not check_mode:
                shutil.rmtree(layout.lib_dir)
        for directory in (layout.record_dir, os.path.dirname(layout.wants_link(name))):
            if not check_mode and os.path.isdir(directory) and not os.listdir(directory):
                os.rmdir(directory)
    if changes and not check_mode:
        _reload_systemd(root)
    return changes


def read_record(name, root="/"):
    """The module parameters recorded for name; RecordError when missing or not valid."""
    path = Layout(root).record(name)
    raw = _read(path)
    if raw is None:
        raise RecordError(
            "no record %s: the instance %s is not persistent on this host; apply it with "
            "persistent: true, or disable tcp-rto@%s.service" % (path, name, name)
        )
    try:
        record = json.loads(raw.decode("utf-8"))
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise ValueError("format is not %d" % RECORD_FORMAT)
        missing = [key for key in (*RECORDED, "src") if key not in record]
        if missing:
            raise ValueError("missing %s" % ", ".join(missing))
        if record["name"] != name:
            raise ValueError("it names the instance %r" % record["name"])
    except ValueError as exc:
        raise RecordError(
            "record %s is not valid (%s): it was edited or damaged; apply the instance again with "
            "Ansible to rewrite it" % (path, exc)
        )
    return {key: record[key] for key in (*RECORDED, "src")}


def _reload_systemd(root):
    """Tell a running systemd about unit changes (nothing to do in a test root or without systemd)."""
    if root == "/" and os.path.isdir("/run/systemd/system"):
        # module_utils here are plain stdlib Python (the boot-time restore imports them without
        # Ansible): no AnsibleModule, so no run_command.
        subprocess.call(["systemctl", "daemon-reload"])  # pylint: disable=ansible-bad-function
