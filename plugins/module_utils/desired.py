# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the user asks for: the module's parameters validated and turned into a Desired instance
in the kernel's units (rules parsed, milliseconds to jiffies, the cgroup resolved, the object
read). Nothing here touches the kernel. Plain stdlib: the boot-time restore uses it without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import cgroups, host, rto_program, syn_give_up
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.bpf_object import BpfObject, check_contract

# The kernel caps the initial RTO at TCP_RTO_MAX since 5.18; older kernels take any value, so we
# enforce the cap everywhere: a longer first SYN timeout is never what anyone wants.
MAX_RTO_MS = 120000
KERNEL_DEFAULT_RTO_MS = 1000  # TCP_TIMEOUT_INIT

ATTACH_LINK = "link"
ATTACH_MULTI = "multi"

# bpffs refuses names with a dot (reserved), so neither instance names nor pins have one.
INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}\Z")  # \Z: $ would allow a final newline
PATH_PARAMS = ("cgroup", "pin_dir", "src")


class ConfigError(ValueError):
    """A parameter is wrong; nothing was touched."""


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class Rule(NamedTuple):
    dest: Network
    rto_jiffies: int  # for auto: the learned value's upper bound (auto_max_ms)
    syn_retries: Optional[int] = None  # TCP_SYNCNT the program sets (syn_give_up_s); None: the socket's own
    auto: bool = False  # rto_ms: auto: the program answers what the host's handshakes taught


AUTO = "auto"
# rto_ms: auto's options: module parameter -> default (docs/tcp_initial_rto.md says why each).
AUTO_DEFAULTS = {
    "auto_min_ms": 20,
    "auto_max_ms": KERNEL_DEFAULT_RTO_MS,
    "auto_factor": 2.0,
    "auto_min_samples": 3,
    "auto_ttl_s": 600,
    "auto_retransmit_budget": 3,
    "auto_table_size": rto_program.LEARNED_ENTRIES,
}
MAX_AUTO_FACTOR = 10
MAX_AUTO_TABLE_SIZE = 1 << 20  # about 100 MB of kernel memory: anything above is a typo


class AutoSettings(NamedTuple):
    """rto_ms: auto's options in the kernel's units."""

    min_jiffies: int
    max_jiffies: int
    factor_pct: int
    min_samples: int
    ttl_s: int
    retransmit_budget: int
    table_size: int


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
    object: BpfObject
    default_syn_retries: Optional[int] = None  # TCP_SYNCNT for connections given the default
    default_auto: bool = False  # rto_ms: auto for the default (default_jiffies is its upper bound)
    auto: Optional[AutoSettings] = None  # rto_ms: auto's options (always given; written only when used)

    def uses_auto(self) -> bool:
        return self.default_auto or any(rule.auto for rule in self.rules)

    def table_size(self) -> int:
        """The learned map's entries (auto_table_size)."""
        return self.auto.table_size if self.auto else rto_program.LEARNED_ENTRIES

    def auto_config(self) -> Optional[tuple]:
        """The config map's AUTO_CONFIG_FIELDS values, or None when no rule or default is auto."""
        if not self.uses_auto():
            return None
        auto = self.auto
        return (auto.min_jiffies, auto.factor_pct, auto.min_samples, auto.ttl_s, auto.retransmit_budget, self.hz)


def validate_name(name: str) -> str:
    if not INSTANCE_NAME.match(name or ""):
        raise ConfigError(
            "name %r is not a valid instance name: use 1-64 letters, digits, '_' or '-', not starting with '-' "
            "(it becomes a directory on bpffs, which refuses dots)" % (name,)
        )
    return name


def check_paths(params: Dict[str, Any]) -> None:
    """ConfigError for a path parameter no path can be."""
    for key in PATH_PARAMS:
        if "\0" in (params.get(key) or ""):
            raise ConfigError("%s %r contains a NUL byte, which no path can hold: remove it" % (key, params[key]))


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


def _rto_spelling(rto_ms: Any) -> Any:
    """rto_ms as given (the module takes any type: a number or auto) in one spelling: "auto", or
    an int for a whole number written as text (a template's result); anything else as it is."""
    if isinstance(rto_ms, str) and rto_ms.strip().lower() == AUTO:
        return AUTO
    if isinstance(rto_ms, str) and rto_ms.strip().isdigit():
        return int(rto_ms)
    return rto_ms


def with_rto_spelled(params: Dict[str, Any]) -> Dict[str, Any]:
    """params with every rto_ms (the instance's, the rules') in one spelling, as the record keeps them."""
    rules = params.get("rules")
    if isinstance(rules, list):
        rules = [
            dict(rule, rto_ms=_rto_spelling(rule["rto_ms"])) if isinstance(rule, dict) and "rto_ms" in rule else rule
            for rule in rules
        ]
    return dict(params, rto_ms=_rto_spelling(params.get("rto_ms")), rules=rules)


