# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keeping an instance across reboots, which the kernel does not.

On the host: the instance's parameters in /etc/tcp_rto/<name>.json (the record), its object and
the collection's own stdlib code under /var/lib/tcp_rto/, and a systemd template unit
tcp-rto@.service enabled as tcp-rto@<name>.service, whose ExecStart runs that code on that record.
No Ansible, compiler or bpftool at boot. Every path lies under `root` ("/" but in tests).

Here: installing and removing them, reading the record back. Where they live is in host_paths,
what the record holds in record, how each file is read and written in safe_files, systemctl
and the boot unit's interpreter in systemd.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import hashlib
import json
import os
import pkgutil
import shutil
import stat

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bytecode,
    fault,
    lock,
    metrics_timer,
    safe_files,
    service_unit,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.host_paths import MODULE_UTILS, UNIT_TEMPLATE, Layout
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.record import (
    ADDED_KEYS,
    RECORDED,
    RecordError,
    check_record,
    record_content,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.systemd import Systemd, boot_python

# The module_utils the restore imports, directly or not.
CODE_FILES = (
    "bytecode",
    "host_paths",
    "rto_program",
    "bpf_syscall",
    "bpf_maps",
    "bpf_info",
    "uapi",
    "bpf_object",
    "elf",
    "btf",
    "btf_ext",
    "map_definitions",
    "host",
    "cgroups",
    "hz",
    "features",
    "probe",
    "desired",
    "pins",
    "current",
    "plan",
    "views",
    "loader",
    "attach",
    "probe_child",
    "telemetry",
    "learned",
    "apply",
    "handshakes",
    "harm",
    "info",
    "metrics",
    "metrics_timer",
    "coexistence",
    "drift",
    "syn_give_up",
    "syn_retries_probe",
    "reconcile",
    "persistence",
    "restore",
    "fault",
    "lock",
    "service_unit",
    "record",
    "safe_files",
    "systemd",
)

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


def write_file(layout, path, content, mode):
    """A file of the collection's own under layout (e.g. a history record), written as records are."""
    return safe_files.write(layout, path, content, mode, check_mode=False)


def _code(module):
    """The source of one of CODE_FILES: through the package loader (Ansible runs the module from a
    zip), or from beside this file when the package is a plain directory without __init__.py,
    whose loader reads no data."""
    source = pkgutil.get_data(MODULE_UTILS, module + ".py")
    if source is None:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), module + ".py"), "rb") as handle:
            source = handle.read()
    return source


def _write_compiled(layout, module, source, check_mode):
    """Beside the copy of module, its code compiled by this interpreter, unless there already
    (bytecode): a cache for the next runs, not a change of the host's configuration, and not synced
    (a file a crash damaged is compiled again, by the modules and by Python's own import)."""
    path = bytecode.cached(layout.code_dir, module)
    if path is None or bytecode.compiled_from(safe_files.read(path), source):
        return
    compiled = bytecode.compiled(source, os.path.join(layout.code_dir, module + ".py"))
    safe_files.write(layout, path, compiled, 0o644, check_mode, durable=False)


