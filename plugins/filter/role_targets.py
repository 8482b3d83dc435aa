# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: role_targets
short_description: The instances a run of the role netbpf.tcp_rto.tcp_rto aims at, each with all its keys
version_added: 0.2.0
description:
  - Used by the role P(netbpf.tcp_rto.tcp_rto#role) to settle the instances of
    a run in one step on the controller, without tasks (each task of a play costs a forked worker per host).
  - Each instance of O(_input) (or O(single) when O(_input) is empty) takes the keys it leaves out from O(defaults);
    an instance that gives C(cgroup) or C(unit) takes neither from O(defaults), as the two are exclusive.
  - "Rules merge by destination: the instance's own rules first, then the value of each variable of O(rules_vars)
    whose name its C(rules_vars) regular expression matches (searched, as the lookup C(ansible.builtin.varnames) does), in
    sorted name order; a later rule for the same C(dest) (as written) replaces an earlier one, all of it."
  - With O(previous), the run goes back to recorded configurations instead. Each named instance gets O(defaults),
    then the instance of O(_input) with its name, then no cgroup, unit, rules, rto_ms or syn_give_up_s and
    C(direction=both), then the record. A record written before 0.2.0 holds no syn_give_up_s and no C(auto_*)
    settings, so those of O(defaults) apply.
  - Each target gets C(history_steps), the records of earlier configurations it keeps (O(rollback_steps), or 0
    when its C(history) is off).
  - Fails when O(rollback_steps) is below 1, or when an instance of O(_input) has no name or the name of another
    (not checked with O(previous)).
author: netbpf.tcp_rto developers
options:
  _input:
    description: The role's C(tcp_rto_instances).
    type: list
    elements: dict
    required: true
  single:
    description: The instance the single-instance variables describe (C(name), C(rules), C(rules_vars)).
    type: dict
    required: true
  defaults:
    description: What an instance takes for the keys it leaves out.
    type: dict
    required: true
  rules_vars:
    description: Variable name to value, for every variable whose name a C(rules_vars) of the instances matches.
    type: dict
    default: {}
  previous:
    description: Instance name to recorded configuration, for a return to them; V(null) for a run that applies.
    type: dict
  rollback_steps:
    description: The role's C(tcp_rto_rollback_steps).
    type: int
    default: 1
"""

EXAMPLES = r"""
- name: The instances of this run
  ansible.builtin.debug:
    msg: "{{ tcp_rto_instances | netbpf.tcp_rto.role_targets(single={'name': 'default', 'rules': [], 'rules_vars': none},
             defaults={'state': 'present', 'cgroup': '/sys/fs/cgroup/system.slice', 'history': true}) }}"
"""

RETURN = r"""
_value:
  description: One dict per instance of the run, with every key of O(defaults) and C(history_steps).
  type: list
  elements: dict
"""

import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

# what a recorded configuration does not say is not set, rather than taken from the role's variables
_RECORD_BASE = dict(cgroup=None, unit=None, rules=[], rto_ms=None, syn_give_up_s=None, direction="both")


def _merged_rules(instance, rules_vars):
    rules = list(instance.get("rules") or [])
    pattern = instance.get("rules_vars")
    if pattern:
        for name in sorted(name for name in rules_vars if re.search(pattern, name)):
            value = rules_vars[name]
            rules.extend(value if isinstance(value, list) else [value])
    by_dest = {}
    for rule in rules:
        by_dest[rule["dest"]] = rule
    return list(by_dest.values())


def _new_target(instance, defaults, rules_vars):
    target = dict(defaults)
    if "cgroup" in instance or "unit" in instance:
        target.update(cgroup=None, unit=None)
    target.update(instance)
    target["rules"] = _merged_rules(instance, rules_vars)
    return target


def _previous_target(name, config, declared, defaults):
    target = dict(defaults)
    target.update(next((instance for instance in declared if instance.get("name") == name), {}))
    target.update(_RECORD_BASE, name=name)
    target.update(config)
    return target


def _check_names(instances):
    names = [instance.get("name") for instance in instances]
    if None in names or len(set(names)) != len(names):
        raise AnsibleFilterError(
            "each entry of tcp_rto_instances needs a name, and a different one: %s"
            % [instance.get("name", "(none)") for instance in instances]
        )


def role_targets(instances, single, defaults, rules_vars=None, previous=None, rollback_steps=1):
    try:
        steps = int(rollback_steps)
    except (TypeError, ValueError):
        steps = 0
    if steps < 1:
        raise AnsibleFilterError("tcp_rto_rollback_steps must be 1 or more, not %s" % (rollback_steps,))
    if previous is not None:
        targets = [_previous_target(name, config, instances, defaults) for name, config in previous.items()]
    else:
        _check_names(instances)
        targets = [_new_target(instance, defaults, rules_vars or {}) for instance in instances or [single]]
    for target in targets:
        target["history_steps"] = steps if boolean(target.get("history"), strict=False) else 0
    return targets


class FilterModule:
    def filters(self):
        return {"role_targets": role_targets}
