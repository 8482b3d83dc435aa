#!/usr/bin/python
# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: tcp_initial_rto_info
short_description: Report the TCP initial RTO instances of a host and whether it can run them
version_added: 0.1.0
description:
  - Read-only. Tells whether the host can run the collection's BPF program and, when not, why
    (kernel, cgroup v2 mount, privileges), with the kernel's C(CONFIG_HZ).
  - Lists every instance of M(netbpf.tcp_rto.tcp_initial_rto) pinned under O(pin_dir) with its
    cgroup, rules, default, direction, program id, attach mode, whether it is attached, whether it
    is persistent, and hit counters summed over CPUs.
  - Lists the other sock_ops programs on the instances' cgroups and on the cgroups in O(cgroups).
  - Runs on any host; on a host that cannot run the program it reports the reasons and no instances.
author:
  - netbpf.tcp_rto developers (@netbpf)
options:
  pin_dir:
    description: Directory on bpffs where instances are pinned, as given to M(netbpf.tcp_rto.tcp_initial_rto).
    type: path
    default: /sys/fs/bpf/tcp_rto
  cgroups:
    description: More cgroup v2 directories whose attached sock_ops programs to report.
    type: list
    elements: path
    default: []
  safety_factor:
    description:
      - Harm warnings, as M(netbpf.tcp_rto.tcp_initial_rto) reports them with its
        O(netbpf.tcp_rto.tcp_initial_rto#module:safety_factor). A rule or default whose initial RTO is
        below this many times the p99 handshake round trip measured on its connections is listed in
        RV(instances[].harm_warnings) and warned about.
    type: float
    default: 3.0
    version_added: 0.3.0
  min_samples:
    description: Harm warnings. How many handshake round trips a rule must have measured before its p99 counts.
    type: int
    default: 100
    version_added: 0.3.0
  metrics_textfile:
    description:
      - Also write the handshake telemetry of every instance to this file in the Prometheus text format,
        for node_exporter's textfile collector (give a path ending in C(.prom) in its directory).
      - The file is replaced atomically (a temporary file in the same directory, renamed over it) with
        mode C(0644); the task is changed only when the content changed. Check mode writes nothing.
      - Metrics, each labelled C(name) (the instance) and C(rule) (the rule's C(dest), or V(default)), are
        C(tcp_rto_handshakes_total) (and C(direction) V(outgoing) or V(incoming)),
        C(tcp_rto_syn_retransmits_total), C(tcp_rto_synack_retransmits_total),
        C(tcp_rto_spurious_retransmits_total) (counters), C(tcp_rto_rtt_us) (histogram of handshake round
        trips in microseconds, C(_bucket) with C(le), C(_sum), C(_count)) and C(tcp_rto_initial_rto_us) (gauge).
      - For V(auto), labelled C(name) and C(host) (each host of RV(instances[].learned)), the gauges
        C(tcp_rto_learned_rto_us), C(tcp_rto_learned_estimate_us) and C(tcp_rto_learned_samples).
      - The role netbpf.tcp_rto.tcp_rto installs a systemd timer that refreshes such a file
        (its C(tcp_rto_metrics_textfile)).
    type: path
    version_added: 0.3.0
attributes:
  check_mode:
    description: Read-only; runs the same in check mode.
    support: full
  diff_mode:
    description: Changes nothing, so there is no diff.
    support: none
  platform:
    description: Linux hosts only.
    support: full
    platforms: posix
seealso:
  - module: netbpf.tcp_rto.tcp_initial_rto
"""

EXAMPLES = r"""
- name: What does this host hold?
  netbpf.tcp_rto.tcp_initial_rto_info:
  register: rto

- name: Fail where the program cannot run
  ansible.builtin.assert:
    that: rto.supported
    fail_msg: "{{ rto.unsupported_reasons | join('; ') }}"

- name: Hits per rule of the instance dc
  ansible.builtin.debug:
    msg: "{{ (rto.instances | selectattr('name', 'equalto', 'dc') | first).rules }}"
"""

RETURN = r"""
supported:
  description: Whether the program can run on this host.
  returned: always
  type: bool
  sample: true
unsupported_reasons:
  description: Why not, each with what to do.
  returned: always
  type: list
  elements: str
  sample: ["kernel 4.9.0-19-amd64 lacks sock_ops programs reading is_fullsock and state (4.16): Linux 4.16 or later is needed ..."]
kernel:
  description:
    - Kernel release, CONFIG_HZ and where it came from, and the features the collection uses as probed on
      the host (C(features) is empty when the probes cannot run, e.g. without root).
  returned: always
  type: dict
  sample: {release: 6.1.0-28-amd64, hz: 250, hz_source: /boot/config-6.1.0-28-amd64, features: {cgroup_link: true}}
cgroup2_mount:
  description: Where the cgroup v2 hierarchy is mounted (null when it is not).
  returned: always
  type: str
  sample: /sys/fs/cgroup
records_dir:
  description:
    - Where the host keeps the records of persistent instances (C(/etc/tcp_rto)); the role
      netbpf.tcp_rto.tcp_rto keeps its history of configurations there too.
  returned: always
  type: str
  sample: /etc/tcp_rto
bpffs_mounted:
  description: Whether the parent of O(pin_dir) is a bpffs.
  returned: always
  type: bool
instances:
  description: The instances pinned under O(pin_dir).
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Instance name., type: str}
    cgroup: {description: Cgroup it is attached to (as recorded)., type: str}
    attached: {description: Whether its program is attached there now., type: bool}
    attach_mode: {description: V(link) or V(multi)., type: str}
    program_id: {description: Kernel program id., type: int}
    direction: {description: 'V(both), V(outgoing) or V(incoming).', type: str}
    rules:
      description:
        - Rules with effective ms, jiffies and hits summed over CPUs.
        - C(handshakes) (C(outgoing), C(incoming)) counts completed handshakes, C(syn_retransmits) SYN
          retransmits of C(connect) (completed or not), C(synack_retransmits) SYN-ACK retransmits of completed
          incoming handshakes, C(spurious_retransmits) handshakes whose last SYN retransmit was not needed (an
          estimate), C(rtt_us) the C(p50), C(p90) and C(p99) round trip in microseconds of handshakes without
          a retransmit (null without samples), C(rtt_samples) how many round trips they come from; all summed over
          CPUs since the rule got its slot, and null for an instance applied by an earlier object until its next
          apply.
      type: list
      elements: dict
    default_rto_ms: {description: 'Value for connections matching no rule (null = kernel default, V(auto) learned).', type: raw}
    auto:
      description:
        - The settings of V(auto) rules and default (C(min_ms), C(max_ms), C(factor), C(min_samples), C(ttl_s),
          C(retransmit_budget), C(table_size)), null when none is V(auto); see the module's
          O(netbpf.tcp_rto.tcp_initial_rto#module:auto_min_ms).
      type: dict
    learned:
      description:
        - What V(auto) learned, for the 20 remote hosts with the most samples (empty when no rule or default is
          V(auto)) - C(host); C(samples) (handshakes without a retransmit); C(srtt_us), C(rttvar_us) and
          C(estimate_us) (SRTT + 4 RTTVAR, RFC 6298); C(retransmits) (outstanding against the budget); C(age_s)
          since the last sample; C(rto_ms) the initial RTO a SYN to the host gets now; C(fallback) why that is
          the upper bound (V(too_few_samples), V(expired), V(over_retransmit_budget)), null when it is learned.
      type: list
      elements: dict
      sample: [{host: 10.1.2.3, samples: 41, srtt_us: 180, rttvar_us: 40, estimate_us: 340, retransmits: 0,
                age_s: 2.5, rto_ms: 20, fallback: null}]
    configuration:
      description:
        - The instance's configuration as module options, what a rollback puts back (the role keeps it as the
          history record) - C(state), C(cgroup) (null for an instance that follows a unit), C(unit), C(rules)
          (each with C(dest), C(rto_ms), C(syn_give_up_s)), C(rto_ms), C(syn_give_up_s), C(direction) and
          C(auto_min_ms) ... C(auto_table_size).
        - Where the host's boot record describes what the kernel holds, its values as they were written;
          otherwise read from the kernel (a C(syn_give_up_s) is then the deadline, to the millisecond).
      type: dict
      sample: {state: present, cgroup: /sys/fs/cgroup/system.slice/api.service, unit: null,
               rules: [{dest: 10.0.0.0/8, rto_ms: 50, syn_give_up_s: 3}], rto_ms: null, syn_give_up_s: null,
               direction: both, auto_min_ms: null, auto_max_ms: null, auto_factor: null, auto_min_samples: null,
               auto_ttl_s: null, auto_retransmit_budget: null, auto_table_size: null}
    default_hits: {description: Connections that got the default., type: int}
    default_telemetry: {description: 'The telemetry fields of RV(instances[].rules) for connections that got the default.', type: dict}
    harm_warnings:
      description:
        - The rules (C(dest), V(default) for the default) whose initial RTO is below O(safety_factor) times the
          p99 handshake round trip measured on their connections (C(p99_us)), with at least O(min_samples)
          samples (C(samples)), each with its C(message) (also a warning of the task). Empty when none is.
      type: list
      elements: dict
      version_added: 0.3.0
    persistent: {description: Whether a record restores it at boot., type: bool}
    unit:
      description:
        - The systemd service whose starts attach it (the module's
          O(netbpf.tcp_rto.tcp_initial_rto#module:unit)), or null.
      type: str
    state:
      description:
        - V(ok); V(detached) (the program is not attached to its cgroup, for example because the cgroup was
          removed or re-created, as systemd does at every start of a unit); V(drift) (a map edited outside
          tcp_rto, or the unit it follows is missing); V(damaged) (pins or the program missing).
      type: str
      sample: ok
    problems:
      description: What is wrong with it, each with the reason (empty when its state is V(ok)).
      type: list
      elements: str
    foreign_programs: {description: Other sock_ops programs attached to its cgroup., type: list, elements: dict}
  sample: [{name: dc, cgroup: /sys/fs/cgroup, attached: true, attach_mode: link, program_id: 42, direction: both,
            rules: [{dest: 10.0.0.0/8, rto_ms: 52, rto_jiffies: 13, hits: 1200, handshakes: {outgoing: 1180, incoming: 0},
                     syn_retransmits: 21, synack_retransmits: 0, spurious_retransmits: 2,
                     rtt_us: {p50: 180, p90: 410, p99: 950}, rtt_samples: 1159}], default_rto_ms: null,
            default_hits: 0, default_telemetry: {handshakes: {outgoing: 0, incoming: 0}, syn_retransmits: 0,
                                                 synack_retransmits: 0, spurious_retransmits: 0, rtt_us: null,
                                                 rtt_samples: 0},
            harm_warnings: [],
            persistent: true, unit: null, state: ok, problems: [], foreign_programs: []}]
recorded_not_loaded:
  description: Persistent instances whose record exists but which the kernel does not hold (not restored yet).
  returned: always
  type: list
  elements: str
problems:
  description:
    - Every problem of the host's instances, as C(<name>) followed by a colon and the problem, and one
      line per recorded instance the kernel does not hold (its boot restore did not run or failed, or
      the service it follows has not started), each with where to look, and one per history record that
      cannot be read (RV(history)). Empty on a healthy host.
  returned: always
  type: list
  elements: str
  sample:
    - "api: detached: program 42 is not attached to /sys/fs/cgroup/system.slice/api.service: the cgroup was
      removed and re-created, ..."
history:
  description:
    - For each instance with a history record (kept by the role P(netbpf.tcp_rto.tcp_rto#role) and by
      M(netbpf.tcp_rto.tcp_initial_rto) with O(netbpf.tcp_rto.tcp_initial_rto#module:history_steps)), the
      configuration a rollback puts back (C(previous), as RV(instances[].configuration) gives it; null when the
      record cannot be read, which RV(problems) then names) and how many records it keeps (C(records), how many
      rollbacks in a row can go back).
    - An instance can have history and no longer exist (its last change created it; a rollback removes it).
  returned: always
  type: dict
  version_added: 0.3.0
  sample: {api: {previous: {state: present, cgroup: /sys/fs/cgroup/system.slice/api.service, unit: null,
                            rules: [{dest: 10.0.0.0/8, rto_ms: 200, syn_give_up_s: null}], rto_ms: null,
                            syn_give_up_s: null, direction: both},
                 records: 2},
           batch: {previous: {state: absent}, records: 1}}
foreign_programs:
  description: For each cgroup of O(cgroups), the sock_ops programs attached to it.
  returned: always
  type: dict
  sample: {/sys/fs/cgroup/system.slice: [{id: 17, name: other_prog, tag: 3b1d2c7a5e9f0a11, attach_flags: 2}]}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bytecode, host_paths

# First: the imports below then take the code compiled on an earlier run (bytecode).
bytecode.use_copies(host_paths.Layout(host_paths.host_root()).code_dir)

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import harm, history, info, metrics
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import ConfigError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pin_dir=dict(type="path", default="/sys/fs/bpf/tcp_rto"),
            cgroups=dict(type="list", elements="path", default=[]),
            safety_factor=dict(type="float", default=harm.DEFAULT_SAFETY_FACTOR),
            min_samples=dict(type="int", default=harm.DEFAULT_MIN_SAMPLES),
            metrics_textfile=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        gathered, instances = info.read_host(
            params["pin_dir"], params["cgroups"], params["safety_factor"], params["min_samples"]
        )
    except ConfigError as exc:
        module.fail_json(msg=to_native(exc))
    except (OSError, ValueError) as exc:
        module.fail_json(msg="reading the host's BPF state failed: %s" % to_native(exc))
    # here, not in info.read_host: the metrics timer runs that without history's code
    for view in gathered["instances"]:
        view["configuration"] = history.configuration(params["pin_dir"], view["name"])
    gathered["history"] = history.kept(host_paths.Layout(host_paths.host_root()))
    gathered["problems"] += [
        "%s: its history record %s.previous.json in %s cannot be read as a configuration: a rollback of %s "
        "fails until the record is fixed or removed" % (name, name, gathered["records_dir"], name)
        for name, kept in gathered["history"].items()
        if kept["previous"] is None
    ]
    changed = False
    if params["metrics_textfile"]:
        try:
            changed = metrics.write_textfile(params["metrics_textfile"], metrics.render(instances), module.check_mode)
        except OSError as exc:
            module.fail_json(
                msg="writing metrics_textfile %s failed: %s: give a path in an existing directory root can write"
                % (params["metrics_textfile"], to_native(exc)),
                **gathered,
            )
    warnings = [warning["message"] for view in gathered["instances"] for warning in view["harm_warnings"]]
    if warnings:
        gathered["warnings"] = warnings
    module.exit_json(changed=changed, **gathered)


if __name__ == "__main__":
    main()
