# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot-time restore of a persistent instance: tcp-rto@<name>.service runs main([name]); the
drop-in of a service that an instance follows (the module's `unit`) runs main(["--attach", name])
as an ExecStartPre=+ command, inside the service's new cgroup, at every start.

Reads the record, then the same reconcile.run the module uses. A missing or damaged record fails
before anything touches the kernel; a failing apply undoes itself. Exit 0 only when restored."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import sys
import time

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    cgroups,
    host,
    persistence,
    reconcile,
    record,
    service_unit,
)

USAGE = "usage: restore.py INSTANCE | restore.py --attach INSTANCE\n"
# How often a restore whose cgroup does not exist yet looks for it.
CGROUP_POLL_SECONDS = 0.2


def main(argv, root="/"):
    """root: what stood for / when the calling script was installed (host_paths.host_root())."""
    attach = argv[:1] == ["--attach"]
    if attach:
        argv = argv[1:]
    if len(argv) != 1:
        sys.stderr.write(USAGE)
        return 2
    name = argv[0]
    try:
        params = persistence.read_record(name, root)
        if attach != bool(params["unit"]):
            raise record.RecordError(
                "the instance %s follows %s: %s"
                % (
                    name,
                    "the unit %s" % params["unit"] if params["unit"] else "no unit",
                    "the drop-in of that unit attaches it at each start, not tcp-rto@%s.service" % name
                    if params["unit"]
                    else "tcp-rto@%s.service restores it, no drop-in; apply it again with Ansible" % name,
                )
            )
        if attach:
            params = dict(params, unit=None, cgroup=service_unit.own_cgroup(cgroups.cgroup2_mount()))
        elif _may_appear(params["cgroup"]) and _wait_in_background(name, params["cgroup"]):
            return 0
        result = reconcile.run(dict(params, state="present", persistent=reconcile.PERSISTENCE_UNTOUCHED))
    except (record.RecordError, service_unit.UnitError, reconcile.VerificationFailed, *reconcile.ERRORS) as exc:
        sys.stderr.write("tcp-rto restore of %s failed: %s\n" % (name, reconcile.describe_error(exc)))
        return 1
    return _print_result(name, attach, result)


def _may_appear(cgroup):
    """Whether cgroup is a missing directory below the cgroup v2 mount that a unit may still make
    (anything else goes to reconcile.run, whose error says what is wrong with it)."""
    if not cgroup or "\0" in cgroup or not os.path.isabs(cgroup) or os.path.lexists(cgroup):
        return False
    try:
        mount = cgroups.cgroup2_mount()
    except host.HostError:
        return False
    return host.is_within(os.path.normpath(cgroup), mount)


def _wait_in_background(name, cgroup):
    """A cgroup that does not exist yet at boot (made by a unit that starts later, maybe after
    network-online.target, which this unit must not hold up): the parent returns True and the unit
    is active; a child, left in the unit's cgroup (a oneshot's leftover processes live on until the
    unit stops), waits for the cgroup and returns False to apply the record there."""
    pid = os.fork()
    if pid:
        sys.stdout.write(
            "tcp-rto restore of %s: cgroup %s does not exist yet; process %d applies the instance when it "
            "appears\n" % (name, cgroup, pid)
        )
        sys.stdout.flush()
        return True
    while not os.path.isdir(cgroup):
        time.sleep(CGROUP_POLL_SECONDS)
    return False


def _print_result(name, attach, result):
    summary = {key: result.get(key) for key in ("changed", "actions", "verification")}
    summary["program_id"] = result["instance"]["program_id"]
    sys.stdout.write(
        "tcp-rto %s of %s: %s\n" % ("attach" if attach else "restore", name, json.dumps(summary, sort_keys=True))
    )
    return 0
