# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drift: what changed in the kernel since tcp_rto last wrote an instance (a pin deleted, the
program detached, a map entry edited with bpftool), told from a change of parameters with the
fingerprint of the maps the meta record keeps. The plan repairs it; this only says what it is.
Plain stdlib, usable without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import cgroups, pins, rto_program
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import ATTACH_LINK, network_text


def _direction_name(bits):
    names = [name for name, value in rto_program.DIRECTIONS.items() if value == bits]
    return names[0] if names else "bits %r" % (bits,)


def _pin_findings(current):
    found = []
    for name in current.missing_pins:
        path = os.path.join(current.instance_dir, name)
        if name == pins.PROG_PIN and current.prog_adopted:
            found.append("pin %s is missing; program %d is still attached (found by id)" % (path, current.prog_info.id))
        elif name == pins.META_MAP and current.meta_adopted:
            found.append(
                "pin %s (the instance record) is missing; program %d found attached to %s"
                % (path, current.prog_info.id, current.cgroup)
            )
        else:
            found.append("pin %s is missing" % path)
    if current.attach_mode == ATTACH_LINK and current.link_fd is None:
        found.append(
            "pin %s is missing, and with it the bpf_link that attached the program"
            % (os.path.join(current.instance_dir, pins.LINK_PIN))
        )
    elif current.prog_info is not None and current.meta is not None and not current.attached:
        found.append(
            "program %d is not attached to %s (%s)" % (current.prog_info.id, current.cgroup, detach_cause(current))
        )
    return found


def detach_cause(current):
    """Why a program the meta record says is attached is not, as far as the kernel tells."""
    if not os.path.isdir(current.cgroup):
        return "the cgroup no longer exists; systemd removes a unit's cgroup when the unit stops"
    recreated = (
        "the cgroup was removed and re-created, as systemd does at every start of a unit (the module's unit: "
        "option follows a service across restarts)"
    )
    if current.link_info is not None and current.link_info.cgroup_id != cgroups.cgroup_id(current.cgroup):
        return recreated
    return "detached outside tcp_rto, or %s, or an earlier run was interrupted" % recreated


def _held_fingerprint(current, held_rules):
    return pins.maps_fingerprint(
        held_rules,
        current.default_jiffies,
        current.directions,
        current.default_syn_retries,
        current.default_auto,
        current.auto_config,
    )


def maps_edited(current):
    """Whether the rules or config map differ from what tcp_rto last wrote (per the meta record)."""
    recorded = (current.meta or {}).get("maps_sha256")
    if not recorded or rto_program.RULES_MAP not in current.maps or rto_program.CONFIG_MAP not in current.maps:
        return False
    held_rules = [rule for rule, _slot in current.rules]
    return _held_fingerprint(current, held_rules) != recorded


def _map_findings(current, desired):
    recorded = (current.meta or {}).get("maps_sha256")
    if not recorded or rto_program.RULES_MAP not in current.maps or rto_program.CONFIG_MAP not in current.maps:
        return []
    held_rules = [rule for rule, _slot in current.rules]
    if _held_fingerprint(current, held_rules) == recorded:
        return []
    wanted_directions = rto_program.DIRECTIONS[desired.direction]
    if (
        pins.maps_fingerprint(
            desired.rules,
            desired.default_jiffies,
            wanted_directions,
            desired.default_syn_retries,
            desired.default_auto,
            desired.auto_config(),
        )
        != recorded
    ):
        return ["the rules or config map was edited outside tcp_rto since the last run"]
    found = []
    held = {network_text(rule.dest): rule.rto_jiffies for rule in held_rules}
    written = {network_text(rule.dest): rule.rto_jiffies for rule in desired.rules}
    for dest, jiffies in written.items():
        if dest not in held:
            found.append("rules map: the rule for %s (%d jiffies) was deleted" % (dest, jiffies))
        elif held[dest] != jiffies:
            found.append("rules map: %s holds %d jiffies, tcp_rto wrote %d" % (dest, held[dest], jiffies))
    for dest, jiffies in held.items():
        if dest not in written:
            found.append("rules map: a rule for %s (%d jiffies) was added" % (dest, jiffies))
    held_auto = {network_text(rule.dest) for rule in held_rules if rule.auto}
    for dest in sorted(held_auto ^ {network_text(rule.dest) for rule in desired.rules if rule.auto}):
        if dest in held and dest in written:
            found.append(
                "rules map: the rto_ms: auto flag of %s was %s" % (dest, "set" if dest in held_auto else "cleared")
            )
    if (current.default_auto, current.auto_config) != (desired.default_auto, desired.auto_config()):
        found.append(
            "config map: the rto_ms: auto flag of the default or the auto settings differ from what tcp_rto wrote"
        )
    if (current.default_jiffies or 0) != (desired.default_jiffies or 0):
        found.append(
            "config map: the default holds %d jiffies, tcp_rto wrote %d (0: kernel default)"
            % (current.default_jiffies or 0, desired.default_jiffies or 0)
        )
    if current.directions != wanted_directions:
        found.append(
            "config map: the direction holds %s, tcp_rto wrote %s"
            % (_direction_name(current.directions), desired.direction)
        )
    return found


def findings(current, desired):
    """What drifted in the instance current reads, as sentences for people ([] when nothing)."""
    if not current.exists:
        return []
    return _pin_findings(current) + _map_findings(current, desired)
