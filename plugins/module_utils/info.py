# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host read without changing it (tcp_initial_rto_info): can it run the program (and why not),
which instances of the collection it holds, their counters, and the other sock_ops programs next to them."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_syscall,
    cgroups,
    coexistence,
    drift,
    features,
    harm,
    host,
    host_paths,
    hz,
    persistence,
    service_unit,
    views,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current


def _support(release):
    """-> (kernel facts, cgroup2 mount or None, reasons the program cannot run here). The features
    are probed as the module probes them ({} when probing is not possible, e.g. without root)."""
    reasons = []
    kernel = dict(release=release, hz=None, hz_source=None, features={})
    try:
        probed = features.detect(release)
        kernel["features"] = probed.as_dict()
        probed.require()
    except host.HostError as exc:
        reasons.append(str(exc))
    kernel["hz"], kernel["hz_source"] = hz.discover(None, release)
    try:
        mount = cgroups.cgroup2_mount()
    except host.HostError as exc:
        mount = None
        reasons.append(str(exc))
    return kernel, mount, reasons


def _unit_problem(unit, systemctl=None):
    """Why a followed unit cannot attach its instance, or None (also when systemd cannot tell)."""
    try:
        service_unit.running_cgroup(unit, "/", systemctl)
    except service_unit.UnitError as exc:
        return str(exc) if "systemd has no unit" in str(exc) else None
    except (OSError, ValueError):
        return None
    return None


def _instance_state(current, problems):
    """ok, detached, drift (maps edited outside tcp_rto) or damaged (pins or program missing)."""
    if current.meta is None or not (current.program_intact or current.of_earlier_object):
        return "damaged"
    if not current.attached:
        return "detached"
    if problems or drift.maps_edited(current):
        return "drift"
    return "ok"


def _instance_view(current, record_names, root, telemetry, thresholds):
    view = views.with_hits(views.describe_current(current), current, telemetry)
    view["harm_warnings"] = harm.harm_warnings(view, *thresholds)
    name = view["name"]
    view.update(
        attached=current.attached,
        persistent=name in record_names,
        unit=persistence.recorded_unit(name, root) if name in record_names else None,
    )
    problems = [problem for problem in [current.meta_problem] if problem]
    if not (current.program_intact or current.of_earlier_object):
        problems.append("program or maps missing or mismatched")
    view["learned"] = current.learned_hosts()
    view["state"] = _instance_state(current, problems)
    if view["state"] == "detached" and current.prog_info is not None:
        problems.append(
            "detached: program %d is not attached to %s: %s"
            % (current.prog_info.id, current.cgroup, drift.detach_cause(current))
        )
    if view["state"] == "drift" and drift.maps_edited(current):
        problems.append("drift: the rules or config map was edited outside tcp_rto; apply the instance again")
    if current.of_earlier_object:
        problems.append(
            "applied from an earlier object, without the maps %s: apply the instance again to upgrade it"
            % ", ".join(current.maps_of_newer_object)
        )
    unit_problem = _unit_problem(view["unit"]) if view["unit"] else None
    if unit_problem:
        problems.append("unit missing: " + unit_problem)
    view["problems"] = problems
    return view


def _not_loaded_problem(name, root):
    unit = persistence.recorded_unit(name, root)
    if unit:
        return "recorded, not loaded: %s follows %s, whose next start loads it%s" % (
            name,
            unit,
            "; " + _unit_problem(unit) if _unit_problem(unit) else "",
        )
    return (
        "recorded, not loaded: %s has a record but the kernel does not hold it: its boot restore did not run "
        "or failed (systemctl status tcp-rto@%s, journalctl -u tcp-rto@%s)" % (name, name, name)
    )


def _foreign(cgroup, own_ids):
    try:
        return coexistence.foreign_programs(cgroup, own_ids)
    except (OSError, bpf_syscall.BpfError) as exc:
        return [{"error": "cannot query %s: %s" % (cgroup, exc)}]


def gather(pin_dir, cgroups=(), safety_factor=harm.DEFAULT_SAFETY_FACTOR, min_samples=harm.DEFAULT_MIN_SAMPLES):
    """The info module's result."""
    return read_host(pin_dir, cgroups, safety_factor, min_samples)[0]


def read_host(pin_dir, cgroups=(), safety_factor=harm.DEFAULT_SAFETY_FACTOR, min_samples=harm.DEFAULT_MIN_SAMPLES):
    """-> (the info module's result, [(instance view, its current.telemetry())] for the metrics)."""
    harm.check_thresholds(safety_factor, min_samples)
    root = host_paths.host_root()
    release = host.kernel_release()
    kernel, mount, reasons = _support(release)
    link_info = kernel["features"].get("link_info", False)
    bpffs_mounted = host.is_bpffs(os.path.dirname(pin_dir.rstrip("/")) or "/")
    record_names = host_paths.Layout(root).recorded_names()
    instances, own_ids, telemetry = [], [], {}
    if os.path.isdir(pin_dir) and not reasons:
        for name in sorted(os.listdir(pin_dir)):
            current = Current(os.path.join(pin_dir, name), link_info=link_info)
            try:
                telemetry[name] = current.telemetry()
                instances.append(
                    _instance_view(current, record_names, root, telemetry[name], (safety_factor, min_samples))
                )
                own_ids += [current.prog_info.id] if current.prog_info else []
            finally:
                current.close()
    for view in instances:
        view["foreign_programs"] = _foreign(view["cgroup"], own_ids) if view["cgroup"] else []
    loaded = [view["name"] for view in instances]
    not_loaded = [name for name in record_names if name not in loaded]
    gathered = dict(
        supported=not reasons,
        unsupported_reasons=reasons,
        kernel=kernel,
        cgroup2_mount=mount,
        records_dir=host_paths.Layout(root).record_dir,
        bpffs_mounted=bpffs_mounted,
        instances=instances,
        recorded_not_loaded=not_loaded,
        problems=["%s: %s" % (view["name"], problem) for view in instances for problem in view["problems"]]
        + [_not_loaded_problem(name, root) for name in not_loaded],
        foreign_programs={cgroup: _foreign(cgroup, own_ids) for cgroup in cgroups} if not reasons else {},
    )
    return gathered, [(view, telemetry[view["name"]]) for view in instances]
