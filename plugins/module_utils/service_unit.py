# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An instance that follows a systemd service (the module's `unit` option).

systemd removes a service's cgroup when the service stops and makes a new one at every start: a
program attached to the old cgroup stays with it. A drop-in of the service,
/etc/systemd/system/<unit>.d/tcp-rto-<name>.conf, runs the boot-time restore code as an
`ExecStartPre=+` command: it runs inside the service's new cgroup before the main process, reads
that cgroup from /proc/self/cgroup and attaches the instance there (loading it from the record when
the pins are gone, after a boot). See docs/architecture.md for why this and not systemd's
BPFProgram=. Plain stdlib.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import subprocess

UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.service$")
# The cgroup of a unit that systemd made for it, as the last part of a cgroup path.
UNIT_CGROUP = re.compile(r"(?:^|/)([^/]+\.(?:service|scope))/?$")
DROPIN_NAME = "tcp-rto-%s.conf"
DROPIN_TEXT = """\
# Installed by the Ansible collection netbpf.tcp_rto: attaches the TCP initial RTO instance {name}
# to this service's cgroup at every start, before its main process (the record: {record}).
[Service]
ExecStartPre=-+{python} -I {script} --attach {name}
"""


class UnitError(Exception):
    """The unit cannot be followed; the message says why and what to do."""


def check_name(unit):
    if not UNIT_NAME.match(unit or ""):
        raise UnitError(
            "unit %r is not the name of a systemd service: give its full name, like api.service; for a slice "
            "or another cgroup give its directory with cgroup: instead" % unit
        )


def running_cgroup(unit, cgroup_root, systemctl=None):
    """The cgroup v2 directory of the running unit, or None when it does not run; UnitError when
    systemd does not know it or does not run the host."""
    check_name(unit)
    if systemctl is None:
        if not os.path.isdir("/run/systemd/system"):
            raise UnitError("unit: needs systemd as PID 1, which does not run this host: give cgroup: instead")
        systemctl = _systemctl_show
    properties = systemctl(unit, ("LoadState", "ActiveState", "ControlGroup"))
    if properties.get("LoadState") != "loaded":
        raise UnitError(
            "systemd has no unit %s (LoadState=%s): install and enable the service first, or correct the name"
            % (unit, properties.get("LoadState") or "unknown")
        )
    control_group = properties.get("ControlGroup", "")
    if properties.get("ActiveState") not in ("active", "activating", "reloading") or not control_group:
        return None
    return os.path.join(cgroup_root, control_group.lstrip("/"))


def _systemctl_show(unit, names):
    # plain stdlib (the boot-time code imports it): no AnsibleModule.run_command here
    output = subprocess.check_output(  # pylint: disable=ansible-bad-function
        ["systemctl", "show", "--property=" + ",".join(names), unit], universal_newlines=True
    )
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def own_cgroup(cgroup_root, proc_cgroup="/proc/self/cgroup"):
    """The cgroup v2 directory of this process: the unit's own cgroup when an ExecStartPre command
    runs it (or the unit's, when a delegated unit runs control processes in its .control child)."""
    with open(proc_cgroup) as handle:
        for line in handle:
            hierarchy, _controllers, path = line.rstrip("\n").split(":", 2)
            if hierarchy == "0":
                if path.endswith("/.control"):
                    path = path[: -len("/.control")]
                return os.path.join(cgroup_root, path.lstrip("/"))
    raise UnitError("%s has no cgroup v2 line: the unit's cgroup is unknown" % proc_cgroup)


def unit_of_cgroup(path):
    """The unit a cgroup path belongs to (…/system.slice/api.service -> api.service), else None."""
    match = UNIT_CGROUP.search(path or "")
    return match.group(1) if match else None


def dropin_dir(unit_dir, unit):
    return os.path.join(unit_dir, unit + ".d")


def dropin_text(name, unit, python, script, record):
    return DROPIN_TEXT.format(name=name, unit=unit, python=python, script=script, record=record)
