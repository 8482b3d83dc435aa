# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: report_table
short_description: One table of tcp_initial_rto_info results, as CSV or Markdown
version_added: 0.1.0
description:
  - Turns a mapping of host name to the result of M(netbpf.tcp_rto.tcp_initial_rto_info) into one table
    with a row per host and instance (a host without instances gets one row).
  - Columns are host, kernel, hz, instance, state, cgroup, rules, default_ms, program_id, hits, handshakes,
    syn_retransmits, synack_retransmits, rtt_p99_us, warnings, learned, foreign, supported, problems, rollback.
  - The learned column shows, for an instance with C(rto_ms=auto), the remote hosts with the most samples
    (at most five; the info module's C(learned) has twenty) as C(host=rto_ms(n=samples,est=estimate_us)), that
    is the initial RTO a SYN to the host gets now, from how many clean handshakes, and their SRTT + 4 RTTVAR in
    microseconds; C(!fallback) follows the RTO when it is the upper bound for that reason.
  - The handshake columns come from each instance's telemetry (see M(netbpf.tcp_rto.tcp_initial_rto_info)).
    They are handshakes (outgoing and incoming), syn_retransmits and synack_retransmits summed over its rules and
    default; rtt_p99_us the p99 handshake round trip in microseconds of each rule that has samples, as
    C(dest=p99(n=samples)) (V(default) for the default); warnings the
    number of its harm warnings (a rule whose RTO is below the safety factor times that p99). Empty for an
    instance without telemetry (applied by an earlier release, until its next apply).
  - "The rollback column shows, from the info module's C(history), how many rollbacks in a row the instance has
    and what the next one puts back (its rules and default, or V(no instance)), as C(2: 10.0.0.0/8=200ms default=300ms);
    empty when it has no history record (a rollback changes nothing)."
  - The state of an instance is V(ok), V(detached) (its program is not attached to its cgroup),
    V(drift) (a map edited outside tcp_rto, or the unit it follows missing), V(damaged) (pins or the
    program missing), or V(not loaded) for a recorded instance the kernel does not hold (its boot restore
    did not run or failed). The problems column says why.
author: netbpf.tcp_rto developers
options:
  _input:
    description: Host name to info result (a failed or unreachable host may map to its error result).
    type: dict
    required: true
  fmt:
    description:
      - Output format. V(summary) is not a table but one line per unhealthy host (unsupported, not read,
        an instance whose state is not V(ok), or one with harm warnings) with what is wrong, or a line
        saying that every host is healthy.
    type: str
    choices: [csv, markdown, summary]
    default: csv
"""

EXAMPLES = r"""
- name: Write the report
  ansible.builtin.copy:
    content: "{{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars, 'info')))
                 | netbpf.tcp_rto.report_table('markdown') }}"
    dest: report.md
    mode: "0644"
"""

RETURN = r"""
_value:
  description: The table.
  type: str
