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

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_syscall,
    desired,
    host,
    host_paths,
    persistence,
    record,
    syn_give_up,
    views,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current

ABSENT = {"state": "absent"}


def configuration(pin_dir, name):
    """The instance's configuration as a history record holds it (and the role puts back):
    {"state": "absent"}, or held_configuration(). None when the pins cannot be read."""
    instance_dir = os.path.join(pin_dir, name)
    if not os.path.isdir(instance_dir):
        return dict(ABSENT)
    try:
        # only the maps and the meta record are read: the link's info is not needed
        current = Current(instance_dir, link_info=False)
    except (OSError, ValueError, bpf_syscall.BpfError):
        return None
    try:
        return held_configuration(current, name)
    finally:
        current.close()


def held_configuration(current, name):
    """The configuration of the instance current holds: state present, cgroup (None for an instance
    that follows a unit), unit, rules ([{dest, rto_ms, syn_give_up_s}]), rto_ms, syn_give_up_s,
    direction and the auto_* settings (record.AUTO_KEYS)."""
    root = host_paths.host_root()
    recorded = persistence.recorded_params(name, root)
    view = views.describe_current(current)
    hz = current.meta.get("hz") if current.meta else None
    settings = _as_recorded(recorded, current, hz) or _as_held(current, view, hz)
    unit = persistence.recorded_unit(name, root, recorded)
    return dict(
        settings,
        state="present",
        cgroup=None if unit else view.get("cgroup"),
        unit=unit,
        direction=view.get("direction"),
    )


def _as_held(current, view, hz):
    """rules, rto_ms, syn_give_up_s and the auto_* settings from what the kernel holds: each
    syn_give_up_s its deadline, cut to whole milliseconds (syn_give_up.recorded_give_up_seconds)."""
    auto = view.get("auto") or {}
    return dict(
        rules=[
            dict(
                dest=shown["dest"],
                rto_ms=shown.get("rto_ms"),
                syn_give_up_s=_give_up(rule.rto_jiffies, rule.syn_retries, hz),
            )
            for shown, (rule, _slot) in zip(view.get("rules", []), current.rules)
        ],
        rto_ms=view.get("default_rto_ms"),
        syn_give_up_s=_give_up(current.default_jiffies, current.default_syn_retries, hz),
        **{key: auto.get(key[len("auto_") :]) for key in record.AUTO_KEYS},
    )


def _give_up(rto_jiffies, syn_retries, hz):
    return syn_give_up.recorded_give_up_seconds(rto_jiffies, syn_retries, hz) if hz else None


def _as_recorded(recorded, current, hz):
    """rules, rto_ms, syn_give_up_s and the auto_* settings as the boot record gives them, when they
    make exactly what the kernel holds (a run without persistence may have changed it since), else
    None. A rollback then applies the words the operator used, and applying those again changes nothing."""
    keys = ("rules", "rto_ms", "syn_give_up_s", *record.AUTO_KEYS)
    if not hz or not {"rules", "rto_ms"} <= set(recorded):  # keys an earlier version may lack default to None
        return None
    settings = {key: recorded.get(key) for key in keys}
    linear_timeouts = host.read_sysctl("net.ipv4.tcp_syn_linear_timeouts", 0)
    try:
        auto = desired.parse_auto(settings, hz)
        rules = desired.parse_rules(settings["rules"], hz, settings["syn_give_up_s"], linear_timeouts, auto)
        default = desired.parse_default(settings["rto_ms"], hz, settings["syn_give_up_s"], linear_timeouts, auto)
    except (desired.ConfigError, TypeError, ValueError):
        return None
    uses_auto = default[2] or any(rule.auto for rule in rules)
    makes = (
        [(rule.dest, rule.rto_jiffies, rule.syn_retries or 0, rule.auto) for rule in rules],
        (default[0] or 0, default[1] or 0, default[2]),
        (auto.min_jiffies, auto.factor_pct, auto.min_samples, auto.ttl_s, auto.retransmit_budget, auto.table_size)
        if uses_auto
        else None,
    )
    learned_entries = current.learned_info.max_entries if current.learned_info else None
    holds = (
        [(rule.dest, rule.rto_jiffies, rule.syn_retries or 0, rule.auto) for rule, _slot in current.rules],
        (current.default_jiffies or 0, current.default_syn_retries or 0, bool(current.default_auto)),
        (*current.auto_config[:5], learned_entries) if uses_auto and current.auto_config else None,
    )
    return settings if makes == holds else None


NEWEST = ".previous.json"  # <name> + NEWEST: the record before the last change


def _record_path(layout, name, step):
    suffix = NEWEST if step == 1 else ".previous.%d.json" % step
    return os.path.join(layout.record_dir, name + suffix)


def kept(layout):
    """{name: {"previous": the configuration before its last change (None when the record cannot be
    read), "records": how many records it keeps}} of every instance with a history record."""
    if not os.path.isdir(layout.record_dir):
        return {}
    names = sorted(entry[: -len(NEWEST)] for entry in os.listdir(layout.record_dir) if entry.endswith(NEWEST))
    return {name: _kept_by(layout, name) for name in names}


def _records_of(layout, name):
    """How many history records name has."""
    count = 0
    while os.path.lexists(_record_path(layout, name, count + 1)):
        count += 1
    return count


def _kept_by(layout, name):
    try:
        with open(_record_path(layout, name, 1)) as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        previous = None
    return dict(previous=previous if isinstance(previous, dict) else None, records=_records_of(layout, name))


def push(name, before, steps):
    """Keep before as the newest history record of name, the older ones moved up, at most steps
    of them; -> the path written."""
    layout = host_paths.Layout(host_paths.host_root())
    for step in range(_records_of(layout, name), 0, -1):
        if step >= steps:
            os.unlink(_record_path(layout, name, step))
        else:
            os.rename(_record_path(layout, name, step), _record_path(layout, name, step + 1))
    path = _record_path(layout, name, 1)
    content = json.dumps(before, indent=4, sort_keys=True) + "\n"
    persistence.write_file(layout, path, content.encode("utf-8"), 0o644)
    return path
