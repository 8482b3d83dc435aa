# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The record of a persistent instance (/etc/tcp_rto/<name>.json): the module parameters the boot
restore applies again, what each key may hold, and the check that a record is one this code wrote.
The record is the configuration: a well-formed edit of it is what the next boot applies.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

RECORD_FORMAT = 1
# Module parameters the record keeps: what reconcile.run needs to apply the instance again.
RECORDED = (
    "name",
    "cgroup",
    "rules",
    "rto_ms",
    "syn_give_up_s",
    "direction",
    "pin_dir",
    "mount_bpffs",
    "hz",
    "verify",
    "unit",
    "auto_min_ms",
    "auto_max_ms",
    "auto_factor",
    "auto_min_samples",
    "auto_ttl_s",
    "auto_retransmit_budget",
    "auto_table_size",
)
AUTO_KEYS = RECORDED[-7:]
# Keys a record of an earlier version may lack, and what they meant there (None: the default).
ADDED_KEYS = dict({"unit": None, "syn_give_up_s": None}, **dict.fromkeys(AUTO_KEYS))
# Keys a record of an earlier version may hold that mean nothing now (force_legacy_attach: a
# test aid, an option until 0.2.0).
DROPPED_KEYS = ("force_legacy_attach",)


class RecordError(Exception):
    """The record is missing or not one this code wrote; the message says which and what to do."""


def record_content(params, object_sha256, object_path):
    record = {key: params.get(key) for key in RECORDED}
    if record["rules"]:  # a rule's omitted syn_give_up_s (None from Ansible) is left out, as in earlier records
        record["rules"] = [{key: value for key, value in rule.items() if value is not None} for rule in record["rules"]]
    record.update(format=RECORD_FORMAT, src=object_path, object_sha256=object_sha256)
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(check):
    return lambda value: value is None or check(value)


def _is_str(value):
    return isinstance(value, str)


def _is_seconds(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_rto(value):
    """rto_ms as the module takes it: whole milliseconds or "auto"."""
    return _is_int(value) or value == "auto"


def _is_rules(value):
    return isinstance(value, list) and all(
        isinstance(rule, dict)
        and {"dest", "rto_ms"} <= set(rule) <= {"dest", "rto_ms", "syn_give_up_s"}
        and _is_str(rule["dest"])
        and _is_rto(rule["rto_ms"])
        and _optional(_is_seconds)(rule.get("syn_give_up_s"))
        for rule in value
    )


# What each key of a record holds, as the module's argument spec gives it.
RECORD_TYPES = {
    "format": (_is_int, "an integer"),
    "name": (_is_str, "a string"),
    "cgroup": (_optional(_is_str), "a string or null"),
    "rules": (
        _optional(_is_rules),
        "a list of {dest: string, rto_ms: integer or auto, optional syn_give_up_s: number}",
    ),
    "rto_ms": (_optional(_is_rto), "an integer, auto or null"),
    "syn_give_up_s": (_optional(_is_seconds), "a number or null"),
    "direction": (_is_str, "a string"),
    "pin_dir": (_is_str, "a string"),
    "mount_bpffs": (lambda value: isinstance(value, bool), "true or false"),
    "hz": (_optional(_is_int), "an integer or null"),
    "verify": (lambda value: isinstance(value, bool), "true or false"),
    "unit": (_optional(_is_str), "a string or null"),
    "auto_min_ms": (_optional(_is_int), "an integer or null"),
    "auto_max_ms": (_optional(_is_int), "an integer or null"),
    "auto_factor": (_optional(_is_seconds), "a number or null"),
    "auto_min_samples": (_optional(_is_int), "an integer or null"),
    "auto_ttl_s": (_optional(_is_int), "an integer or null"),
    "auto_retransmit_budget": (_optional(_is_int), "an integer or null"),
    "auto_table_size": (_optional(_is_int), "an integer or null"),
    "src": (_is_str, "a string"),
    "object_sha256": (_is_str, "a string"),
}


def check_record(record, name, object_path):
    """ValueError saying what is wrong with a parsed record, unless it is one this code wrote for
    the instance name, its object copied to object_path."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if record.get("format") != RECORD_FORMAT:
        raise ValueError("format is not %d" % RECORD_FORMAT)
    missing = sorted(set(RECORD_TYPES) - set(record) - set(ADDED_KEYS))
    if missing:
        raise ValueError("missing %s" % ", ".join(missing))
    unknown = sorted(set(record) - set(RECORD_TYPES) - set(DROPPED_KEYS))
    if unknown:
        raise ValueError("unknown key(s) %s" % ", ".join(unknown))
    for key in sorted(RECORD_TYPES):
        check, expected = RECORD_TYPES[key]
        if key in record and not check(record[key]):
            raise ValueError("%s is %s, expected %s" % (key, json.dumps(record[key])[:80], expected))
    if record["name"] != name:
        raise ValueError("it names the instance %r" % record["name"])
    if record["src"] != object_path:
        raise ValueError("src is %s, not the collection's copy %s" % (record["src"], object_path))
