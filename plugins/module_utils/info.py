# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only report of a host: can it run the program (and why not), which instances of the
collection it holds, their counters, and the other sock_ops programs next to them."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall as bpf
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host, persistence
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import instance as model
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program as abi


def _support(release):
    """-> (kernel facts, cgroup2 mount or None, reasons the program cannot run here)."""
    reasons = []
    kernel = dict(release=release, hz=None, hz_source=None, features=host.KernelFeatures(release).as_dict())
    for check in (host.require_root, host.check_kernel):
        try:
            check(release)
        except host.HostError as exc:
            reasons.append(str(exc))
    found = host.config_hz(release)
    kernel["hz"], kernel["hz_source"] = found or (host.tick_hz(), "measured")
    try:
        mount = host.cgroup2_mount()
    except host.HostError as exc:
        mount = None
        reasons.append(str(exc))
    return kernel, mount, reasons


def _instance_view(current, record_names, persist_root):
    view = model.describe_current(current)
    hits = current.hits()
    for slot, rule in enumerate(view["rules"]):
        rule["hits"] = hits.get(slot, 0)
    name = os.path.basename(current.instance_dir)
    view.update(
        name=name,
        pin_dir=current.instance_dir,
        program_id=current.prog_info.id if current.prog_info else None,
        attached=current.attached,
        default_hits=hits.get(abi.DEFAULT_HIT_SLOT, 0),
        persistent=name in record_names,
        unit=persistence.recorded_unit(name, persist_root) if name in record_names else None,
        problems=[problem for problem in [current.meta_problem] if problem]
        + ([] if current.program_intact else ["program or maps missing or mismatched"]),
    )
    return view


def _foreign(cgroup, own_ids):
    try:
        return model.foreign_programs(cgroup, own_ids)
    except (OSError, bpf.BpfError) as exc:
        return [{"error": "cannot query %s: %s" % (cgroup, exc)}]


def gather(pin_dir, cgroups=(), persist_root="/"):
    release = host.kernel_release()
    kernel, mount, reasons = _support(release)
    bpffs_mounted = host.is_bpffs(os.path.dirname(pin_dir.rstrip("/")) or "/")
    record_names = persistence.Layout(persist_root).recorded_names()
    instances, own_ids = [], []
    if os.path.isdir(pin_dir) and not reasons:
        for name in sorted(os.listdir(pin_dir)):
            current = model.Current(os.path.join(pin_dir, name))
            try:
                instances.append(_instance_view(current, record_names, persist_root))
                own_ids += [current.prog_info.id] if current.prog_info else []
            finally:
                current.close()
    for view in instances:
        view["foreign_programs"] = _foreign(view["cgroup"], own_ids) if view["cgroup"] else []
    return dict(
        supported=not reasons,
        unsupported_reasons=reasons,
        kernel=kernel,
        cgroup2_mount=mount,
        bpffs_mounted=bpffs_mounted,
        instances=instances,
        recorded_not_loaded=[name for name in record_names if name not in [view["name"] for view in instances]],
        foreign_programs={cgroup: _foreign(cgroup, own_ids) for cgroup in cgroups} if not reasons else {},
    )
