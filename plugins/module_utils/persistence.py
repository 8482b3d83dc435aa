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

import contextlib
import errno
import hashlib
import json
import os
import pkgutil
import shutil
import stat
import subprocess
import sys
import tempfile

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import fault, lock, service_unit

MODULE_UTILS = "ansible_collections.netbpf.tcp_rto.plugins.module_utils"
# The module_utils the restore imports, directly or not.
CODE_FILES = (
    "rto_program",
    "bpf_syscall",
    "bpf_object",
    "host",
    "features",
    "probe",
    "instance",
    "telemetry",
    "apply",
    "coexistence",
    "drift",
    "reconcile",
    "persistence",
    "restore",
    "fault",
    "lock",
    "service_unit",
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
    "unit",
)
# Keys a record of an earlier version may lack, and what they meant there.
ADDED_KEYS = {"unit": None}
UNIT_TEMPLATE = "tcp-rto@.service"
UNIT_INSTANCE = "tcp-rto@%s.service"
# Interpreters the boot unit may run as root, best first: the distribution's own Python 3 (whose
# path survives upgrades of the minor version), then the one running now.
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/libexec/platform-python")

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
ExecStart={python} -I {script} %i

[Install]
WantedBy=multi-user.target
"""

SCRIPT_TEXT = """\
# Installed by the Ansible collection netbpf.tcp_rto: tcp-rto@.service runs this at boot.
import sys
sys.dont_write_bytecode = True  # /var/lib/tcp_rto holds what the collection wrote, nothing else
sys.path.insert(0, {lib!r})
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import restore
sys.exit(restore.main(sys.argv[1:], root={root!r}))
"""


class RecordError(Exception):
    """The record is missing or not one this code wrote; the message says which and what to do."""


class UnsafePath(RecordError):
    """A path of persistence is a symlink, not a regular file or directory, or writable by others."""


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

    def owns(self, path):
        """Whether path lies in a directory only the collection writes to."""
        return any(path == mine or path.startswith(mine + os.sep) for mine in (self.record_dir, self.lib_dir))

    def record(self, name):
        return os.path.join(self.record_dir, name + ".json")

    def object(self, name):
        return os.path.join(self.lib_dir, "objects", name + ".bpf.o")

    def wants_link(self, name):
        return os.path.join(self.unit_dir, "multi-user.target.wants", "tcp-rto@%s.service" % name)

    def dropin(self, unit, name):
        """The drop-in of unit that attaches the instance name at every start of the unit."""
        return os.path.join(service_unit.dropin_dir(self.unit_dir, unit), service_unit.DROPIN_NAME % name)

    def dropins(self, name):
        """The drop-ins of name, of whatever unit (an instance that moved leaves the old one behind)."""
        wanted = service_unit.DROPIN_NAME % name
        if not os.path.isdir(self.unit_dir):
            return []
        return sorted(
            os.path.join(self.unit_dir, entry, wanted)
            for entry in os.listdir(self.unit_dir)
            if entry.endswith(".service.d") and os.path.lexists(os.path.join(self.unit_dir, entry, wanted))
        )

    def recorded_names(self):
        if not os.path.isdir(self.record_dir):
            return []
        # Instance names have no dot, so <name>.previous.json (the role's history) is no record.
        return sorted(
            entry[:-5] for entry in os.listdir(self.record_dir) if entry.endswith(".json") and "." not in entry[:-5]
        )


def _refuse_symlink(path):
    raise UnsafePath(
        "%s is a symlink (to %s): the collection reads and writes only real files and directories there, "
        "so that nothing it writes or the boot-time restore runs can be redirected; remove the symlink "
        "(and find out who made it), then run again" % (path, os.readlink(path))
    )


def _check_dirs(layout, directory, create=False):
    """Every component of directory below layout.root must be a real directory (not a symlink);
    the collection's own ones (under record_dir, lib_dir) also owned by this user and writable by
    no one else. Missing ones are made with mode 0755 whatever the umask when create is True."""
    path = layout.root
    if create and not os.path.isdir(path):
        os.makedirs(path, 0o755, exist_ok=True)
    for part in os.path.relpath(directory, layout.root).split(os.sep):
        path = os.path.join(path, part)
        try:
            status = os.lstat(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            if not create:
                return
            try:
                os.mkdir(path, 0o755)
                os.chmod(path, 0o755)  # the umask may have taken bits away
                continue
            except OSError as exc:
                if exc.errno != errno.EEXIST:  # another instance's run made it meanwhile: check it below
                    raise
            status = os.lstat(path)
        if stat.S_ISLNK(status.st_mode):
            _refuse_symlink(path)
        if not stat.S_ISDIR(status.st_mode):
            raise UnsafePath("%s is not a directory: remove it, then run again" % path)
        if layout.owns(path) and (status.st_uid != os.geteuid() or status.st_mode & 0o022):
            raise UnsafePath(
                "%s (owner uid %d, mode %04o) could be changed by another user than uid %d, and the boot-time "
                "restore runs what it holds: chown %d %s && chmod 755 %s, then run again"
                % (path, status.st_uid, status.st_mode & 0o7777, os.geteuid(), os.geteuid(), path, path)
            )


def _read(path):
    """The content of the regular file at path, None when missing; UnsafePath for a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        if exc.errno == errno.ELOOP:
            _refuse_symlink(path)
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath("%s is not a regular file: remove it, then run again" % path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _write(layout, path, content, mode, check_mode):
    """Write content atomically (a new file renamed over path) when it, the mode or the owner
    differs; -> whether anything differed."""
    directory = os.path.dirname(path)
    _check_dirs(layout, directory, create=not check_mode)
    if _read(path) == content:
        status = os.lstat(path)
        if status.st_mode & 0o7777 == mode and status.st_uid == os.geteuid():
            return False
    if not check_mode:
        fd, temporary = tempfile.mkstemp(
            dir=directory, prefix=_TEMPORARY_PREFIX % os.path.basename(path), suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                os.fchmod(handle.fileno(), mode)
                handle.flush()
                os.fsync(handle.fileno())  # else a crash after the rename can leave an empty file
            fault.point("persist_temp_file_written")
            os.rename(temporary, path)
            _fsync_directory(directory)
        except BaseException:
            _remove_quietly(temporary)
            raise
    return True


def _fsync_directory(directory):
    """Make a rename in directory durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# _write's new file before it is renamed over the real one; a killed run may leave it behind.
_TEMPORARY_PREFIX = ".%s."


def _temporaries(path):
    """The files a killed _write of path left in its directory."""
    directory, prefix = os.path.dirname(path), _TEMPORARY_PREFIX % os.path.basename(path)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return [
        os.path.join(directory, name) for name in sorted(names) if name.startswith(prefix) and name.endswith(".tmp")
    ]


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _symlink(layout, target, link, check_mode):
    _check_dirs(layout, os.path.dirname(link), create=not check_mode)
    if os.path.islink(link) and os.readlink(link) == target:
        return False
    if not check_mode:
        _remove(layout, link, False)
        os.symlink(target, link)
    return True


def _remove(layout, path, check_mode):
    _check_dirs(layout, os.path.dirname(path))
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
    record = {key: params.get(key) for key in RECORDED}
    record.update(format=RECORD_FORMAT, src=object_path, object_sha256=object_sha256)
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")


def check_paths(name, root="/"):
    """UnsafePath for what install() or remove() would refuse, checked before the kernel is touched:
    a symlink (or a directory where a file belongs) at a file of name or at a directory above it."""
    layout = Layout(root)
    code = [os.path.join(layout.code_dir, module + ".py") for module in CODE_FILES]
    for path in [layout.record(name), layout.object(name), layout.script, layout.unit, *code, *layout.dropins(name)]:
        _check_dirs(layout, os.path.dirname(path))
        if os.path.islink(path):
            _refuse_symlink(path)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise UnsafePath("%s is not a regular file: remove it, then run again" % path)
    _check_dirs(layout, os.path.dirname(layout.wants_link(name)))  # the link itself is a symlink


@contextlib.contextmanager
def _persistence_locked(root, check_mode):
    """Hold the persistence lock (not in check mode, which only reads): the last instance's remove
    takes the shared files, which must not happen while another instance installs."""
    if check_mode:
        yield
        return
    with lock.persistence_lock(root) as held:
        held.remove_file()  # on release: the lock guards nothing between runs
        yield


def install(params, object_path, object_sha256, root="/", python=None, check_mode=False, systemd=None):
    """Record the instance and set up its boot-time restore; -> list of what changed. The unit is
    started afterwards, outside the instance lock: start_unit()."""
    with _persistence_locked(root, check_mode):
        return _install(params, object_path, object_sha256, root, python, check_mode, systemd)


def _install(params, object_path, object_sha256, root, python, check_mode, systemd):
    layout = Layout(root)
    systemd = systemd or Systemd(root)
    name = params["name"]
    changes = []
    # What a killed install of this instance left (the instance lock keeps other runs of it out;
    # the shared unit and code files' leftovers go with the last instance's remove).
    for leftover in _temporaries(layout.object(name)) + _temporaries(layout.record(name)):
        if _remove(layout, leftover, check_mode):
            changes.append("remove %s" % leftover)
    with open(object_path, "rb") as handle:
        if _write(layout, layout.object(name), handle.read(), 0o644, check_mode):
            changes.append("copy object to %s" % layout.object(name))
    fault.point("persist_object_copied")
    code_changed = False
    for module in CODE_FILES:
        code_changed |= _write(
            layout,
            os.path.join(layout.code_dir, module + ".py"),
            _code(module),
            0o644,
            check_mode,
        )
    code_changed |= _write(
        layout,
        layout.script,
        SCRIPT_TEXT.format(lib=os.path.join(layout.lib_dir, "lib"), root=root).encode("utf-8"),
        0o644,
        check_mode,
    )
    if code_changed:
        changes.append("copy restore code to %s" % layout.lib_dir)
    fault.point("persist_code_copied")
    python_path = python or boot_python()
    record_path = os.path.join("/etc/tcp_rto" if root == "/" else layout.record_dir, name + ".json")
    unit_text = UNIT_TEXT.format(
        record_dir="/etc/tcp_rto" if root == "/" else layout.record_dir, python=python_path, script=layout.script
    )
    if _write(layout, layout.unit, unit_text.encode("utf-8"), 0o644, check_mode):
        changes.append("install %s" % layout.unit)
    fault.point("persist_unit_written")
    if _write(
        layout, layout.record(name), record_content(params, object_sha256, layout.object(name)), 0o644, check_mode
    ):
        changes.append("record %s" % layout.record(name))
    fault.point("persist_record_written")
    unit = params.get("unit")
    for dropin in layout.dropins(name):
        if (unit is None or dropin != layout.dropin(unit, name)) and _remove(layout, dropin, check_mode):
            changes.append("remove %s" % dropin)
    if unit is None:
        if _symlink(layout, os.path.join("..", UNIT_TEMPLATE), layout.wants_link(name), check_mode):
            changes.append("enable tcp-rto@%s.service" % name)
    else:
        # the unit's own starts attach the instance: no boot unit of its own
        changes.extend(systemd.stop(name, check_mode))
        if _remove(layout, layout.wants_link(name), check_mode):
            changes.append("disable tcp-rto@%s.service" % name)
        text = service_unit.dropin_text(name, unit, python_path, layout.script, record_path)
        if _write(layout, layout.dropin(unit, name), text.encode("utf-8"), 0o644, check_mode):
            changes.append("install %s (attaches at every start of %s)" % (layout.dropin(unit, name), unit))
    fault.point("persist_enabled")
    if changes and not check_mode:
        systemd.reload()
    return changes


def remove(name, root="/", check_mode=False, systemd=None):
    """Forget the instance: its unit stopped (it has no ExecStop: the kernel keeps the instance) and
    cleared of a failed state, record, object, unit enablement, and the files a killed install left;
    the shared files once no instance has a record (also when an earlier remove was killed after
    the record went)."""
    with _persistence_locked(root, check_mode):
        return _remove_instance(name, root, check_mode, systemd)


def _remove_instance(name, root, check_mode, systemd):
    layout = Layout(root)
    systemd = systemd or Systemd(root)
    changes = systemd.stop(name, check_mode)
    dropins = layout.dropins(name)
    for path in (*dropins, layout.wants_link(name), layout.record(name), layout.object(name)):
        for leftover in [path, *_temporaries(path)]:
            if _remove(layout, leftover, check_mode):
                changes.append("remove %s" % leftover)
                fault.point("unpersist_first_file_removed")
    if not [other for other in layout.recorded_names() if other != name]:
        for path in [layout.unit, *_temporaries(layout.unit)]:
            if _remove(layout, path, check_mode):
                changes.append("remove %s" % path)
                fault.point("unpersist_unit_removed")
        if os.path.isdir(layout.lib_dir):
            changes.append("remove %s" % layout.lib_dir)
            if not check_mode:
                shutil.rmtree(layout.lib_dir)
        for directory in (layout.record_dir, os.path.dirname(layout.wants_link(name))):
            if not check_mode and os.path.isdir(directory) and not os.listdir(directory):
                os.rmdir(directory)
    for dropin in dropins:
        directory = os.path.dirname(dropin)
        if not check_mode and os.path.isdir(directory) and not os.listdir(directory):
            os.rmdir(directory)
    if changes and not check_mode:
        systemd.reload()
    return changes


def recorded(name, root="/"):
    """Whether name has a record (or a unit enablement) to forget."""
    layout = Layout(root)
    return bool(
        os.path.lexists(layout.record(name)) or os.path.lexists(layout.wants_link(name)) or layout.dropins(name)
    )


def recorded_unit(name, root="/"):
    """The unit a recorded instance follows, None for none or when the record cannot tell."""
    layout = Layout(root)
    try:
        _check_dirs(layout, layout.record_dir)
        record = json.loads((_read(layout.record(name)) or b"{}").decode("utf-8"))
    except (RecordError, ValueError, OSError):
        return None
    unit = record.get("unit") if isinstance(record, dict) else None
    return unit if isinstance(unit, str) else None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(check):
    return lambda value: value is None or check(value)


def _is_str(value):
    return isinstance(value, str)


def _is_rules(value):
    return isinstance(value, list) and all(
        isinstance(rule, dict) and set(rule) == {"dest", "rto_ms"} and _is_str(rule["dest"]) and _is_int(rule["rto_ms"])
        for rule in value
    )


# What each key of a record holds, as the module's argument spec gives it.
RECORD_TYPES = {
    "format": (_is_int, "an integer"),
    "name": (_is_str, "a string"),
    "cgroup": (_optional(_is_str), "a string or null"),
    "rules": (_optional(_is_rules), "a list of {dest: string, rto_ms: integer}"),
    "rto_ms": (_optional(_is_int), "an integer or null"),
    "direction": (_is_str, "a string"),
    "pin_dir": (_is_str, "a string"),
    "mount_bpffs": (lambda value: isinstance(value, bool), "true or false"),
    "hz": (_optional(_is_int), "an integer or null"),
    "verify": (lambda value: isinstance(value, bool), "true or false"),
    "force_legacy_attach": (lambda value: isinstance(value, bool), "true or false"),
    "unit": (_optional(_is_str), "a string or null"),
    "src": (_is_str, "a string"),
    "object_sha256": (_is_str, "a string"),
}


def _check_record(record, name, layout):
    """ValueError saying what is wrong with a parsed record, unless it is one this code wrote."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if record.get("format") != RECORD_FORMAT:
        raise ValueError("format is not %d" % RECORD_FORMAT)
    missing = sorted(set(RECORD_TYPES) - set(record) - set(ADDED_KEYS))
    if missing:
        raise ValueError("missing %s" % ", ".join(missing))
    unknown = sorted(set(record) - set(RECORD_TYPES))
    if unknown:
        raise ValueError("unknown key(s) %s" % ", ".join(unknown))
    for key in sorted(RECORD_TYPES):
        check, expected = RECORD_TYPES[key]
        if key in record and not check(record[key]):
            raise ValueError("%s is %s, expected %s" % (key, json.dumps(record[key])[:80], expected))
    if record["name"] != name:
        raise ValueError("it names the instance %r" % record["name"])
    if record["src"] != layout.object(name):
        raise ValueError("src is %s, not the collection's copy %s" % (record["src"], layout.object(name)))


def read_record(name, root="/"):
    """The module parameters recorded for name, with src the copied object it names, checked
    against its sha256; RecordError when missing, not valid, or not what this code wrote."""
    layout = Layout(root)
    path = layout.record(name)
    _check_dirs(layout, layout.record_dir)
    raw = _read(path)
    if raw is None:
        raise RecordError(
            "no record %s: the instance %s is not persistent on this host; apply it with "
            "persistent: true, or disable tcp-rto@%s.service" % (path, name, name)
        )
    try:
        record = json.loads(raw.decode("utf-8"))
        _check_record(record, name, layout)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError; nesting too deep
        raise RecordError(
            "record %s is not valid (%s): it was edited or damaged; apply the instance again with "
            "Ansible to rewrite it" % (path, exc)
        )
    _check_dirs(layout, os.path.dirname(record["src"]))
    content = _read(record["src"])
    if content is None or hashlib.sha256(content).hexdigest() != record["object_sha256"]:
        raise RecordError(
            "the object %s is %s, not the one the record %s names (sha256 %s): apply the instance "
            "again with Ansible to copy it"
            % (record["src"], "missing" if content is None else "another file", path, record["object_sha256"])
        )
    return {key: record.get(key, ADDED_KEYS.get(key)) for key in (*RECORDED, "src")}


class Systemd:
    """systemctl for the instance units, when systemd runs the host this code runs on (root "/");
    every call is a no-op under a test root or without systemd. run: how to call systemctl (tests)."""

    def __init__(self, root="/", run=None):
        self.live = run is not None or (root == "/" and os.path.isdir("/run/systemd/system"))
        self.run = run or _systemctl

    def reload(self):
        if self.live:
            self.run("daemon-reload")

    def state(self, name):
        """ActiveState of the instance's unit: active, inactive, failed, activating, ..."""
        if not self.live:
            return "inactive"
        return self.run("show", "--property=ActiveState", "--value", UNIT_INSTANCE % name)[1].strip()

    def stop(self, name, check_mode):
        """Stop the unit and clear a failed state (systemd would list it as failed or not-found)."""
        if self.state(name) in ("inactive", ""):
            return []
        if not check_mode:
            self.run("stop", UNIT_INSTANCE % name)
            self.run("reset-failed", UNIT_INSTANCE % name)
        return ["stop %s" % UNIT_INSTANCE % name]

    def start(self, name, check_mode):
        """Start the unit unless active, after clearing a failed state (a failed boot restore that
        this run fixed). The unit's restore applies the record the run just wrote: it finds the
        kernel as the run left it and changes nothing. RecordError when it fails."""
        state = self.state(name)
        if not self.live or state == "active":
            return []
        if not check_mode:
            if state == "failed":
                self.run("reset-failed", UNIT_INSTANCE % name)
            code, output = self.run("start", UNIT_INSTANCE % name)
            if code != 0:
                raise RecordError(
                    "the instance is applied and recorded, but its boot unit %s failed to start (%s): see "
                    "journalctl -u %s" % (UNIT_INSTANCE % name, output.strip(), UNIT_INSTANCE % name)
                )
        return ["start %s" % UNIT_INSTANCE % name]


def _systemctl(*args):
    """-> (exit code, stdout and stderr). module_utils here are plain stdlib Python (the boot-time
    restore imports them without Ansible): no AnsibleModule, so no run_command."""
    proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
        ["systemctl", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True
    )
    output = proc.communicate()[0]
    return proc.returncode, output


def start_unit(name, root="/", check_mode=False, systemd=None):
    """After a persistent run, outside its instance lock (the unit's restore takes it): the unit
    active, as it would be after a boot; -> list of what changed."""
    return (systemd or Systemd(root)).start(name, check_mode)


def _python_problem(path):
    """Why path may not be the interpreter tcp-rto@.service runs as root at boot, or None: it, what
    it links to and every directory above them must be root-owned and writable by no one else."""
    if not os.path.isabs(path):
        return "not an absolute path"
    real = os.path.realpath(path)
    checked = [path, real]
    for start in (os.path.dirname(path), os.path.dirname(real)):
        while True:
            checked.append(start)
            if start == os.path.dirname(start):
                break
            start = os.path.dirname(start)
    for each in checked:
        try:
            status = os.stat(each) if each == path else os.lstat(each)
        except OSError as exc:
            return "%s: %s" % (each, exc.strerror)
        if stat.S_ISLNK(status.st_mode):
            continue  # a link's own mode means nothing; its target is checked
        if status.st_uid != 0 or status.st_mode & 0o022:
            return "%s is owned by uid %d with mode %04o" % (each, status.st_uid, status.st_mode & 0o7777)
    if not (stat.S_ISREG(os.stat(real).st_mode) and os.access(real, os.X_OK)):
        return "%s is not an executable file" % real
    return None


def boot_python(candidates=None):
    """The interpreter the boot unit runs (with -I): the first of candidates (default: the system's
    Python 3, then this run's interpreter) that is root-owned and writable by no one else, down to
    /. RecordError naming each candidate's problem when none is."""
    problems = []
    for candidate in candidates or (*SYSTEM_PYTHONS, sys.executable):
        problem = _python_problem(candidate)
        if problem is None:
            return candidate
        problems.append("%s (%s)" % (candidate, problem))
    raise RecordError(
        "no interpreter the boot unit can safely run as root: %s. Install the distribution's python3 "
        "(/usr/bin/python3), or run with a root-owned interpreter that only root can change" % "; ".join(problems)
    )
