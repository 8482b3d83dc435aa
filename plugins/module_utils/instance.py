# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The domain: what the user asks for (Desired), what the kernel holds (Current), the plan
between them and applying it. Plain stdlib: the boot-time restore uses it without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import errno
import hashlib
import ipaddress
import json
import os
import re
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple, Union

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall as bpf
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host, telemetry
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program as abi

# The kernel caps the initial RTO at TCP_RTO_MAX since 5.18; older kernels take any value, so we
# enforce the cap everywhere: a longer first SYN timeout is never what anyone wants.
MAX_RTO_MS = 120000
KERNEL_DEFAULT_RTO_MS = 1000  # TCP_TIMEOUT_INIT

ATTACH_LINK = "link"
ATTACH_MULTI = "multi"

PROG_PIN = "prog"
LINK_PIN = "link"
META_MAP = "meta"
META_VALUE_SIZE = 4096
META_FORMAT = 1
# bpffs refuses names with a dot (reserved), so neither instance names nor pins have one.
INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}\Z")  # \Z: $ would allow a final newline
NEW_PIN_PREFIX = "new_"  # a pin waiting to be renamed over the one in use
META_IPV6_MAPPED = "ipv6_mapped_slots"  # the meta record's ipv6_mapped_slots()
# The cgroup tree a removal searches for an attachment the instance record no longer names is
# searched this far at most (a host has hundreds to a few thousand cgroups).
MAX_CGROUPS_SEARCHED = 100000


class ConfigError(ValueError):
    """A parameter is wrong; nothing was touched."""


class InstanceError(Exception):
    """The kernel or another program stands in the way; the message says what to do."""


if TYPE_CHECKING:  # for type checkers only: instance.py does not need the ELF reader at run time
    from ansible_collections.netbpf.tcp_rto.plugins.module_utils.bpf_object import BpfObject

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class Rule(NamedTuple):
    dest: Network
    rto_jiffies: int
    syn_retries: Optional[int] = None  # TCP_SYNCNT the program sets (syn_give_up_s); None: the socket's own


class Desired(NamedTuple):
    """What the parameters ask for, validated and in the kernel's units."""

    name: str
    pin_dir: str
    cgroup: str  # resolved path under the cgroup2 mount
    hz: int
    rules: List[Rule]
    default_jiffies: Optional[int]  # None: connections matching no rule keep the kernel default
    direction: str  # a key of rto_program.DIRECTIONS
    attach_mode: str  # ATTACH_LINK or ATTACH_MULTI
    object: "BpfObject"
    default_syn_retries: Optional[int] = None  # TCP_SYNCNT for connections given the default


# ---------------------------------------------------------------- desired state


def validate_name(name: str) -> str:
    if not INSTANCE_NAME.match(name or ""):
        raise ConfigError(
            "name %r is not a valid instance name: use 1-64 letters, digits, '_' or '-', not starting with '-' "
            "(it becomes a directory on bpffs, which refuses dots)" % (name,)
        )
    return name