def check_paths(name, root="/"):
    """UnsafePath for what install() or remove() would refuse, checked before the kernel is touched:
    a symlink (or a directory where a file belongs) at a file of name or at a directory above it."""
    layout = Layout(root)
    code = [os.path.join(layout.code_dir, module + ".py") for module in CODE_FILES]
    code += [path for path in (bytecode.cached(layout.code_dir, module) for module in CODE_FILES) if path]
    checked = set()  # the code files share one directory, their .pyc files another
    for path in [layout.record(name), layout.object(name), layout.script, layout.unit, *code, *layout.dropins(name)]:
        directory = os.path.dirname(path)
        if directory not in checked:
            safe_files.check_dirs(layout, directory)
            checked.add(directory)
        try:
            mode = os.lstat(path).st_mode  # one call per file: a no-op run checks about a hundred
        except OSError:
            continue
        if stat.S_ISLNK(mode):
            safe_files.refuse_symlink(path)
        if not stat.S_ISREG(mode):
            raise safe_files.UnsafePath("%s is not a regular file: remove it, then run again" % path)
    safe_files.check_dirs(layout, os.path.dirname(layout.wants_link(name)))  # the link itself is a symlink


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
    for leftover in safe_files.temporaries(layout.object(name)) + safe_files.temporaries(layout.record(name)):
        if safe_files.remove(layout, leftover, check_mode):
            changes.append("remove %s" % leftover)
    with open(object_path, "rb") as handle:
        if safe_files.write(layout, layout.object(name), handle.read(), 0o644, check_mode):
            changes.append("copy object to %s" % layout.object(name))
    fault.point("persist_object_copied")
    code_changed = False
    for module in CODE_FILES:
        source = _code(module)
        code_changed |= safe_files.write(
            layout, os.path.join(layout.code_dir, module + ".py"), source, 0o644, check_mode
        )
        _write_compiled(layout, module, source, check_mode)
    code_changed |= safe_files.write(
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
    if safe_files.write(layout, layout.unit, unit_text.encode("utf-8"), 0o644, check_mode):
        changes.append("install %s" % layout.unit)
    fault.point("persist_unit_written")
    if safe_files.write(
        layout, layout.record(name), record_content(params, object_sha256, layout.object(name)), 0o644, check_mode
    ):
        changes.append("record %s" % layout.record(name))
    fault.point("persist_record_written")
    unit = params.get("unit")
    for dropin in layout.dropins(name):
        if (unit is None or dropin != layout.dropin(unit, name)) and safe_files.remove(layout, dropin, check_mode):
            changes.append("remove %s" % dropin)
    if unit is None:
        if safe_files.symlink(layout, os.path.join("..", UNIT_TEMPLATE), layout.wants_link(name), check_mode):
            changes.append("enable tcp-rto@%s.service" % name)
    else:
        # the unit's own starts attach the instance: no boot unit of its own
        changes.extend(systemd.stop(name, check_mode))
        if safe_files.remove(layout, layout.wants_link(name), check_mode):
            changes.append("disable tcp-rto@%s.service" % name)
        text = service_unit.dropin_text(name, unit, python_path, layout.script, record_path)
        if safe_files.write(layout, layout.dropin(unit, name), text.encode("utf-8"), 0o644, check_mode):
            changes.append("install %s (attaches at every start of %s)" % (layout.dropin(unit, name), unit))
    timer_changes = metrics_timer.follow(layout, systemd, params, python_path, check_mode)
    fault.point("persist_enabled")
    if (changes or timer_changes) and not check_mode:
        systemd.reload()
    if timer_changes and params.get("metrics_textfile"):
        timer_changes += metrics_timer.start(systemd, check_mode)
    return changes + timer_changes


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
        for leftover in [path, *safe_files.temporaries(path)]:
            if safe_files.remove(layout, leftover, check_mode):
                changes.append("remove %s" % leftover)
                fault.point("unpersist_first_file_removed")
    if not [other for other in layout.recorded_names() if other != name]:
        changes += metrics_timer.remove(layout, systemd, check_mode)  # it runs the code removed below
        for path in [layout.unit, *safe_files.temporaries(layout.unit)]:
            if safe_files.remove(layout, path, check_mode):
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


def recorded_params(name, root="/"):
    """The record of name as it stands ({} when there is none or it cannot be read), unchecked:
    for what a reader may take from it, not for a restore (read_record)."""
    layout = Layout(root)
    try:
        safe_files.check_dirs(layout, layout.record_dir)
        record = json.loads((safe_files.read(layout.record(name)) or b"{}").decode("utf-8"))
    except (RecordError, ValueError, OSError):
        return {}
    return record if isinstance(record, dict) else {}


def recorded_unit(name, root="/", params=None):
    """The unit a recorded instance follows, None for none or when the record cannot tell (params:
    its recorded_params() when the caller has read them)."""
    unit = (recorded_params(name, root) if params is None else params).get("unit")
    return unit if isinstance(unit, str) else None


def read_record(name, root="/"):
    """The module parameters recorded for name, with src the copied object it names, checked
    against its sha256; RecordError when missing, not valid, or not what this code wrote."""
    layout = Layout(root)
    path = layout.record(name)
    safe_files.check_dirs(layout, layout.record_dir)
    raw = safe_files.read(path)
    if raw is None:
        raise RecordError(
            "no record %s: the instance %s is not persistent on this host; apply it with "
            "persistent: true, or disable tcp-rto@%s.service" % (path, name, name)
        )
    try:
        record = json.loads(raw.decode("utf-8"))
        check_record(record, name, layout.object(name))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError; nesting too deep
        raise RecordError(
            "record %s is not valid (%s): it was edited or damaged; apply the instance again with "
            "Ansible to rewrite it" % (path, exc)
        )
    safe_files.check_dirs(layout, os.path.dirname(record["src"]))
    content = safe_files.read(record["src"])
    if content is None or hashlib.sha256(content).hexdigest() != record["object_sha256"]:
        raise RecordError(
            "the object %s is %s, not the one the record %s names (sha256 %s): apply the instance "
            "again with Ansible to copy it"
            % (record["src"], "missing" if content is None else "another file", path, record["object_sha256"])
        )
    return {key: record.get(key, ADDED_KEYS.get(key)) for key in (*RECORDED, "src")}


def start_unit(name, root="/", check_mode=False, systemd=None):
    """After a persistent run, outside its instance lock (the unit's restore takes it): the unit
    active, as it would be after a boot; -> list of what changed."""
    return (systemd or Systemd(root)).start(name, check_mode)