def rto_value(rto_ms: Any, hz: int, what: str, auto: "AutoSettings") -> Tuple[int, bool]:
    """A rule's (or the default's) rto_ms -> (jiffies, auto): "auto" gives auto_max_ms's jiffies,
    the learned value's upper bound."""
    rto_ms = _rto_spelling(rto_ms)
    if rto_ms == AUTO:
        return auto.max_jiffies, True
    if isinstance(rto_ms, bool) or not isinstance(rto_ms, int):
        raise ConfigError("%s: rto_ms must be a whole number of milliseconds or auto, got %r" % (what, rto_ms))
    return rto_ms_to_jiffies(rto_ms, hz, what), False


def _whole(params: Dict[str, Any], key: str, low: int, high: int) -> int:
    value = params.get(key)
    value = AUTO_DEFAULTS[key] if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError("%s must be a whole number from %d to %d, got %r" % (key, low, high, value))
    return value


def parse_auto(params: Dict[str, Any], hz: int) -> AutoSettings:
    """rto_ms: auto's options (params may lack any: its default) -> AutoSettings, validated."""
    min_ms = _whole(params, "auto_min_ms", 1, MAX_RTO_MS)
    max_ms = _whole(params, "auto_max_ms", 1, MAX_RTO_MS)
    if min_ms > max_ms:
        raise ConfigError("auto_min_ms %d is above auto_max_ms %d: give auto_min_ms <= auto_max_ms" % (min_ms, max_ms))
    factor = AUTO_DEFAULTS["auto_factor"] if params.get("auto_factor") is None else params["auto_factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 <= factor <= MAX_AUTO_FACTOR:
        raise ConfigError(
            "auto_factor must be a number from 1 to %d (the learned estimate is multiplied by it), got %r"
            % (MAX_AUTO_FACTOR, factor)
        )
    return AutoSettings(
        min_jiffies=rto_ms_to_jiffies(min_ms, hz, "auto_min_ms"),
        max_jiffies=rto_ms_to_jiffies(max_ms, hz, "auto_max_ms"),
        factor_pct=round(factor * 100),
        min_samples=_whole(params, "auto_min_samples", 1, 1000000),
        ttl_s=_whole(params, "auto_ttl_s", 1, 100 * 365 * 86400),
        retransmit_budget=_whole(params, "auto_retransmit_budget", 0, 1000000),
        table_size=_whole(params, "auto_table_size", 1, MAX_AUTO_TABLE_SIZE),
    )


def parse_rules(
    raw_rules: Optional[List[Dict[str, Any]]],
    hz: int,
    syn_give_up_s: Optional[float] = None,
    linear_timeouts: int = 0,
    auto: Optional[AutoSettings] = None,
) -> List[Rule]:
    """User rules (list of dicts with dest, rto_ms and optionally syn_give_up_s) -> [Rule],
    validated. syn_give_up_s: the instance's, for rules without their own; auto: rto_ms: auto's
    options (default ones when None)."""
    raw_rules = raw_rules or []
    auto = auto or parse_auto({}, hz)
    if len(raw_rules) > rto_program.MAX_RULES:
        raise ConfigError(rto_program.too_many_rules(len(raw_rules)))
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
        key = rto_program.encode_rule_key(dest)
        if key in seen:
            raise ConfigError(
                "%s: dest %s is the same network as rules[%d] (%s)"
                % (what, dest, seen[key], raw_rules[seen[key]]["dest"])
            )
        seen[key] = index
        jiffies, is_auto = rto_value(raw["rto_ms"], hz, what, auto)
        give_up = syn_give_up_s if raw.get("syn_give_up_s") is None else raw["syn_give_up_s"]
        if is_auto:
            _no_give_up_with_auto(give_up, what)
            rules.append(Rule(dest, jiffies, None, True))
        else:
            rules.append(Rule(dest, jiffies, syn_retries_for(give_up, jiffies, hz, linear_timeouts, what)))
    return rules


def _no_give_up_with_auto(give_up_s: Optional[float], what: str) -> None:
    if give_up_s is not None:
        raise ConfigError(
            "%s: syn_give_up_s with rto_ms: auto is not supported (the give-up time would move with each host's "
            "learned value): give the rule a number in rto_ms, or drop syn_give_up_s for it" % what
        )


def parse_default(
    default_rto_ms: Any, hz: int, syn_give_up_s: Optional[float], linear_timeouts: int, auto: AutoSettings
) -> Tuple[Optional[int], Optional[int], bool]:
    """The instance's rto_ms -> (jiffies, syn_retries, auto) of the default (None jiffies: none)."""
    if default_rto_ms is None:
        return None, None, False
    jiffies, is_auto = rto_value(default_rto_ms, hz, "default", auto)
    if is_auto:
        _no_give_up_with_auto(syn_give_up_s, "default")
        return jiffies, None, True
    return jiffies, syn_retries_for(syn_give_up_s, jiffies, hz, linear_timeouts, "default"), False


def desired_state(
    name: str,
    pin_dir: str,
    cgroup: str,
    hz: int,
    raw_rules: Optional[List[Dict[str, Any]]],
    default_rto_ms: Any,
    direction: str,
    attach_mode: str,
    obj: BpfObject,
    syn_give_up_s: Optional[float] = None,
    linear_timeouts: int = 0,
    auto_params: Optional[Dict[str, Any]] = None,
) -> Desired:
    """syn_give_up_s: the instance's (rules may give their own); linear_timeouts: the host's
    net.ipv4.tcp_syn_linear_timeouts (0 before 6.5); auto_params: the auto_* parameters."""
    validate_name(name)
    if direction not in rto_program.DIRECTIONS:
        raise ConfigError("direction %r is not one of %s" % (direction, ", ".join(sorted(rto_program.DIRECTIONS))))
    auto = parse_auto(auto_params or {}, hz)
    default_jiffies, default_syn_retries, default_auto = parse_default(
        default_rto_ms, hz, syn_give_up_s, linear_timeouts, auto
    )
    rules = parse_rules(raw_rules, hz, syn_give_up_s, linear_timeouts, auto)
    if not rto_program.DIRECTIONS[direction] & rto_program.DIRECTION_OUTGOING and (
        default_syn_retries or any(rule.syn_retries for rule in rules)
    ):
        raise ConfigError(
            "syn_give_up_s bounds how long connect() tries, and direction %s leaves outgoing connections alone: "
            "use direction outgoing or both, or drop syn_give_up_s" % direction
        )
    return Desired(
        name,
        pin_dir,
        cgroup,
        hz,
        rules,
        default_jiffies,
        direction,
        attach_mode,
        obj,
        default_syn_retries,
        default_auto,
        auto,
    )


def syn_retries_for(
    give_up_s: Optional[float], rto_jiffies: int, hz: int, linear_timeouts: int, what: str
) -> Optional[int]:
    """The TCP_SYNCNT that makes connect() give up at the first retransmission deadline at or past
    give_up_s with this initial RTO (None: no syn_give_up_s, the socket keeps its own)."""
    if give_up_s is None:
        return None
    if isinstance(give_up_s, bool) or not isinstance(give_up_s, (int, float)) or give_up_s <= 0:
        raise ConfigError("%s: syn_give_up_s must be a positive number of seconds, got %r" % (what, give_up_s))
    retries = syn_give_up.syn_retries_for_give_up(
        give_up_s, rto_jiffies / float(hz), linear_timeouts, rto_program.MAX_SYN_RETRIES
    )
    if retries is None:
        raise ConfigError(
            "%s: syn_give_up_s %s is more than connect() can wait with %d SYN retransmits (TCP_SYNCNT's maximum) "
            "at rto_ms %s: give a shorter syn_give_up_s"
            % (what, give_up_s, rto_program.MAX_SYN_RETRIES, jiffies_to_ms(rto_jiffies, hz))
        )
    return retries


def from_params(params: Dict[str, Any], attach_mode: str, hz: int, pending: bool = False) -> Desired:
    """The instance params ask for, fully validated (cgroup, object, rules) before any change; with
    pending (a unit that does not run yet) the cgroup is not resolved."""
    cgroup_root = cgroups.cgroup2_mount()
    cgroup = None if pending else cgroups.resolve_cgroup(params["cgroup"] or cgroup_root, cgroup_root)
    if not params["src"]:
        raise ConfigError(
            "src is required: run the module as netbpf.tcp_rto.tcp_initial_rto so that "
            "its action plugin sends the object, or give the object's path on the host"
        )
    obj = BpfObject.from_file(params["src"])
    check_contract(obj)
    return desired_state(
        params["name"],
        params["pin_dir"],
        cgroup,
        hz,
        params["rules"],
        params["rto_ms"],
        params["direction"],
        attach_mode,
        obj,
        syn_give_up_s=params.get("syn_give_up_s"),
        linear_timeouts=host.read_sysctl("net.ipv4.tcp_syn_linear_timeouts", 0),
        auto_params={key: params.get(key) for key in AUTO_DEFAULTS},
    )


def network_text(network: Network) -> str:
    """A rule's network as results show it: a network inside ::ffff:0:0/96 in the dotted form
    people write it in (and Python 3.13+ prints), on every Python; others as ipaddress writes them."""
    if rto_program.in_v4_mapped(network):
        return "::ffff:%s/%d" % (network.network_address.ipv4_mapped, network.prefixlen)
    return str(network)


def matching_rule(address: str, rules: List[Rule]) -> Optional[Rule]:
    """The rule the program finds for a connection to address, or None: the longest prefix as the
    rules trie holds it, where IPv4 lives inside ::ffff:0:0/96, so that an IPv6 rule such as ::/0
    matches IPv4 addresses as it does in the kernel."""
    looked_up = rto_program.trie_address(ipaddress.ip_address("%s" % address))
    held = [(rto_program.trie_network(rule.dest), rule) for rule in rules]
    matches = [(network.prefixlen, rule) for network, rule in held if looked_up in network]
    return max(matches, key=lambda match: match[0])[1] if matches else None


def rule_for(address: str, rules: List[Rule], default_jiffies: Optional[int]) -> Optional[int]:
    """The jiffies the program gives a connection to address (for rto_ms: auto, the upper bound),
    or None (kernel default)."""
    rule = matching_rule(address, rules)
    return rule.rto_jiffies if rule else default_jiffies