def rto_ms_to_jiffies(rto_ms: int, hz: int, what: str) -> int:
    """Milliseconds -> jiffies, rounded up like the kernel's msecs_to_jiffies()."""
    if isinstance(rto_ms, bool) or not isinstance(rto_ms, int):
        raise ConfigError("%s: rto_ms must be a whole number of milliseconds, got %r" % (what, rto_ms))
    if rto_ms <= 0:
        raise ConfigError("%s: rto_ms must be positive, got %d" % (what, rto_ms))
    if rto_ms > MAX_RTO_MS:
        raise ConfigError("%s: rto_ms %d is above the kernel's TCP_RTO_MAX of %d ms" % (what, rto_ms, MAX_RTO_MS))
    if rto_ms * hz < 1000:
        raise ConfigError(
            "%s: rto_ms %d is below one jiffy at HZ %d (%.1f ms): use at least %d"
            % (what, rto_ms, hz, 1000.0 / hz, -(-1000 // hz))
        )
    return -(-rto_ms * hz // 1000)


def plain_number(value: float) -> Union[int, float]:
    """200.0 -> 200, 52.5 -> 52.5: milliseconds as people write them."""
    return int(value) if float(value).is_integer() else round(value, 3)


def jiffies_to_ms(jiffies: int, hz: int) -> Union[int, float]:
    return plain_number(jiffies * 1000.0 / hz)


def parse_dest(dest: Any, what: str) -> Network:
    try:
        return ipaddress.ip_network("%s" % (dest,), strict=True)
    except ValueError as exc:
        raise ConfigError("%s: dest %r is not a network in CIDR notation: %s" % (what, dest, exc))


def parse_rules(
    raw_rules: Optional[List[Dict[str, Any]]], hz: int, syn_give_up_s: Optional[float] = None, linear_timeouts: int = 0
) -> List[Rule]:
    """User rules (list of dicts with dest, rto_ms and optionally syn_give_up_s) -> [Rule],
    validated. syn_give_up_s: the instance's, for rules without their own."""
    raw_rules = raw_rules or []
    if len(raw_rules) > abi.MAX_RULES:
        raise ConfigError(abi.too_many_rules(len(raw_rules)))
    rules, seen = [], {}
    for index, raw in enumerate(raw_rules):
        what = "rules[%d]" % index
        if (
            not isinstance(raw, dict)
            or set(raw) - {"dest", "rto_ms", "syn_give_up_s"}
            or "dest" not in raw
            or "rto_ms" not in raw
        ):
            raise ConfigError(
                "%s must be a mapping with the keys dest and rto_ms (and optionally syn_give_up_s), got %r"
                % (what, raw)
            )
        dest = parse_dest(raw["dest"], what)
        key = abi.encode_rule_key(dest)
        if key in seen:
            raise ConfigError(
                "%s: dest %s is the same network as rules[%d] (%s)"
                % (what, dest, seen[key], raw_rules[seen[key]]["dest"])
            )
        seen[key] = index
        jiffies = rto_ms_to_jiffies(raw["rto_ms"], hz, what)
        give_up = syn_give_up_s if raw.get("syn_give_up_s") is None else raw["syn_give_up_s"]
        rules.append(Rule(dest, jiffies, syn_retries_for(give_up, jiffies, hz, linear_timeouts, what)))
    return rules


def desired_state(
    name: str,
    pin_dir: str,
    cgroup: str,
    hz: int,
    raw_rules: Optional[List[Dict[str, Any]]],
    default_rto_ms: Optional[int],
    direction: str,
    attach_mode: str,
    obj: "BpfObject",
    syn_give_up_s: Optional[float] = None,
    linear_timeouts: int = 0,
) -> Desired:
    """syn_give_up_s: the instance's (rules may give their own); linear_timeouts: the host's
    net.ipv4.tcp_syn_linear_timeouts (0 before 6.5)."""
    validate_name(name)
    if direction not in abi.DIRECTIONS:
        raise ConfigError("direction %r is not one of %s" % (direction, ", ".join(sorted(abi.DIRECTIONS))))
    default_jiffies = default_syn_retries = None
    if default_rto_ms is not None:
        default_jiffies = rto_ms_to_jiffies(default_rto_ms, hz, "default")
        default_syn_retries = syn_retries_for(syn_give_up_s, default_jiffies, hz, linear_timeouts, "default")
    rules = parse_rules(raw_rules, hz, syn_give_up_s, linear_timeouts)
    if not abi.DIRECTIONS[direction] & abi.DIRECTION_OUTGOING and (
        default_syn_retries or any(rule.syn_retries for rule in rules)
    ):
        raise ConfigError(
            "syn_give_up_s bounds how long connect() tries, and direction %s leaves outgoing connections alone: "
            "use direction outgoing or both, or drop syn_give_up_s" % direction
        )
    return Desired(name, pin_dir, cgroup, hz, rules, default_jiffies, direction, attach_mode, obj, default_syn_retries)


def syn_retries_for(
    give_up_s: Optional[float], rto_jiffies: int, hz: int, linear_timeouts: int, what: str
) -> Optional[int]:
    """The TCP_SYNCNT that makes connect() give up at the first retransmission deadline at or past
    give_up_s with this initial RTO (None: no syn_give_up_s, the socket keeps its own)."""
    if give_up_s is None:
        return None
    if isinstance(give_up_s, bool) or not isinstance(give_up_s, (int, float)) or give_up_s <= 0:
        raise ConfigError("%s: syn_give_up_s must be a positive number of seconds, got %r" % (what, give_up_s))
    retries = host.syn_retries_for_give_up(give_up_s, rto_jiffies / float(hz), linear_timeouts, abi.MAX_SYN_RETRIES)
    if retries is None:
        raise ConfigError(
            "%s: syn_give_up_s %s is more than connect() can wait with %d SYN retransmits (TCP_SYNCNT's maximum) "
            "at rto_ms %s: give a shorter syn_give_up_s"
            % (what, give_up_s, abi.MAX_SYN_RETRIES, jiffies_to_ms(rto_jiffies, hz))
        )
    return retries


def network_text(network: Network) -> str:
    """A rule's network as results show it: a network inside ::ffff:0:0/96 in the dotted form
    people write it in (and Python 3.13+ prints), on every Python; others as ipaddress writes them."""
    if abi.in_v4_mapped(network):
        return "::ffff:%s/%d" % (network.network_address.ipv4_mapped, network.prefixlen)
    return str(network)


def rule_for(address: str, rules: List[Rule], default_jiffies: Optional[int]) -> Optional[int]:
    """The jiffies the program gives a connection to address, or None (kernel default): the
    longest prefix as the rules trie holds it, where IPv4 lives inside ::ffff:0:0/96, so that an
    IPv6 rule such as ::/0 matches IPv4 addresses as it does in the kernel."""
    looked_up = abi.trie_address(ipaddress.ip_address("%s" % address))
    held = [(abi.trie_network(rule.dest), rule) for rule in rules]
    matches = [(network.prefixlen, rule) for network, rule in held if looked_up in network]
    if matches:
        return max(matches, key=lambda match: match[0])[1].rto_jiffies
    return default_jiffies


def ipv6_mapped_slots(rules: List[Rule]) -> str:
    """The slots of the rules given as IPv6 inside ::ffff:0:0/96, as a hex bitmask for the meta
    record: their keys are those of IPv4 networks, so only the record tells the family back."""
    mask = 0
    for slot, rule in enumerate(rules):
        if abi.in_v4_mapped(rule.dest):
            mask |= 1 << slot
    return "%x" % mask


def _slots_of(mask: Optional[str]) -> set:
    try:
        bits = int(mask, 16)
    except (TypeError, ValueError):
        return set()  # a record of an older version (no mask) or an edited one: read the keys as IPv4
    return {slot for slot in range(bits.bit_length()) if bits >> slot & 1}


# ---------------------------------------------------------------- current state


def instance_pin_names() -> List[str]:
    """Every name the module pins in an instance directory: nothing else there is its to remove."""
    names = [PROG_PIN, *list(abi.MAP_CONTRACT), META_MAP, LINK_PIN]
    return names + [NEW_PIN_PREFIX + name for name in names]


def open_pin(path):
    """The object pinned at path as a new fd, or None when nothing is pinned there."""
    try:
        return bpf.obj_get(path)
    except bpf.BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def read_meta(meta_fd):
    """The instance record in the meta map -> (record, None), or (None, what is wrong with it)."""
    if meta_fd is None:
        return None, "meta map is missing"
    raw = bpf.map_lookup(meta_fd, abi.CONFIG_KEY.pack(0), META_VALUE_SIZE) or b""
    try:
        meta = json.loads(raw.rstrip(b"\0").decode("utf-8"))
        if meta.get("format") != META_FORMAT or not {"cgroup", "attach_mode", "object_sha256"} <= set(meta):
            raise ValueError("unknown format")
    except ValueError as exc:
        return None, "meta record is unreadable (%s)" % exc
    return meta, None


class Current:
    """What the kernel holds for one instance, read from its pins. Owns the fds it opened.

    expected_cgroup (the desired one) lets it find its program when a pin was deleted: a program
    still attached but unpinned is adopted (prog_adopted) so that the repair replaces it instead
    of leaving it attached next to a new one.

    link_info False (a kernel before 5.8, see features.py): the link's info is not read; a pinned
    link counts as attaching the program while BPF_PROG_QUERY finds it on the recorded cgroup."""

    def __init__(self, instance_dir, expected_cgroup=None, link_info=True):
        self.instance_dir = instance_dir
        self.expected_cgroup = expected_cgroup
        self.reads_link_info = link_info
        self.missing_pins = []
        self.prog_adopted = False
        self.meta_adopted = False
        self.exists = os.path.isdir(instance_dir)
        self.maps = {}
        self.map_ids = {}
        self.prog_fd = self.link_fd = None
        self.prog_info = self.link_info = None
        self.meta = None
        self.meta_problem = None
        self.rules = []  # [(Rule, hit_slot)]
        self.default_jiffies = None
        self.default_syn_retries = None
        self.directions = None
        self.attached = False
        self.leftovers = []  # new_<name> pins of a run killed before it renamed them into place
        self.own_entries = []  # entries of instance_dir that are the instance's pins
        self.unknown_entries = []  # entries of instance_dir the module did not make: never touched
        if self.exists:
            self._read()

    def _read(self):
        entries = os.listdir(self.instance_dir)
        own = set(instance_pin_names())
        self.own_entries = sorted(entry for entry in entries if entry in own)
        self.unknown_entries = sorted(entry for entry in entries if entry not in own)
        self.leftovers = [entry for entry in self.own_entries if entry.startswith(NEW_PIN_PREFIX)]
        for name in [*list(abi.MAP_CONTRACT), META_MAP]:
            fd = open_pin(os.path.join(self.instance_dir, name))
            if fd is not None:
                self.maps[name] = fd
                self.map_ids[name] = bpf.map_info(fd).id
        self.prog_fd = open_pin(os.path.join(self.instance_dir, PROG_PIN))
        if self.prog_fd is not None:
            self.prog_info = bpf.prog_info(self.prog_fd)
        self.link_fd = open_pin(os.path.join(self.instance_dir, LINK_PIN))
        if self.link_fd is not None and self.reads_link_info:
            self.link_info = bpf.link_info(self.link_fd)
        self._read_meta()
        self.missing_pins = [name for name in [PROG_PIN, *list(abi.MAP_CONTRACT), META_MAP] if not self._pinned(name)]
        if self.prog_fd is None:
            self._adopt_unpinned_program()
        if self.meta is None and self.prog_info is not None:
            self._adopt_attachment()
        self._read_maps()
        self.attached = self._is_attached()

    def _pinned(self, name):
        if name == PROG_PIN:
            return self.prog_fd is not None
        return name in self.maps

    def _adopt_unpinned_program(self):
        """The program of a deleted prog pin, found through the link or, attached with multi, by the
        pinned maps it uses."""
        prog_id = None
        if self.link_info is not None and self.link_info.prog_id:
            prog_id = self.link_info.prog_id
        elif self.cgroup and os.path.isdir(self.cgroup):
            own_maps = {self.map_ids[name] for name in abi.MAP_CONTRACT if name in self.map_ids}
            for candidate in attached_program_ids(self.cgroup)[1]:
                try:
                    with bpf.closing_fd(bpf.prog_get_fd_by_id(candidate)) as fd:
                        if own_maps and own_maps <= set(bpf.prog_info(fd).map_ids):
                            prog_id = candidate
                            break
                except bpf.BpfError:
                    continue
        if prog_id is not None:
            try:
                self.prog_fd = bpf.prog_get_fd_by_id(prog_id)
            except bpf.BpfError:
                return
            self.prog_info = bpf.prog_info(self.prog_fd)
            self.prog_adopted = True

    def _adopt_attachment(self):
        """Without the meta record, the program counts as attached where it is found on the expected
        cgroup, so that the repair replaces it in place."""
        cgroup = self.expected_cgroup
        if not cgroup or not os.path.isdir(cgroup):
            return
        mode = None
        if self.link_info is not None and self.link_info.cgroup_id == host.cgroup_id(cgroup):
            mode = ATTACH_LINK
        elif self.prog_info.id in attached_program_ids(cgroup)[1]:
            mode = ATTACH_LINK if self.link_fd is not None and not self.reads_link_info else ATTACH_MULTI
        if mode:
            self.meta = {"format": META_FORMAT, "cgroup": cgroup, "attach_mode": mode, "object_sha256": None}
            self.meta_adopted = True

    def _read_meta(self):
        self.meta, self.meta_problem = read_meta(self.maps.get(META_MAP))

    def _read_maps(self):
        if abi.CONFIG_MAP in self.maps:
            value = bpf.map_lookup(self.maps[abi.CONFIG_MAP], abi.CONFIG_KEY.pack(0), abi.CONFIG_VALUE.size)
            self.default_jiffies, self.directions, self.default_syn_retries = abi.decode_config(value)
        if abi.RULES_MAP in self.maps:
            fd = self.maps[abi.RULES_MAP]
            mapped_slots = _slots_of((self.meta or {}).get(META_IPV6_MAPPED))
            for key in bpf.map_keys(fd, abi.RULE_KEY.size):
                value = bpf.map_lookup(fd, key, abi.RULE_VALUE.size)
                if value is not None:
                    jiffies, slot, syn_retries = abi.decode_rule_value(value)
                    dest = abi.decode_rule_key(key, mapped_as_ipv6=slot in mapped_slots)
                    self.rules.append((Rule(dest, jiffies, syn_retries), slot))
            self.rules.sort(key=lambda pair: pair[1])

    @property
    def program_intact(self):
        """Program, maps and meta all pinned, and the program uses exactly the pinned maps."""
        if self.prog_info is None or self.meta is None or self.missing_pins:
            return False
        if any(name not in self.maps for name in abi.MAP_CONTRACT):
            return False
        return set(self.prog_info.map_ids) == {self.map_ids[name] for name in abi.MAP_CONTRACT}

    @property
    def cgroup(self):
        return self.meta["cgroup"] if self.meta else None

    @property
    def attach_mode(self):
        return self.meta["attach_mode"] if self.meta else None

    def _is_attached(self):
        if self.prog_info is None or self.meta is None or not os.path.isdir(self.cgroup):
            return False
        if self.attach_mode == ATTACH_LINK and self.reads_link_info:
            return (
                self.link_info is not None
                and self.link_info.prog_id == self.prog_info.id
                and self.link_info.cgroup_id == host.cgroup_id(self.cgroup)
            )
        if self.attach_mode == ATTACH_LINK and self.link_fd is None:
            return False
        return self.prog_info.id in attached_program_ids(self.cgroup)[1]

    def hits(self):
        """Per rule slot (and DEFAULT_HIT_SLOT): connections answered, summed over CPUs."""
        fd = self.maps.get(abi.HITS_MAP)
        if fd is None:
            return {}
        slots = [slot for _rule, slot in self.rules] + [abi.DEFAULT_HIT_SLOT]
        return {
            slot: sum(
                abi.HIT_VALUE.unpack(value)[0]
                for value in bpf.percpu_lookup(fd, abi.HIT_KEY.pack(slot), abi.HIT_VALUE.size)
            )
            for slot in slots
        }

    # ---- telemetry (issue 13): the stats map beside hits

    def telemetry(self):
        """Per rule slot (and DEFAULT_HIT_SLOT): telemetry.slot_telemetry() of each; {} when the
        instance has no stats map (applied by a release before telemetry, until its next apply)."""
        fd = self.maps.get(abi.STATS_MAP)
        if fd is None:
            return {}
        return telemetry.read_slots(fd, [slot for _rule, slot in self.rules] + [abi.DEFAULT_HIT_SLOT])

    def close(self):
        for fd in [*list(self.maps.values()), self.prog_fd, self.link_fd]:
            if fd is not None:
                os.close(fd)
        self.maps, self.prog_fd, self.link_fd = {}, None, None


def attached_program_ids(cgroup: str) -> Tuple[int, List[int]]:
    """-> (attach_flags, [program ids]) of the sock_ops programs attached to cgroup itself."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bpf.prog_query(fd, bpf.BPF_CGROUP_SOCK_OPS)
    finally:
        os.close(fd)


def foreign_programs(cgroup: str, own_ids: List[int]) -> List[Dict[str, Any]]:
    """Other sock_ops programs attached to cgroup: reported, never touched."""
    flags, ids = attached_program_ids(cgroup)
    found = []
    for prog_id in ids:
        if prog_id in own_ids:
            continue
        entry = {"id": prog_id, "attach_flags": flags}
        try:
            with bpf.closing_fd(bpf.prog_get_fd_by_id(prog_id)) as fd:
                info = bpf.prog_info(fd)
            entry.update(name=info.name, tag=info.tag)
        except bpf.BpfError:
            pass  # unloaded meanwhile
        found.append(entry)
    return found


def maps_fingerprint(
    rules: List[Rule], default_jiffies: Optional[int], directions: int, default_syn_retries: Optional[int] = None
) -> str:
    """sha256 of what the rules and config maps hold. The meta record keeps the one written last,
    so the next run tells an edit made outside tcp_rto (drift) from a change of parameters. SYN
    retry counts enter only where set: instances without syn_give_up_s keep their fingerprint."""
    held = [
        [network_text(rule.dest), rule.rto_jiffies] + ([rule.syn_retries] if rule.syn_retries else []) for rule in rules
    ]
    text = json.dumps(
        [held, default_jiffies or 0, directions] + ([default_syn_retries] if default_syn_retries else []),
        sort_keys=True,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- describing (diff, result)


def _rules_view(rules, hz, hits=None):
    view = []
    for slot, rule in enumerate(rules):
        entry = {
            "dest": network_text(rule.dest),
            "rto_ms": jiffies_to_ms(rule.rto_jiffies, hz),
            "rto_jiffies": rule.rto_jiffies,
        }
        if hits is not None:
            entry["hits"] = hits.get(slot, 0)
        view.append(entry)
    return view


def describe_desired(desired):
    return {
        "cgroup": desired.cgroup,
        "attach_mode": desired.attach_mode,
        "direction": desired.direction,
        "rules": _rules_view(desired.rules, desired.hz),
        "default_rto_ms": jiffies_to_ms(desired.default_jiffies, desired.hz) if desired.default_jiffies else None,
        "object_sha256": desired.object.sha256,
    }


def describe_current(current):
    """The instance as the kernel holds it, in the shape of describe_desired ({} when absent).
    Jiffies convert back with the HZ recorded when they were written."""
    if not current.exists:
        return {}
    hz = current.meta.get("hz") if current.meta else None
    direction = [name for name, bits in abi.DIRECTIONS.items() if bits == current.directions]
    rules = [rule for rule, _slot in current.rules]
    return {
        "cgroup": current.cgroup,
        "attach_mode": current.attach_mode,
        "direction": direction[0] if direction else None,
        "rules": _rules_view(rules, hz)
        if hz
        else [{"dest": network_text(rule.dest), "rto_jiffies": rule.rto_jiffies} for rule in rules],
        "default_rto_ms": jiffies_to_ms(current.default_jiffies, hz) if current.default_jiffies and hz else None,
        "object_sha256": current.meta["object_sha256"] if current.meta else None,
    }


# ---------------------------------------------------------------- plan


class Plan(NamedTuple):
    """What will change; the flags drive apply.apply_present()."""

    steps: List[str]  # for people; empty: nothing to do
    load_maps: bool  # new maps and program from the object
    load_program: bool  # a program on the maps (new ones, or a second copy to move it)
    attach: bool


def rule_entries(rules_and_slots: List[Tuple[Rule, int]]) -> Dict[bytes, bytes]:
    """[(Rule, hit slot)] -> {rules map key: value}, as the map holds them."""
    return {
        abi.encode_rule_key(rule.dest): abi.encode_rule_value(rule.rto_jiffies, slot, rule.syn_retries)
        for rule, slot in rules_and_slots
    }


def rules_in_place_obstacle(held_rules: List[Tuple[Rule, int]], desired_rules: List[Rule]) -> Optional[str]:
    """Why the live rules map cannot be rewritten to desired_rules, or None when it can. The new
    entries go in before the old ones go out (no connection falls to the kernel default
    meanwhile), so old and new must fit the map together; and kernels without the 6.13 fix "bpf:
    Handle in-place update for full LPM trie correctly" (some stable kernels have it backported,
    not every vendor kernel) refuse any update, a value change too, to a full LPM trie."""
    held = rule_entries(held_rules)
    wanted = rule_entries([(rule, slot) for slot, rule in enumerate(desired_rules)])
    together = len(set(held) | set(wanted))
    if together > abi.MAX_RULES:
        return "%d old and %d new rules make %d entries together, more than the %d the map holds" % (
            len(held),
            len(wanted),
            together,
            abi.MAX_RULES,
        )
    if len(held) >= abi.MAX_RULES and any(key in held and held[key] != value for key, value in wanted.items()):
        return (
            "the map is full (%d entries), and kernels without the 6.13 fix refuse to change a value in a full map"
            % len(held)
        )
    return None


def same_place(desired: Desired, current: "Current") -> bool:
    """Whether the current program is attached exactly where desired wants it."""
    return current.attached and (current.cgroup, current.attach_mode) == (desired.cgroup, desired.attach_mode)


def plan_present(desired: Desired, current: "Current") -> Plan:
    steps = []
    if current.leftovers:
        steps.append("remove what an interrupted run left (%s)" % ", ".join(current.leftovers))
    if current.exists and (not current.program_intact or current.meta_problem):
        steps.append(
            "repair incomplete instance (%s)"
            % (
                current.meta_problem
                or (current.missing_pins and "missing pins: " + ", ".join(current.missing_pins))
                or "pins missing"
            )
        )
    load_maps = not (current.program_intact and current.meta["object_sha256"] == desired.object.sha256)
    if not load_maps:
        obstacle = rules_in_place_obstacle(current.rules, desired.rules)
        if obstacle:
            steps.append("rules do not fit the live rules map (%s): new maps and program instead" % obstacle)
            load_maps = True
    if load_maps:
        steps.append("create maps and load program from object %s" % desired.object.sha256[:12])
    else:
        if [rule for rule, _slot in current.rules] != desired.rules:
            steps.append("update rules")
        if (current.default_jiffies, current.directions, current.default_syn_retries) != (
            desired.default_jiffies,
            abi.DIRECTIONS[desired.direction],
            desired.default_syn_retries,
        ):
            steps.append("update default and direction")
    in_place = same_place(desired, current)
    # A program attaches to a cgroup once, so moving it (other cgroup or other attach mode) takes
    # a second program on the same maps, attached before the first goes: no connection sees the
    # kernel default in between.
    load_program = load_maps or (current.attached and not in_place)
    if load_program and not load_maps:
        steps.append("load a second copy of the program on the same maps")
    attach = load_program or not current.attached
    if attach and in_place:
        steps.append("replace the attached program atomically (%s)" % desired.attach_mode)
    elif attach:
        steps.append("attach to %s (%s)" % (desired.cgroup, desired.attach_mode))
    if current.attached and not in_place:
        steps.append("detach from %s (%s)" % (current.cgroup, current.attach_mode))
    return Plan(steps, load_maps, load_program, attach)


def _cgroup_tree(root: str, limit: int) -> Tuple[List[str], bool]:
    """root and the cgroups below it, breadth first, at most limit -> (paths, whether that was all)."""
    found, queue = [], collections.deque([root])
    while queue:
        if len(found) >= limit:
            return found, False
        cgroup = queue.popleft()
        found.append(cgroup)
        try:
            queue.extend(sorted(entry.path for entry in os.scandir(cgroup) if entry.is_dir(follow_symlinks=False)))
        except OSError:
            continue  # removed meanwhile
    return found, True


def unrecorded_attachments(
    current: "Current", cgroup_root: Optional[str], limit: int = MAX_CGROUPS_SEARCHED
) -> Tuple[List[Tuple[str, int]], bool]:
    """Where the instance's programs are attached when its meta record, which names the cgroup, is
    missing or unreadable: a search of the cgroup tree. A legacy (BPF_PROG_ATTACH) attachment
    belongs to the cgroup and would outlive the pins. The instance's programs are the pinned ones
    (prog, new_prog) or, with neither pinned, those that use the instance's pinned maps; never any
    other. -> ([(cgroup, program id)], whether the whole tree was searched)."""
    if not current.exists or current.meta is not None or cgroup_root is None:
        return [], True
    own_ids = set()
    for name in (PROG_PIN, NEW_PIN_PREFIX + PROG_PIN):
        fd = open_pin(os.path.join(current.instance_dir, name))
        if fd is not None:
            with bpf.closing_fd(fd):
                own_ids.add(bpf.prog_info(fd).id)
    own_maps = set() if own_ids else {current.map_ids[name] for name in abi.MAP_CONTRACT if name in current.map_ids}
    if not (own_ids or own_maps):
        return [], True
    cgroups, complete = _cgroup_tree(cgroup_root, limit)
    found = []
    for cgroup in cgroups:
        try:
            attached = attached_program_ids(cgroup)[1]
        except OSError:  # bpf.BpfError included: removed meanwhile
            continue
        found.extend(
            (cgroup, prog_id)
            for prog_id in attached
            if (prog_id in own_ids or _uses(prog_id, own_maps)) and not _through_link(current, cgroup, prog_id)
        )
    return found, complete


def _through_link(current: "Current", cgroup: str, prog_id: int) -> bool:
    """Whether the instance's pinned bpf_link is what attaches prog_id to cgroup (it goes with its pin)."""
    info = current.link_info
    return info is not None and info.prog_id == prog_id and info.cgroup_id == host.cgroup_id(cgroup)


def _uses(prog_id: int, map_ids: set) -> bool:
    """Whether program prog_id uses all of map_ids (none given: False)."""
    if not map_ids:
        return False
    try:
        with bpf.closing_fd(bpf.prog_get_fd_by_id(prog_id)) as fd:
            return map_ids <= set(bpf.prog_info(fd).map_ids)
    except bpf.BpfError:
        return False  # unloaded meanwhile


def plan_absent(current: "Current", unrecorded: List[Tuple[str, int]] = ()) -> Plan:
    """unrecorded: unrecorded_attachments() of current."""
    if not current.exists:
        return Plan([], False, False, False)
    steps = []
    if current.attached:
        steps.append("detach from %s (%s)" % (current.cgroup, current.attach_mode))
    for cgroup, prog_id in unrecorded:
        steps.append("detach program %d from %s (multi, found by a search of the cgroup tree)" % (prog_id, cgroup))
    if current.own_entries or not current.unknown_entries:
        steps.append("remove pins of %s" % current.instance_dir)
    return Plan(steps, False, False, False)


def unknown_entries_warning(current: "Current", name: str) -> Optional[str]:
    if not current.unknown_entries:
        return None
    return (
        "%s holds entries that are not pins of the instance %s (%s): they and the directory were left as "
        "they are; remove them if nothing else uses them"
        % (current.instance_dir, name, ", ".join(current.unknown_entries))
    )


def instances_on_cgroup(pin_dir: str, cgroup: str, exclude: str) -> List[str]:
    """Names of other instances under pin_dir attached to cgroup (one instance per cgroup)."""
    found = []
    if not os.path.isdir(pin_dir):
        return found
    for name in sorted(os.listdir(pin_dir)):
        path = os.path.join(pin_dir, name)
        if name == exclude or not os.path.isdir(path):
            continue
        meta_fd = open_pin(os.path.join(path, META_MAP))  # the record alone says where it is attached
        if meta_fd is None:
            continue
        try:
            meta, _problem = read_meta(meta_fd)
        finally:
            os.close(meta_fd)
        if meta and meta["cgroup"] == cgroup:
            found.append(name)
    return found
