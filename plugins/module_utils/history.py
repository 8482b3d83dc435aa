# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The history records behind netbpf.tcp_rto.rollback: an instance's configuration before each of
its last changes, <root>/etc/tcp_rto/<name>.previous.json (before the last change),
<name>.previous.2.json (before the one before) and so on. The module writes them in the run that
makes the change (history_steps), so that a rollout needs no second connection for them; the role
reads them back and moves them up when it rolls back."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall, persistence, views
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current

ABSENT = {"state": "absent"}


def configuration(pin_dir, name):
    """The instance's configuration as a history record holds it (and the role puts back):
    {"state": "absent"}, or state, cgroup (None for an instance that follows a unit), unit, rules
    ([{dest, rto_ms}]), rto_ms and direction. None when the pins cannot be read."""
    instance_dir = os.path.join(pin_dir, name)
    if not os.path.isdir(instance_dir):
        return dict(ABSENT)
    try:
        # only the maps and the meta record are read: the link's info is not needed
        current = Current(instance_dir, link_info=False)
    except (OSError, ValueError, bpf_syscall.BpfError):
        return None
    try:
        view = views.describe_current(current)
    finally:
        current.close()
    unit = persistence.recorded_unit(name, persistence.host_root())
    return dict(
        state="present",
        cgroup=None if unit else view.get("cgroup"),
        unit=unit,
        rules=[dict(dest=rule["dest"], rto_ms=rule.get("rto_ms")) for rule in view.get("rules", [])],
        rto_ms=view.get("default_rto_ms"),
        direction=view.get("direction"),
    )


def _record_path(layout, name, step):
    suffix = ".previous.json" if step == 1 else ".previous.%d.json" % step
    return os.path.join(layout.record_dir, name + suffix)


def record(name, before, steps):
    """Keep before as the newest history record of name, the older ones moved up, at most steps
    of them; -> the path written."""
    layout = persistence.Layout(persistence.host_root())
    last = 0
    while os.path.lexists(_record_path(layout, name, last + 1)):
        last += 1
    for step in range(last, 0, -1):
        if step >= steps:
            os.unlink(_record_path(layout, name, step))
        else:
            os.rename(_record_path(layout, name, step), _record_path(layout, name, step + 1))
    path = _record_path(layout, name, 1)
    content = json.dumps(before, indent=4, sort_keys=True) + "\n"
    persistence.write_file(layout, path, content.encode("utf-8"), 0o644)
    return path
