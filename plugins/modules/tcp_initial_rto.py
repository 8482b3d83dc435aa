#!/usr/bin/python
# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: tcp_initial_rto
short_description: Set the TCP initial retransmission timeout per destination with a BPF program
version_added: 0.1.0
description:
  - Linux waits 1 second before it retransmits the first SYN (and SYN-ACK) of a connection. On a
    network whose round trips are a few milliseconds, a single lost SYN costs a thousand times the
    round trip. Since kernel 4.13 a BPF C(sock_ops) program attached to a cgroup v2 can answer
    C(BPF_SOCK_OPS_TIMEOUT_INIT) with another value.
  - This module loads the collection's program, fills its maps with O(rules) (destination networks
    and their initial RTO) and attaches it to O(cgroup). It needs nothing on the managed host but
    Python 3.6 or later; it makes the bpf(2) calls itself. No compiler, bpftool or libbpf.
  - Changing rules, the default or the direction only rewrites maps; the program id stays the same,
    unless the old and new rules do not fit the 1024-entry rules map together (see O(rules)).
    A new program object replaces the attached one atomically. O(state=absent) removes every kernel
    object of the instance.
  - A smaller initial RTO also shortens the time after which C(connect) to a dead peer fails
    (127 times the RTO with the default C(net.ipv4.tcp_syn_retries=6), 131 times on 6.5+ where
    C(net.ipv4.tcp_syn_linear_timeouts=4)); RV(syn_give_up_s) reports it.
    A value far below the real round trip causes spurious retransmits, after which the kernel uses
    a 3 second data RTO for the connection. Set it above the p99 handshake round trip of the network.
  - Kernel objects do not survive a reboot.
author:
  - netbpf.tcp_rto developers (@netbpf)
requirements:
  - Linux 4.16 or later with C(CONFIG_BPF_SYSCALL) and C(CONFIG_CGROUP_BPF) (4.16 for the program's
    reads of C(is_fullsock) and C(state)); bpf_link attachments where the kernel can create, update,
    read back and detach cgroup links (5.9 upstream). Each feature is probed on the host, not read
    from the kernel version, so vendor backports count.
  - A cgroup v2 hierarchy (unified or hybrid).
  - Root, or C(CAP_BPF) and C(CAP_NET_ADMIN) (C(CAP_SYS_ADMIN) on kernels without C(CAP_BPF), before 5.8).