"""

import csv
import io

COLUMNS = (
    "host",
    "kernel",
    "hz",
    "instance",
    "state",
    "cgroup",
    "rules",
    "default_ms",
    "program_id",
    "hits",
    "handshakes",
    "syn_retransmits",
    "synack_retransmits",
    "rtt_p99_us",
    "warnings",
    "learned",
    "foreign",
    "supported",
    "problems",
    "rollback",
)


def _slots(instance):
    """(label, telemetry) of each rule and the default of an instance row."""
    slots = [(rule.get("dest"), rule) for rule in instance.get("rules", [])]
    if instance.get("default_telemetry"):
        slots.append(("default", instance["default_telemetry"]))
    return slots


def _telemetry_cells(instance):
    """The handshake columns of an instance: empty without telemetry (no instance, not loaded, or
    an instance an earlier release applied, whose counters are null)."""
    slots = [(label, slot) for label, slot in _slots(instance) if slot.get("handshakes") is not None]
    if not slots:
        return dict(handshakes="", syn_retransmits="", synack_retransmits="", rtt_p99_us="", warnings="")
    return dict(
        handshakes=sum(slot["handshakes"]["outgoing"] + slot["handshakes"]["incoming"] for _label, slot in slots),
        syn_retransmits=sum(slot.get("syn_retransmits") or 0 for _label, slot in slots),
        synack_retransmits=sum(slot.get("synack_retransmits") or 0 for _label, slot in slots),
        rtt_p99_us=" ".join(
            "%s=%s(n=%s)" % (label, slot["rtt_us"]["p99"], slot.get("rtt_samples", "?"))
            for label, slot in slots
            if slot.get("rtt_us")
        ),
        warnings=len(instance.get("harm_warnings") or []),
    )


LEARNED_SHOWN = 5


def _learned_cell(instance):
    return " ".join(
        "%s=%gms(n=%d,est=%dus)%s"
        % (
            host["host"],
            host["rto_ms"],
            host["samples"],
            host["estimate_us"],
            "!" + host["fallback"] if host.get("fallback") else "",
        )
        for host in (instance.get("learned") or [])[:LEARNED_SHOWN]
    )


def _rto_text(rto_ms):
    return rto_ms if rto_ms == "auto" else "%sms" % rto_ms


def _rules_cell(rules):
    return " ".join("%s=%s" % (rule["dest"], _rto_text(rule["rto_ms"])) for rule in rules)


def _rollback_cell(kept):
    """How many rollbacks in a row the instance has, and what the next one puts back."""
    if not kept:
        return ""
    previous = kept.get("previous")
    if previous is None:
        to = "record unreadable"
    elif previous.get("state") == "absent":
        to = "no instance"
    else:
        default = previous.get("rto_ms")
        to = " ".join(
            part
            for part in (
                _rules_cell(previous.get("rules") or []),
                "" if default is None else "default=" + _rto_text(default),
            )
            if part
        )
    return "%s: %s" % (kept.get("records"), to)


def _rows(infos):
    for host in sorted(infos):
        info = infos[host] or {}
        reasons = info.get("unsupported_reasons") or [info.get("msg", "no result")]
        base = dict(
            host=host,
            kernel=info.get("kernel", {}).get("release", ""),
            hz=info.get("kernel", {}).get("hz", ""),
            supported="yes" if info.get("supported") else "no: " + "; ".join(reasons),
        )
        instances = list(info.get("instances") or [])
        for name in info.get("recorded_not_loaded") or []:
            prefix = "recorded, not loaded: %s " % name
            problems = [problem for problem in info.get("problems", []) if problem.startswith(prefix)]
            instances.append({"name": name, "state": "not loaded", "problems": problems})
        for instance in instances or [{}]:
            rules = instance.get("rules", [])
            yield dict(
                base,
                instance=instance.get("name", ""),
                state=instance.get("state", ""),
                problems="; ".join(instance.get("problems", [])),
                cgroup=instance.get("cgroup", ""),
                rules=_rules_cell(rules),
                default_ms="" if instance.get("default_rto_ms") is None else instance["default_rto_ms"],
                program_id="" if instance.get("program_id") is None else instance["program_id"],
                hits=sum(rule.get("hits", 0) for rule in rules) + instance.get("default_hits", 0) if instance else "",
                learned=_learned_cell(instance),
                foreign=" ".join(str(program.get("id")) for program in instance.get("foreign_programs", [])),
                rollback=_rollback_cell((info.get("history") or {}).get(instance.get("name"))),
                **_telemetry_cells(instance),
            )


def unhealthy(infos):
    """Host name -> what is wrong there (unsupported, a failed read, an instance not ok or with harm
    warnings), for the hosts where anything is."""
    found = {}
    for row in _rows(infos):
        reasons = []
        if row["supported"] != "yes":
            reasons.append("unsupported: " + row["supported"][len("no: ") :])
        if row["instance"] and row["state"] != "ok":
            reasons.append(
                "%s %s%s" % (row["instance"], row["state"], " (%s)" % row["problems"] if row["problems"] else "")
            )
        if row["warnings"]:
            reasons.append(
                "%s has %s harm warnings (rtt_p99_us %s)" % (row["instance"], row["warnings"], row["rtt_p99_us"])
            )
        if reasons:
            found.setdefault(row["host"], []).extend(
                reason for reason in reasons if reason not in found.get(row["host"], [])
            )
    return found


def report_table(infos, fmt="csv"):
    if fmt == "summary":
        found = unhealthy(infos)
        if not found:
            return "all %d hosts healthy\n" % len(infos)
        return "%d of %d hosts unhealthy:\n%s" % (
            len(found),
            len(infos),
            "".join("%s: %s\n" % (host, "; ".join(reasons)) for host, reasons in sorted(found.items())),
        )
    rows = [["%s" % row[column] for column in COLUMNS] for row in _rows(infos)]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
        return out.getvalue()
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class FilterModule:
    def filters(self):
        return {"report_table": report_table}
