# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An instance on bpffs: the names it pins under <pin_dir>/<name>/, and the meta record (a JSON
document in the meta map) that holds what the kernel cannot tell: the cgroup, the attach mode,
the object, the HZ the jiffies were written with, the fingerprint of the maps. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import json
import os
from typing import List, Optional

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_maps, bpf_syscall, rto_program
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import ConfigError, Desired, Rule, network_text

PROG_PIN = "prog"
LINK_PIN = "link"
META_MAP = "meta"
META_VALUE_SIZE = 4096
META_FORMAT = 1
NEW_PIN_PREFIX = "new_"  # a pin waiting to be renamed over the one in use
META_IPV6_MAPPED = "ipv6_mapped_slots"  # the meta record's ipv6_mapped_slots()


def instance_pin_names() -> List[str]:
    """Every name the module pins in an instance directory: nothing else there is its to remove."""
    names = [PROG_PIN, *list(rto_program.MAP_CONTRACT), META_MAP, LINK_PIN]
    return names + [NEW_PIN_PREFIX + name for name in names]


def open_pin(path):
    """The object pinned at path as a new fd, or None when nothing is pinned there."""
    try:
        return bpf_syscall.obj_get(path)
    except bpf_syscall.BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def remove_pin(path):
    """Unpin path; nothing pinned there is fine."""
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def read_meta(meta_fd):
    """The instance record in the meta map -> (record, None), or (None, what is wrong with it)."""
    if meta_fd is None:
        return None, "meta map is missing"
    raw = bpf_maps.map_lookup(meta_fd, rto_program.CONFIG_KEY.pack(0), META_VALUE_SIZE) or b""
    try:
        meta = json.loads(raw.rstrip(b"\0").decode("utf-8"))
        if meta.get("format") != META_FORMAT or not {"cgroup", "attach_mode", "object_sha256"} <= set(meta):
            raise ValueError("unknown format")
    except ValueError as exc:
        return None, "meta record is unreadable (%s)" % exc
    return meta, None


def read_meta_pin(path):
    """The record pinned at path, or None (nothing pinned, or unreadable)."""
    meta_fd = open_pin(path)
    if meta_fd is None:
        return None
    try:
        return read_meta(meta_fd)[0]
    finally:
        os.close(meta_fd)


def meta_value(desired: Desired) -> bytes:
    """The meta map's value recording desired."""
    record = {
        "format": META_FORMAT,
        "cgroup": desired.cgroup,
        "attach_mode": desired.attach_mode,
        "object_sha256": desired.object.sha256,
        "hz": desired.hz,
        "maps_sha256": maps_fingerprint(
            desired.rules,
            desired.default_jiffies,
            rto_program.DIRECTIONS[desired.direction],
            desired.default_syn_retries,
            desired.default_auto,
            desired.auto_config(),
        ),
        META_IPV6_MAPPED: ipv6_mapped_slots(desired.rules),
    }
    raw = json.dumps(record, sort_keys=True).encode("utf-8")
    if len(raw) > META_VALUE_SIZE:
        raise ConfigError(
            "instance record is %d bytes, more than the %d the meta map holds (cgroup path too long?)"
            % (len(raw), META_VALUE_SIZE)
        )
    return raw.ljust(META_VALUE_SIZE, b"\0")


def maps_fingerprint(
    rules: List[Rule],
    default_jiffies: Optional[int],
    directions: int,
    default_syn_retries: Optional[int] = None,
    default_auto: bool = False,
    auto_config: Optional[tuple] = None,
) -> str:
    """sha256 of what the rules and config maps hold. The meta record keeps the one written last,
    so the next run tells an edit made outside tcp_rto (drift) from a change of parameters. SYN
    retry counts and rto_ms: auto enter only where set: instances without them keep their
    fingerprint. What the learned map holds is no configuration and never enters."""
    held = [
        [network_text(rule.dest), rule.rto_jiffies]
        + ([rule.syn_retries] if rule.syn_retries else [])
        + (["auto"] if rule.auto else [])
        for rule in rules
    ]
    text = json.dumps(
        [held, default_jiffies or 0, directions]
        + ([default_syn_retries] if default_syn_retries else [])
        + ([["auto"] if default_auto else [], list(auto_config)] if auto_config else []),
        sort_keys=True,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def ipv6_mapped_slots(rules: List[Rule]) -> str:
    """The slots of the rules given as IPv6 inside ::ffff:0:0/96, as a hex bitmask for the meta
    record: their keys are those of IPv4 networks, so only the record tells the family back."""
    mask = 0
    for slot, rule in enumerate(rules):
        if rto_program.in_v4_mapped(rule.dest):
            mask |= 1 << slot
    return "%x" % mask


def mapped_slots(mask: Optional[str]) -> set:
    """The slots an ipv6_mapped_slots() mask names."""
    try:
        bits = int(mask, 16)
    except (TypeError, ValueError):
        return set()  # a record of an older version (no mask) or an edited one: read the keys as IPv4
    return {slot for slot in range(bits.bit_length()) if bits >> slot & 1}