options:
  name:
    description:
      - Name of the instance. Its kernel objects are pinned under O(pin_dir)/O(name)/.
      - One instance per cgroup.
    type: str
    required: true
  state:
    description:
      - V(present) loads, fills, attaches and pins the program as described.
      - V(absent) detaches the instance and removes its pins and maps. Nothing of it is left.
        When the instance record (the C(meta) pin) is missing or unreadable, the cgroup tree is
        searched for the instance's programs (its pinned program, or one using its pinned maps) to
        detach them; no other program is ever detached. Entries of O(pin_dir)/O(name) that are not
        the instance's pins are left alone, with the directory, and a warning names them.
    type: str
    choices: [present, absent]
    default: present
  cgroup:
    description:
      - Path of the cgroup v2 directory the program is attached to. Sockets created by processes in
        it and in its descendants get the initial RTO.
      - Defaults to the root of the cgroup v2 mount found in C(/proc/mounts), that is every socket of
        the host.
      - Not for a systemd service's own cgroup (C(.../system.slice/api.service)), which systemd replaces
        at every start of the service while the instance stays on the old one (the task warns). Give
        O(unit) instead.
      - Mutually exclusive with O(unit).
    type: path
  unit:
    description:
      - A systemd service (full name, like V(api.service)) whose processes get the initial RTO, across
        C(systemctl restart), stop and start, C(daemon-reload) and reboots, from the first connect of
        every start.
      - The module installs the drop-in C(/etc/systemd/system/<unit>.d/tcp-rto-<name>.conf), whose
        C(ExecStartPre=+) command attaches the instance to the service's new cgroup before the
        service's main process starts (loading it from the record after a boot). A failed attach
        does not keep the service from starting; the journal of the service says why.
      - When the service runs, the instance is attached to its cgroup right away and verified there;
        when it does not, it is recorded and its next start attaches it (the task warns).
      - Needs systemd as PID 1 and O(persistent=true). No C(tcp-rto@<name>.service) unit is enabled
        for it. Mutually exclusive with O(cgroup).
    type: str
  rules:
    description:
      - Destination networks and the initial RTO of connections to (outgoing) or from (incoming)
        them. The longest matching prefix wins. IPv4 rules also match IPv4-mapped IPv6 addresses.
      - IPv4 networks are held inside the IPv4-mapped range C(::ffff:0:0/96), so an IPv6 rule
        covering it (V(::/0)) matches IPv4 connections too, and an IPv6 rule inside it
        (V(::ffff:10.0.0.0/104)) is the same rule as the IPv4 network it maps; results show it
        as IPv6 in dotted form.
      - At most 1024 rules, the capacity of the program's rules map; a longer list is refused before
        anything is changed.
      - New rules are written into the live map before the old ones are removed, so that no
        connection gets the kernel default meanwhile. When the old and new rules together are more
        than 1024 entries, or a value changes while the map holds 1024 (kernels without a 6.13 fix refuse any
        update to a full map), the change takes new maps and a new program, which replaces the
        attached one atomically (RV(actions) says so); the hit counters then start from zero.
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: A network in CIDR notation without host bits, like V(10.0.0.0/8) or V(fd00::/8).
        type: str
        required: true
      rto_ms:
        description:
          - Initial RTO in milliseconds, from one jiffy (4 ms at C(HZ=250)) to 120000.
          - It is rounded up to whole jiffies; the result reports the effective value.
          - V(auto) gives each remote host the value its own handshakes taught, between O(auto_min_ms)
            and O(auto_max_ms) (see O(auto_min_ms), and the guide's section on V(auto)).
        type: raw
        required: true
      syn_give_up_s:
        description: O(syn_give_up_s) for this rule's connections (default the instance's).
        type: float
  rto_ms:
    description:
      - Initial RTO in milliseconds for connections that match no rule, or V(auto) (as a rule's).
      - Omitted, those connections keep the kernel default (1 second).
    type: raw
  auto_min_ms:
    description:
      - For V(auto) rules and default (O(rules[].rto_ms), O(rto_ms)). Each remote host learns from its
        handshakes without a retransmit (RFC 6298 SRTT + 4 RTTVAR of their round trips); once it has
        O(auto_min_samples) of them, the latest younger than O(auto_ttl_s), its SYNs and SYN-ACKs get
        that estimate times O(auto_factor), kept between O(auto_min_ms) and O(auto_max_ms). Any other
        host gets O(auto_max_ms).
      - The smallest learned value. Default 20 (two jiffies at C(HZ=100), the coarsest timer in use).
    type: int
  auto_max_ms:
    description:
      - The largest learned value, and the value of hosts without enough knowledge. Default 1000
        (the kernel's own initial RTO).
    type: int
  auto_factor:
    description: The learned estimate is multiplied by this, from 1 to 10 (steps of 0.01). Default 2.
    type: float
  auto_min_samples:
    description: Handshakes a host needs before its learned value is used. Default 3.
    type: int
  auto_ttl_s:
    description: Seconds without a sample after which a host's knowledge expires. Default 600.
    type: int
  auto_retransmit_budget:
    description:
      - A host whose SYN (and SYN-ACK) retransmits, less one per clean handshake since, exceed this
        gets O(auto_max_ms) until clean handshakes bring it back under. Default 3.
    type: int
  auto_table_size:
    description:
      - Entries of the LRU map of learned hosts (the least recently used go first), about 100 bytes of
        kernel memory each. Changing it starts the table afresh. Default 4096.
    type: int
  syn_give_up_s:
    description:
      - Seconds C(connect) to an unreachable peer keeps trying, whatever the RTO, for the connections the
        instance answers (rules without their own, and O(rto_ms)'s). The program sets the SYN retry
        count (C(TCP_SYNCNT)) of each connection so that it gives up at the first retransmission deadline
        at or past this (RV(instance.rules) shows it per rule as C(syn_give_up_s)), accounting for
        C(net.ipv4.tcp_syn_linear_timeouts) as it is when the task runs.
      - Needs O(direction) V(outgoing) or V(both), and a kernel whose C(bpf_setsockopt) takes C(TCP_SYNCNT)
        (probed; upstream about 5.9); elsewhere the task fails before changing anything.
      - Omitted, connections keep C(net.ipv4.tcp_syn_retries).
    type: float
  direction:
    description:
      - V(outgoing) sets the timeout of the SYN sent by C(connect), V(incoming) the timeout of the
        SYN-ACK a listener sends, V(both) both.
    type: str
    choices: [both, outgoing, incoming]
    default: both
  pin_dir:
    description: Directory on a bpffs where instances pin their objects.
    type: path
    default: /sys/fs/bpf/tcp_rto
  mount_bpffs:
    description: Mount bpffs on C(/sys/fs/bpf) when it is not mounted (the kernel does not do it at boot).
    type: bool
    default: true
  hz:
    description:
      - The kernel's C(CONFIG_HZ), to convert milliseconds to jiffies.
      - Omitted, it is read from C(/boot/config-<release>) or C(/proc/config.gz), and when neither
        exists measured on the kernel itself (the tick of C(CLOCK_MONOTONIC_COARSE) is one jiffy).
    type: int
  verify:
    description:
      - After applying, start TCP handshakes on loopback from a process in O(cgroup) and compare the
        initial RTO the kernel gives them with the value the rules give loopback. A C(connect) is
        always checked (it keeps the kernel default when O(direction=incoming)); the SYN-ACK timer of a
        listener in the cgroup when O(direction) includes V(incoming).
      - Each descendant cgroup with a foreign sock_ops program of its own (at most 8) gets a C(connect())
        check too.
      - A mismatch (for example a program of an ancestor cgroup overriding the value) fails the task,
        and RV(conflicts) names the foreign programs that can explain it.
      - Where loopback gets V(auto), any value from O(auto_min_ms) to O(auto_max_ms) matches (the check's
        C(expected_ms) is V(auto), C(expected_range_ms) the range).
    type: bool
    default: true
  src:
    description:
      - The BPF object to load, a path on the controller. A C(.c) file is compiled on the controller
        with C(clang -O2 -g -target bpf), its DWARF stripped with C(llvm-strip) (BTF kept).
      - Maps may be BTF-defined in a C(.maps) section, as libbpf 1.0+ writes them, or legacy
        C(struct bpf_map_def) definitions in a C(maps) section. The object's BTF is loaded where the
        kernel takes it, so that C(bpftool map dump) shows typed keys and values and
        C(bpftool prog dump xlated) the source lines; where the kernel refuses it the object loads
        without.
      - Omitted, the object shipped with the collection (C(plugins/plugin_utils/tcp_initial_rto.bpf.o),
        built from C(files/bpf/tcp_initial_rto.bpf.c)).
      - The object must have a C(sockops) program, a GPL-compatible license and the maps
        C(rules), C(config) and C(hits) of the collection's program.
      - The action plugin sends the object to the host inside the module's arguments
        (O(src_object_base64)); given to the module without its action plugin, O(src) is a path on the host.
    type: path
  metrics_textfile:
    description:
      - With O(persistent=true), installs the host's metrics timer C(tcp-rto-metrics.timer), which every
        O(metrics_interval_s) seconds writes the handshake telemetry of every instance under O(pin_dir) to this
        file in the Prometheus text format, for node_exporter's textfile collector (metrics and labels as
        M(netbpf.tcp_rto.tcp_initial_rto_info) writes them with its
        O(netbpf.tcp_rto.tcp_initial_rto_info#module:metrics_textfile)). Its service runs the collection's code
        that persistence copies to C(/var/lib/tcp_rto/), without Ansible.
      - The timer is one per host; the last run that gives a path sets it. An empty string stops and removes
        it. Omitted, the timer stays as it is. It also goes with the last persistent instance of the host
        (whose removal takes the code it runs).
      - An absolute path of letters, digits and C(._-/:+@) (systemd takes it as one word).
      - Ignored with O(state=absent); the timer goes with the last persistent instance.
    type: path
    version_added: 0.3.0
  metrics_interval_s:
    description: How often, in seconds, the metrics timer of O(metrics_textfile) refreshes the file.
    type: int
    default: 60
    version_added: 0.3.0
  instance:
    description:
      - This module's options as one mapping, for example an entry of a list of instances kept in the
        inventory, without a C(default(omit)) for each option. An option given on its own wins over the
        same key of O(instance); a key set to V(null) counts as left out.
      - Spread out on the controller by the module's action plugin; the host never sees it.
        Templating one mapping costs the controller less than templating each option.
      - O(name) is given on its own too, as the task's required option.
    type: dict
    version_added: 0.3.0
  src_object_base64:
    description:
      - Internal, set by the action plugin; do not set it. The BPF object's content in base64, which the
        module writes to a private temporary file on the host for the run (one remote command per
        task with pipelining, no separate file transfer).
    type: str
    version_added: 0.3.0
  persistent:
    description:
      - Keep the instance across reboots. The module records its parameters in
        C(/etc/tcp_rto/<name>.json), copies the object and the collection's own Python code (standard
        library only) to C(/var/lib/tcp_rto/), with that code compiled by the module's Python (later
        runs of the modules take it rather than compile the same code again; a cache, not reported
        as a change), and enables and starts the systemd unit
        C(tcp-rto@<name>.service) (a oneshot ordered before C(network-online.target)) that applies
        the record at boot with that code, verified on real handshakes when O(verify=true). No
        Ansible, compiler or bpftool is needed at boot.
      - The unit runs the system's Python (C(/usr/bin/python3) when it is safe) with C(-I). The
        interpreter, what it links to and every directory above them must be owned by root and
        writable by no one else, else the task fails before any change.
      - V(false) on an instance that has a record removes the record, and stops and disables its unit
        (the unit file and the copied code go with the last record); the kernel keeps the instance
        until the next boot.
      - Omitted, an instance that has a record keeps it, rewritten with these parameters (so the next
        boot applies what the kernel holds now); an instance without one gets none.
      - A unit left failed (a failed boot restore) is reset and started by the next run that records
        the instance.
      - O(state=absent) removes the record, the unit and the copied files whatever this option says.
    type: bool
  lock_timeout:
    description:
      - Runs on one instance take turns through a lock, C(/run/tcp_rto/<name>.lock) (with a hash of
        O(pin_dir) in the name when it is not the default). Seconds a run waits for another run of
        the same instance to finish before it fails with a message to retry; V(0) does not wait.
      - Runs on other instances never wait for each other. Check mode reads without the lock.
    type: int
    default: 60
  safety_factor:
    description:
      - Harm warnings. A rule (or O(rto_ms)) whose initial RTO is below this many times the p99 handshake
        round trip measured on its own connections is reported in RV(harm_warnings) and as a warning of
        the task, once at least O(min_samples) round trips were measured.
      - The round trips are those the program counted since the rule got its slot (RV(instance.rules)
        shows them as C(rtt_us) and C(rtt_samples)); see the collection's docs/tcp_initial_rto.md for how
        to pick a value.
    type: float
    default: 3.0
    version_added: 0.3.0
  min_samples:
    description:
      - Harm warnings. How many handshake round trips a rule must have measured before its p99 is
        trusted for O(safety_factor) (with fewer, the p99 is little more than the largest sample).
    type: int
    default: 100
    version_added: 0.3.0
  history_steps:
    description:
      - How many history records of the instance's configuration before its changes to keep for
        the rollback of the role C(netbpf.tcp_rto.tcp_rto) (its C(rollback) entry point), which sets
        this option. When a run with O(state=present) changes the configuration (cgroup or unit,
        rules, default, direction, O(syn_give_up_s), the C(auto_*) settings), the configuration before it becomes
        C(/etc/tcp_rto/<name>.previous.json); the older records move to
        C(<name>.previous.2.json) and so on, and those beyond this number are dropped.
      - V(0) writes no record and leaves existing ones alone. Check mode writes none.
    type: int
    default: 0
    version_added: 0.3.0
attributes:
  action:
    description: Picks the object on the controller and transfers it to the managed host.
    support: full
  check_mode:
    description: Computes the same plan, and whether it would change anything, without touching the kernel.
    support: full
  diff_mode:
    description: Returns the instance's configuration before and after.
    support: full
  platform:
    description: Linux hosts only.
    support: full
    platforms: posix
notes:
  - Programs in a cgroup run from the socket's own cgroup up to the root, all writing one reply.
    The program leaves a value already set by a program of a cgroup closer to the socket, so when
    instances nest the most specific cgroup wins.
  - Programs that other tools attached to the cgroup are never detached, replaced or reordered;
    RV(foreign_programs) lists them, on the cgroup, its ancestors and its descendants. Where such a
    program keeps the kernel from attaching ours (attached without C(multi) to the cgroup, or
    exclusive to an ancestor), the task fails before any change, in check mode too, and names it.
  - Drift (a pin deleted, the program detached or a map entry edited outside the module) is reported
    in RV(drift) and repaired; check mode reports it without repairing.
  - A run killed at any point (SIGKILL, power cut) leaves no attachment or pin behind that the next
    run does not repair; the next run reports what it removed.
seealso:
  - name: Kernel sample tcp_synrto_kern.c
    description: The kernel's own example of a sock_ops program that sets the SYN RTO.
    link: https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/samples/bpf/tcp_synrto_kern.c
"""

EXAMPLES = r"""
- name: Faster SYN retries inside the datacenter, kernel default elsewhere
  netbpf.tcp_rto.tcp_initial_rto:
    name: dc
    rules:
      - dest: 10.0.0.0/8
        rto_ms: 50
      - dest: fd00::/8
        rto_ms: 50

- name: Only the SYNs of one service's own connects, across its restarts and reboots
  netbpf.tcp_rto.tcp_initial_rto:
    name: api
    unit: api.service
    persistent: true
    direction: outgoing
    rules:
      - dest: 192.0.2.0/24
        rto_ms: 100
    rto_ms: 500

- name: Each instance of a list kept in the inventory
  netbpf.tcp_rto.tcp_initial_rto:
    name: "{{ item.name }}"
    instance: "{{ item }}"
  loop: "{{ my_rto_instances }}"
  loop_control:
    label: "{{ item.name }}"

- name: Remove the instance and everything it put in the kernel
  netbpf.tcp_rto.tcp_initial_rto:
    name: dc
    state: absent
"""

RETURN = r"""
instance:
  description: The instance as the kernel now holds it (as it would with O(state=present) in check mode).
  returned: when O(state=present)
  type: dict
  contains:
    name: {description: Instance name., type: str, sample: dc}
    cgroup: {description: The cgroup the program is attached to., type: str, sample: /sys/fs/cgroup}
    pin_dir: {description: Where the instance's objects are pinned., type: str, sample: /sys/fs/bpf/tcp_rto/dc}
    program_id: {description: Kernel id of the attached program (null in check mode before creation)., type: int, sample: 42}
    attach_mode: {description: V(link) (a pinned bpf_link) or V(multi) (BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI)., type: str, sample: link}
    direction: {description: Which handshakes the program answers., type: str, sample: both}
    rules:
      description:
        - The rules in order, with the effective value in ms and jiffies, and hits since the rule was set.
        - C(syn_give_up_s) is when C(connect) to an unreachable peer gives up with the rule's RTO and SYN
          retries (O(syn_give_up_s), else C(net.ipv4.tcp_syn_retries)).
        - For a V(auto) rule C(rto_ms) is V(auto), C(rto_jiffies) its upper bound (O(auto_max_ms)), and
          C(syn_give_up_s) the give-up at O(auto_min_ms), the soonest. What each host learned is not
          configuration; the info module shows it (C(learned)).
        - C(handshakes) (C(outgoing), C(incoming)) counts completed handshakes, C(syn_retransmits) SYN
          retransmits of C(connect) (completed or not), C(synack_retransmits) SYN-ACK retransmits of completed
          incoming handshakes, C(spurious_retransmits) handshakes whose last SYN retransmit was not needed (an
          estimate), C(rtt_us) the C(p50), C(p90) and C(p99) round trip in microseconds of handshakes without
          a retransmit (null without samples), C(rtt_samples) how many round trips they come from; all summed over
          CPUs since the rule got its slot, and null for an instance applied by an earlier object until its next
          apply.
      type: list
      elements: dict
      sample:
        - {dest: 10.0.0.0/8, rto_ms: 52, rto_jiffies: 13, hits: 1200, syn_give_up_s: 6.604,
           handshakes: {outgoing: 1180, incoming: 0}, syn_retransmits: 21, synack_retransmits: 0,
           spurious_retransmits: 2, rtt_us: {p50: 180, p90: 410, p99: 950}, rtt_samples: 1159}
    default_rto_ms:
      description: Effective value for connections matching no rule (null = kernel default, V(auto) learned).
      type: raw
      sample: 1000
    auto:
      description:
        - The settings of V(auto) rules and default (C(min_ms), C(max_ms), C(factor), C(min_samples), C(ttl_s),
          C(retransmit_budget), C(table_size)); null when no rule or default is V(auto).
      type: dict
      sample: {min_ms: 20, max_ms: 1000, factor: 2.0, min_samples: 3, ttl_s: 600, retransmit_budget: 3, table_size: 4096}
    default_hits: {description: Connections that got the default value., type: int, sample: 3}
    default_telemetry:
      description: The telemetry fields of RV(instance.rules) for connections that got the default value.
      type: dict
      sample: {handshakes: {outgoing: 3, incoming: 0}, syn_retransmits: 0, synack_retransmits: 0, spurious_retransmits: 0,
               rtt_us: {p50: 96, p90: 120, p99: 127}, rtt_samples: 3}
    object_sha256: {description: SHA-256 of the loaded object., type: str}
kernel:
  description: What the module found on the host.
  returned: always
  type: dict
  contains:
    release: {description: Kernel release., type: str, sample: 6.1.0-28-amd64}
    hz: {description: CONFIG_HZ used to convert milliseconds., type: int, sample: 250}
    hz_source: {description: 'Where HZ came from (a file, V(measured) or V(parameter)).', type: str, sample: /proc/config.gz}
    features:
      description:
        - Kernel features the module relies on and whether this kernel has them, each decided by a probe
          on the host (see docs/compatibility.md), plus C(rto_capped) and C(synack_backoff_from_bpf),
          which are TCP behaviours read from the release for information only.
      type: dict
      sample: {cgroup_link: true, link_info: true, link_detach: true, link_update: true, prog_replace: true, memcg_accounting: true}
verification:
  description: The handshake probes after applying; RV(verification.ok) is false only when the task failed.
  returned: when O(state=present) and O(verify=true) and not in check mode
  type: dict
  contains:
    ok: {description: Whether every check matched., type: bool, sample: true}
    checks:
      description:
        - One entry per handshake probed, V(outgoing) always, V(incoming) when O(direction) includes it.
        - An V(outgoing) check in each descendant cgroup with a foreign program of its own, with the key
          C(cgroup) (the other checks are made in O(cgroup)).
      type: list
      elements: dict
      sample: [{direction: outgoing, address: 127.0.0.1, expected_ms: 52, observed_ms: 52, ok: true}]
harm_warnings:
  description:
    - The rules (C(dest), V(default) for O(rto_ms)) whose initial RTO is below O(safety_factor) times the p99
      handshake round trip measured on their connections (C(p99_us)), with at least O(min_samples) samples
      (C(samples)); each C(message) is also a warning of the task. Empty when none is.
  returned: when O(state=present) and the instance is loaded
  type: list
  elements: dict
  sample: [{instance: dc, dest: 10.0.0.0/8, rto_ms: 52, p99_us: 24576, samples: 1180,
            message: "dc: rule 10.0.0.0/8: initial RTO 52 ms is below 3.0 x the p99 handshake round trip ..."}]
  version_added: 0.3.0
syn_give_up_s:
  description:
    - Seconds after which C(connect) to an unreachable peer gives up, for the smallest configured
      RTO, from C(net.ipv4.tcp_syn_retries) and C(net.ipv4.tcp_syn_linear_timeouts).
  returned: when O(state=present)
  type: float
  sample: 6.35
foreign_programs:
  description:
    - Other sock_ops programs that run, or could run, for sockets in O(cgroup) and below. They are
      left as they are. Programs of other instances of this module are not listed.
    - C(cgroup) where it is attached; C(relation) V(same), V(ancestor) or V(descendant);
      C(attach) V(exclusive), V(override), V(multi) or V(link) (C(attach_flags) as the kernel
      reports them for that cgroup); C(runs) V(before) or V(after) ours for sockets in the cgroup
      it is attached to (in O(cgroup) for an ancestor), V(not) when the kernel leaves it out (an
      ancestor without C(multi) once a cgroup below has programs), null when ours is not attached.
    - Empty with O(state=absent).
  returned: always
  type: list
  elements: dict
  sample: [{id: 17, name: other_prog, tag: 3b1d2c7a5e9f0a11, cgroup: /sys/fs/cgroup, relation: ancestor,
            attach: multi, attach_flags: 2, runs: after}]
conflicts:
  description:
    - When verification fails, the foreign programs that can explain it, from the programs that run
      for the sockets of the failed check in the order the kernel runs them and the value observed.
      A program that runs after ours can overwrite the reply; one that runs before ours can set a
      reply ours then leaves alone; any program returning 0 gives the kernel default.
    - C(sockets_in) is the cgroup of the failed check; C(why) says how the program can cause it.
    - Empty when verification passes or does not run (check mode, O(verify=false)).
  returned: always
  type: list
  elements: dict
  sample: [{id: 17, name: other_prog, cgroup: /sys/fs/cgroup, relation: ancestor, attach: multi, runs: after,
            sockets_in: /sys/fs/cgroup/app, why: runs after ours for sockets in /sys/fs/cgroup/app and overwrites the reply ours set}]
drift:
  description:
    - What changed in the instance outside this module since it last wrote it, one sentence each
      (a pin deleted, the program detached, a rules or config map entry edited). The run repairs it
      (check mode only reports it); with O(state=present) and diff mode it is also in the diff's
      before. A change of parameters is not drift.
  returned: always
  type: list
  elements: str
  sample: ["rules map: 10.0.0.0/8 holds 250 jiffies, tcp_rto wrote 13"]
unit_running:
  description:
    - With O(unit), whether the service ran, so that the instance was attached to its cgroup now;
      V(false) means its next start attaches it.
  returned: when O(unit) is given and O(state=present)
  type: bool
  sample: true
before:
  description:
    - The instance's configuration before this run, as a history record holds it (see
      O(history_steps)), C(state) V(absent), or V(present) with C(cgroup) (null for an instance that
      follows a unit), C(unit), C(rules) (C(dest), C(rto_ms)), C(rto_ms) and C(direction). Also
      returned when the task fails, so that a caller can put the instance back. Null when the pins
      could not be read.
  returned: when O(state=present)
  type: dict
  sample: {state: present, cgroup: /sys/fs/cgroup/dc.slice, unit: null, rules: [{dest: 10.0.0.0/8, rto_ms: 52}], rto_ms: null, direction: both}
  version_added: 0.3.0
history_record:
  description: The history record this run wrote (see O(history_steps)).
  returned: when a record was written
  type: str
  sample: /etc/tcp_rto/dc.previous.json
  version_added: 0.3.0
actions:
  description: What was (or in check mode would be) changed.
  returned: always
  type: list
  elements: str
  sample: ["update rules"]
"""

import base64
import contextlib
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bytecode, host_paths

# First: the imports below then take the code compiled on an earlier run (bytecode).
bytecode.use_copies(host_paths.Layout(host_paths.host_root()).code_dir)

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import harm, history, reconcile

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    cgroup=dict(type="path"),
    unit=dict(type="str"),
    rules=dict(
        type="list",
        elements="dict",
        default=[],
        options=dict(
            dest=dict(type="str", required=True),
            rto_ms=dict(type="raw", required=True),
            syn_give_up_s=dict(type="float"),
        ),
    ),
    rto_ms=dict(type="raw"),
    auto_min_ms=dict(type="int"),
    auto_max_ms=dict(type="int"),
    auto_factor=dict(type="float"),
    auto_min_samples=dict(type="int"),
    auto_ttl_s=dict(type="int"),
    auto_retransmit_budget=dict(type="int"),
    auto_table_size=dict(type="int"),
    syn_give_up_s=dict(type="float"),
    direction=dict(type="str", choices=["both", "outgoing", "incoming"], default="both"),
    pin_dir=dict(type="path", default="/sys/fs/bpf/tcp_rto"),
    mount_bpffs=dict(type="bool", default=True),
    hz=dict(type="int"),
    verify=dict(type="bool", default=True),
    src=dict(type="path"),
    persistent=dict(type="bool"),
    lock_timeout=dict(type="int", default=60),
    history_steps=dict(type="int", default=0),
    safety_factor=dict(type="float", default=harm.DEFAULT_SAFETY_FACTOR),
    min_samples=dict(type="int", default=harm.DEFAULT_MIN_SAMPLES),
    metrics_textfile=dict(type="path"),
    metrics_interval_s=dict(type="int", default=60),
    instance=dict(type="dict"),
    src_object_base64=dict(type="str", no_log=True),
)


def read_before(params):
    """{"before": configuration} for a run with state present (see history_steps), else {}."""
    if params["state"] != "present":
        return {}
    return dict(before=history.configuration(params["pin_dir"], params["name"]))


def record_history(params, before, check_mode):
    """{"history_record": path} when this run changed the configuration and history_steps asks for
    records, else {}."""
    if not params["history_steps"] or check_mode or not before or before["before"] is None:
        return {}
    if history.configuration(params["pin_dir"], params["name"]) == before["before"]:
        return {}
    return dict(history_record=history.push(params["name"], before["before"], params["history_steps"]))


@contextlib.contextmanager
def sent_object(params):
    """params with src the object the action plugin sent in src_object_base64 (a private temporary
    file, removed after the run), or params as they are."""
    if not params["src_object_base64"]:
        yield params
        return
    directory = tempfile.mkdtemp(prefix="tcp_rto-")
    try:
        path = os.path.join(directory, "tcp_initial_rto.bpf.o")
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(params["src_object_base64"]))
        yield dict(params, src=path, src_object_base64=None)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if module.params["instance"] is not None:
        module.fail_json(
            msg="instance is spread out by the module's action plugin on the controller, which did not run; "
            "give the options on their own"
        )
    with sent_object(module.params) as params:
        run(module, params)


def run(module, params):
    if params["history_steps"] < 0:
        module.fail_json(msg="history_steps must be 0 (no records) or more, not %d" % params["history_steps"])
    before = read_before(params)
    try:
        result = reconcile.run(params, check_mode=module.check_mode, diff=module._diff)
    except reconcile.VerificationFailed as exc:
        module.fail_json(msg=to_native(exc), **dict(exc.result, **before))
    except reconcile.ERRORS as exc:
        module.fail_json(msg=reconcile.describe_error(exc), **before)
    try:
        result.update(before, **record_history(params, before, module.check_mode))
    except reconcile.ERRORS as exc:
        module.fail_json(
            msg="writing the history record failed: %s" % reconcile.describe_error(exc), **dict(result, **before)
        )
    module.exit_json(**result)


def _shipped_for_persistence():
    """Never called. Ansible ships to the host the module_utils a module imports anywhere in its
    file; persistence copies restore, info and metrics from there for the boot-time restore and the
    metrics timer, which a run itself does not import (each import is compiled on every run)."""
    from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (  # noqa: F401 pylint: disable=unused-import
        info,
        metrics,
        restore,
    )


if __name__ == "__main__":
    main()
