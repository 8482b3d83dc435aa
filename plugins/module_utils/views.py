# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An instance as results show it: the diff's before and after, and the instance with its hit
counters and handshake telemetry that both the module's result and the info module report.
Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import learned, rto_program
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import AUTO, jiffies_to_ms, network_text

# What results show of telemetry.slot_telemetry() per rule and for the default (the histogram
# stays with the reader and the metrics textfile: 32 buckets per rule would swamp a result).
REPORTED_TELEMETRY = (
    "handshakes",
    "syn_retransmits",
    "synack_retransmits",
    "spurious_retransmits",
    "rtt_us",
    "rtt_samples",
)


def reported_telemetry(slot_telemetry):
    """A slot's telemetry as results show it; every field None for an instance without the stats
    map (applied by an earlier object, or not created yet)."""
    return {key: (slot_telemetry or {}).get(key) for key in REPORTED_TELEMETRY}


def rules_view(rules, hz):
    """[Rule] -> [{dest, rto_ms, rto_jiffies}] (hz None: the jiffies alone); an auto rule's rto_ms
    is "auto" and its rto_jiffies the learned value's upper bound (auto_max_ms)."""
    view = []
    for rule in rules:
        entry = {"dest": network_text(rule.dest)}
        if rule.auto:
            entry["rto_ms"] = AUTO
        elif hz:
            entry["rto_ms"] = jiffies_to_ms(rule.rto_jiffies, hz)
        entry["rto_jiffies"] = rule.rto_jiffies
        view.append(entry)
    return view


def _default_view(default_jiffies, default_auto, hz):
    if default_auto:
        return AUTO
    return jiffies_to_ms(default_jiffies, hz) if default_jiffies and hz else None


def auto_view(auto_config, max_jiffies, table_size):
    """rto_ms: auto's settings as results show them (rto_program.AUTO_CONFIG_FIELDS values, the
    upper bound's jiffies, the learned map's size), or None when no rule or default is auto."""
    if not auto_config:
        return None
    settings = dict(zip(rto_program.AUTO_CONFIG_FIELDS, auto_config))
    hz = settings["hz"]
    return {
        "min_ms": jiffies_to_ms(settings["min_jiffies"], hz),
        "max_ms": jiffies_to_ms(max_jiffies, hz) if max_jiffies else None,
        "factor": settings["factor_pct"] / 100.0,
        "min_samples": settings["min_samples"],
        "ttl_s": settings["ttl_s"],
        "retransmit_budget": settings["retransmit_budget"],
        "table_size": table_size,
    }


def describe_desired(desired):
    return {
        "cgroup": desired.cgroup,
        "attach_mode": desired.attach_mode,
        "direction": desired.direction,
        "rules": rules_view(desired.rules, desired.hz),
        "default_rto_ms": _default_view(desired.default_jiffies, desired.default_auto, desired.hz),
        "auto": auto_view(
            desired.auto_config(),
            learned.upper_bound(desired.rules, desired.default_jiffies, desired.default_auto),
            desired.table_size(),
        ),
        "object_sha256": desired.object.sha256,
    }


def describe_current(current):
    """The instance as the kernel holds it, in the shape of describe_desired ({} when absent).
    Jiffies convert back with the HZ recorded when they were written."""
    if not current.exists:
        return {}
    hz = current.meta.get("hz") if current.meta else None
    direction = [name for name, bits in rto_program.DIRECTIONS.items() if bits == current.directions]
    rules = [rule for rule, _slot in current.rules]
    return {
        "cgroup": current.cgroup,
        "attach_mode": current.attach_mode,
        "direction": direction[0] if direction else None,
        "rules": rules_view(rules, hz),
        "default_rto_ms": _default_view(current.default_jiffies, current.default_auto, hz),
        "auto": auto_view(
            current.auto_config,
            learned.upper_bound(rules, current.default_jiffies, current.default_auto),
            current.learned_info.max_entries if current.learned_info else None,
        ),
        "object_sha256": current.meta["object_sha256"] if current.meta else None,
    }


def with_hits(view, current, telemetry=None):
    """view (describe_desired or describe_current) with the instance's name, pins and program, and
    per rule and for the default the connections it answered (hits) and its handshake telemetry,
    as current's hits and stats maps count them (telemetry: current.telemetry() when the caller
    has read it already)."""
    hits = current.hits()
    if telemetry is None:
        telemetry = current.telemetry()
    return dict(
        view,
        rules=[
            dict(rule, hits=hits.get(slot, 0), **reported_telemetry(telemetry.get(slot)))
            for slot, rule in enumerate(view["rules"])
        ],
        name=os.path.basename(current.instance_dir),
        pin_dir=current.instance_dir,
        program_id=current.prog_info.id if current.prog_info else None,
        default_hits=hits.get(rto_program.DEFAULT_HIT_SLOT, 0),
        default_telemetry=reported_telemetry(telemetry.get(rto_program.DEFAULT_HIT_SLOT)),
    )
