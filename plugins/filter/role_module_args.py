# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: role_module_args
short_description: The options of netbpf.tcp_rto.tcp_initial_rto for one instance of a run of the role netbpf.tcp_rto.tcp_rto
version_added: 0.3.0
description:
  - Used by the role P(netbpf.tcp_rto.tcp_rto#role) to give the module one mapping per instance
    (its option O(netbpf.tcp_rto.tcp_initial_rto#module:instance)), one template for the controller to compile
    on every host, where an option each would be some twenty-five.
  - The instance's own options come as they are (the module checks and converts them); V(null) ones are left out
    by the module's action plugin.
  - C(verify) is on when both O(verify) and the instance's C(verify) are.
  - O(persistent) V(null) leaves C(persistent) and C(metrics_textfile) out; otherwise C(persistent) is on when both
    it and the instance's C(persistent) are, and a persistent run sets C(metrics_textfile) (an empty string, which
    removes the metrics timer, when O(metrics_textfile) is V(null)).
  - C(history_steps) is the instance's with O(record_history), else 0.
author: netbpf.tcp_rto developers
options:
  _input:
    description: One instance of the run, as the filter P(netbpf.tcp_rto.role_targets#filter) gives it.
    type: dict
    required: true
  verify:
    description: Whether this module run verifies (the instance's C(verify) can still turn it off).
    type: bool
    required: true
  persistent:
    description: Whether this module run keeps the instance across reboots; V(null) leaves it as it is.
    type: bool
  record_history:
    description: Whether this module run keeps records of the configuration it replaces.
    type: bool
    required: true
  pin_dir:
    description: The role's C(tcp_rto_pin_dir).
    type: str
    required: true
  mount_bpffs:
    description: The role's C(tcp_rto_mount_bpffs).
    type: bool
    required: true
  safety_factor:
    description: The role's C(tcp_rto_safety_factor).
    type: float
    required: true
  min_samples:
    description: The role's C(tcp_rto_min_samples).
    type: int
    required: true
  metrics_textfile:
    description: The role's C(tcp_rto_metrics_textfile).
    type: str
  metrics_interval_s:
    description: The role's C(tcp_rto_metrics_interval_s).
    type: int
    required: true
"""

EXAMPLES = r"""
- name: Apply one instance as the role does
  netbpf.tcp_rto.tcp_initial_rto:
    name: "{{ item.name }}"
    instance: "{{ item | netbpf.tcp_rto.role_module_args(verify=true, persistent=none, record_history=false,
                  pin_dir='/sys/fs/bpf/tcp_rto', mount_bpffs=true, safety_factor=2.0, min_samples=20,
                  metrics_textfile=none, metrics_interval_s=60) }}"
  loop: "{{ my_targets }}"
"""

RETURN = r"""
_value:
  description: Options of M(netbpf.tcp_rto.tcp_initial_rto), for its option O(netbpf.tcp_rto.tcp_initial_rto#module:instance).
  type: dict
"""

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.netbpf.tcp_rto.plugins.module_utils.record import AUTO_KEYS

# the keys of an instance of the run that are module options as they are
INSTANCE_OPTIONS = ("name", "cgroup", "unit", "rules", "rto_ms", "syn_give_up_s", "direction", "hz", "src", *AUTO_KEYS)


def _on(value):
    return boolean(value, strict=False)


def role_module_args(
    target,
    verify,
    persistent,
    record_history,
    pin_dir,
    mount_bpffs,
    safety_factor,
    min_samples,
    metrics_textfile,
    metrics_interval_s,
):
    args = {key: target.get(key) for key in INSTANCE_OPTIONS}
    kept = None if persistent is None else _on(persistent) and _on(target["persistent"])
    args.update(
        verify=_on(verify) and _on(target["verify"]),
        persistent=kept,
        metrics_textfile=(metrics_textfile or "") if kept else None,
        history_steps=target["history_steps"] if _on(record_history) else 0,
        pin_dir=pin_dir,
        mount_bpffs=mount_bpffs,
        safety_factor=safety_factor,
        min_samples=min_samples,
        metrics_interval_s=metrics_interval_s,
    )
    return args


class FilterModule:
    def filters(self):
        return {"role_module_args": role_module_args}
