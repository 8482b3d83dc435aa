# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One run of an instance, from parameters to result: desired = from the parameters, current =
read from the kernel, plan = between them, apply the plan, verify with real handshakes, and the
result assembled once from these values.

The module and the boot-time restore both call run(), so a host restores exactly what Ansible
applied. Plain stdlib: no Ansible import."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
from typing import Any, Dict, List, NamedTuple, Optional

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_info,
    bpf_syscall,
    cgroups,
    coexistence,
    drift,
    fault,
    features,
    handshakes,
    harm,
    host,
    host_paths,
    hz,
    lock,
    metrics_timer,
    persistence,
    pins,
    probe,
    record,
    service_unit,
    syn_give_up,
    views,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.bpf_object import BpfObjectError
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current, instances_on_cgroup
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import (
    KERNEL_DEFAULT_RTO_MS,
    ConfigError,
    Desired,
    check_paths,
    from_params,
    validate_name,
    with_rto_spelled,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.plan import (
    InstanceError,
    Plan,
    plan_absent,
    plan_present,
    unrecorded_attachments,
)

# persistent as the boot-time code passes it: it applies the record and changes nothing of it.
PERSISTENCE_UNTOUCHED = "untouched"


def persistence_step(params):
    """What a run with state present does to the instance's persistence: "record" (persistent: true,
    or omitted for an instance that has a record, which follows the new parameters), "forget"
    (persistent: false on a recorded instance) or None."""
    persistent = params.get("persistent")
    if persistent is True:
        return "record"
    if persistent not in (None, False) or not persistence.recorded(params["name"], host_paths.host_root()):
        return None
    return "forget" if persistent is False else "record"


class VerificationFailed(Exception):
    """Applied, but a real handshake does not start with the configured RTO; .result has the rest."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


# What run() raises for the caller to report (each message says what to do).
ERRORS = (
    ConfigError,
    InstanceError,
    host.HostError,
    BpfObjectError,
    probe.ProbeError,
    bpf_syscall.BpfError,
    record.RecordError,
    lock.LockedError,
    service_unit.UnitError,
    EnvironmentError,
)


def describe_error(exc):
    if isinstance(exc, BpfObjectError):
        return "src is not a BPF object this collection can load: %s" % exc
    if isinstance(exc, bpf_syscall.BpfError):
        return "a bpf(2) call failed: %s." % exc
    return str(exc)


class Target(NamedTuple):
    """Where the run goes: params with the cgroup of a followed unit, and what that unit says."""

    params: Dict[str, Any]
    unit_running: Optional[bool]  # None: no unit given (or state absent)
    warnings: List[str]


class Converged(NamedTuple):
    """What planning (and, unless check mode, applying) the kernel's part left."""

    plan: Plan
    drift: List[str]
    diff: Optional[Dict[str, Any]]


class Observed(NamedTuple):
    """The instance as the kernel holds it after the run, and the handshakes that prove it."""

    instance: Dict[str, Any]
    foreign_programs: List[Dict[str, Any]]
    verification: Optional[Dict[str, Any]]
    conflicts: List[Dict[str, Any]]
    syn_give_up_s: float


def run(params, check_mode=False, diff=False):
    """Bring the instance to what params describe (state present or absent); -> the result dict.
    Raises one of ERRORS; VerificationFailed after an apply whose handshakes do not match."""
    params = with_rto_spelled(params)
    thresholds = _harm_thresholds(params)
    kernel, kernel_facts = preflight(params)
    target = follow_unit(params)
    params = target.params
    desired = None
    if params["state"] == "present":
        desired = from_params(
            params,
            kernel.attach_mode(),
            kernel_facts["hz"],
            pending=target.unit_running is False,
        )
        if syn_give_up.sets_syn_retries(desired):
            from ansible_collections.netbpf.tcp_rto.plugins.module_utils import syn_retries_probe

            if not syn_retries_probe.settable():
                raise host.HostError(
                    "kernel %s does not let a sock_ops program set TCP_SYNCNT (bpf_setsockopt refused it in a probe; "
                    "upstream Linux allows it from about 5.9), so syn_give_up_s cannot be kept: drop syn_give_up_s, "
                    "or set net.ipv4.tcp_syn_retries for the whole host instead" % kernel.release
                )
    step = persistence_step(params) if desired is not None else None
    if desired is not None and params.get("metrics_textfile"):
        if step != "record":
            raise ConfigError(
                "metrics_textfile: the metrics timer runs the code persistence installs: set persistent: true"
            )
        metrics_timer.check(params["metrics_textfile"], params["pin_dir"], params.get("metrics_interval_s"))
    if desired is None or step:
        persistence.check_paths(params["name"], host_paths.host_root())
    if check_mode:  # reads only: no need to keep other runs out
        converged, observed, persisted = _reconcile(params, desired, kernel, target, step, check_mode, diff)
    else:
        with lock.InstanceLock(
            params["name"], params["pin_dir"], params.get("lock_timeout", lock.DEFAULT_TIMEOUT)
        ) as held:
            try:
                fault.point("lock_taken")
                converged, observed, persisted = _reconcile(params, desired, kernel, target, step, check_mode, diff)
            finally:
                if not os.path.isdir(os.path.join(params["pin_dir"], params["name"])):
                    held.remove_file()  # no instance (absent, or a refused first run): no lock file either
    failed = _failed_checks(observed)
    started = []
    if step == "record" and not params.get("unit") and not failed:
        # outside the lock: the unit's restore takes it
        started = persistence.start_unit(params["name"], host_paths.host_root(), check_mode)
    result = _result(kernel_facts, target, converged, observed, persisted + started, thresholds)
    if failed:
        raise VerificationFailed(handshakes.failure_message(desired, failed, observed.conflicts), result)
    return result


def _reconcile(params, desired, kernel, target, step, check_mode, diff):
    """The run under the instance's lock -> (Converged or None, Observed or None, persistence actions).
    A failed verification leaves persistence as it was."""
    running = target.unit_running is not False
    converged = converge(params, desired, kernel, check_mode, diff) if running else None
    fault.point("converged")
    root = host_paths.host_root()
    if desired is None:
        return converged, None, persistence.remove(params["name"], root, check_mode)
    observed = observe(params, desired, kernel, check_mode) if running else None
    if _failed_checks(observed):
        return converged, observed, []
    if step == "record":
        return (
            converged,
            observed,
            persistence.install(params, params["src"], desired.object.sha256, root, check_mode=check_mode),
        )
    if step == "forget":
        return converged, observed, persistence.remove(params["name"], root, check_mode)
    return converged, observed, []


def _harm_thresholds(params):
    """(safety_factor, min_samples) of the run; the harm defaults for a record (the boot restore)."""
    thresholds = (
        params.get("safety_factor", harm.DEFAULT_SAFETY_FACTOR),
        params.get("min_samples", harm.DEFAULT_MIN_SAMPLES),
    )
    harm.check_thresholds(*thresholds)
    return thresholds


def _result(kernel_facts, target, converged, observed, persisted, thresholds):
    actions = list(converged.plan.steps if converged else ()) + list(persisted)
    harmed = harm.harm_warnings(observed.instance, *thresholds) if observed else []
    result = dict(
        changed=bool(actions),
        actions=actions,
        kernel=kernel_facts,
        foreign_programs=observed.foreign_programs if observed else [],
        drift=converged.drift if converged else [],
        conflicts=observed.conflicts if observed else [],
    )
    warnings = target.warnings + list(converged.plan.warnings if converged else ())
    warnings += [warning["message"] for warning in harmed]
    if warnings:
        result["warnings"] = warnings
    if target.unit_running is not None:
        result["unit_running"] = target.unit_running
    if converged and converged.diff is not None:
        result["diff"] = converged.diff
    if observed:
        result.update(instance=observed.instance, syn_give_up_s=observed.syn_give_up_s, harm_warnings=harmed)
        if observed.verification is not None:
            result["verification"] = observed.verification
    return result


def preflight(params):
    """Checks that change nothing (the feature probes leave nothing behind): privileges, kernel
    features, name, HZ. -> (the kernel's features.KernelFeatures, the result's kernel facts)."""
    release = os.uname()[2]
    kernel = features.detect(release)
    kernel.require()
    validate_name(params["name"])
    check_paths(params)
    hz_value, hz_source = hz.discover(params["hz"], release)
    return kernel, dict(release=release, hz=hz_value, hz_source=hz_source, features=kernel.as_dict())


def follow_unit(params):
    """For unit: params with cgroup set to the running unit's cgroup, and whether it runs; for
    cgroup: a warning when it is a unit's cgroup, which systemd replaces at every start."""
    unit = params.get("unit")
    if not unit:
        owner = service_unit.unit_of_cgroup(params.get("cgroup"))
        warnings = []
        if owner and params["state"] == "present":
            warnings.append(
                "cgroup %s belongs to the systemd unit %s, which gets a new cgroup at every start: the instance "
                "stays on the old one. Give unit: %s instead to follow it across restarts and reboots"
                % (params["cgroup"], owner, owner)
            )
        return Target(params, None, warnings)
    if params.get("cgroup"):
        raise ConfigError("cgroup and unit are exclusive: give one (unit: follows the unit's cgroup)")
    if params["state"] == "absent":
        return Target(params, None, [])  # the pins say where the instance is attached
    if params.get("persistent") is False:
        raise ConfigError(
            "unit: %s attaches the instance at every start of the unit from its record: set persistent: true" % unit
        )
    cgroup = service_unit.running_cgroup(unit, cgroups.cgroup2_mount())
    warnings = []
    if cgroup is None:
        warnings.append("%s does not run: the instance is recorded, and its next start attaches it" % unit)
    return Target(dict(params, cgroup=cgroup), cgroup is not None, warnings)


def converge(params, desired, kernel, check_mode, diff):
    """Read what the pins hold, plan from it to desired (None: absent) with what the kernel
    (features.KernelFeatures) offers and, unless check_mode, apply the plan. -> Converged."""
    mount_bpffs = host.ensure_bpffs(params["pin_dir"], mount=params["mount_bpffs"], check_mode=True)
    host.check_pin_path(params["pin_dir"], params["name"])
    current = Current(
        os.path.join(params["pin_dir"], params["name"]), desired.cgroup if desired else None, kernel.link_info
    )
    try:
        drifted = []
        if desired is None:
            unrecorded, searched_all = unrecorded_attachments(current, _cgroup_root())
            plan = plan_absent(current, unrecorded, searched_all, kernel.link_detach, mount_bpffs)
        else:
            drifted = drift.findings(current, desired)
            plan = plan_present(
                desired,
                current,
                can_replace=kernel.prog_replace,
                link_detach=kernel.link_detach,
                mount_bpffs=mount_bpffs,
                others=instances_on_cgroup(params["pin_dir"], desired.cgroup, exclude=params["name"]),
                blockers=coexistence.attach_blockers(desired.cgroup, cgroups.cgroup2_mount()),
            )
        if plan.steps and not check_mode:
            # imported on a change only: most runs (a rollout's rerun) change nothing, and every
            # module_utils a run imports is compiled again from Ansible's zip on each run
            from ansible_collections.netbpf.tcp_rto.plugins.module_utils import apply

            apply.carry_out(plan, desired, current, params["pin_dir"], params["mount_bpffs"])
        diff_view = None
        if diff:
            before = views.describe_current(current)
            if drifted:
                before["drift"] = drifted
            diff_view = dict(before=before, after=views.describe_desired(desired) if desired else {})
        return Converged(plan, drifted, diff_view)
    finally:
        current.close()


def _cgroup_root():
    """The cgroup v2 mount, or None without one (then nothing can be attached)."""
    try:
        return cgroups.cgroup2_mount()
    except host.HostError:
        return None


def _instance_program_ids(params):
    """Programs of the other tcp_rto instances under pin_dir: nested instances are not foreign."""
    ids = []
    pin_dir = params["pin_dir"]
    for name in sorted(os.listdir(pin_dir)) if os.path.isdir(pin_dir) else []:
        if name == params["name"]:
            continue
        try:
            with bpf_syscall.closing_fd(bpf_syscall.obj_get(os.path.join(pin_dir, name, pins.PROG_PIN))) as fd:
                ids.append(bpf_info.prog_info(fd).id)
        except (OSError, bpf_syscall.BpfError):
            continue  # not an instance, or one without its program pin
    return ids


def observe(params, desired: Desired, kernel, check_mode) -> Observed:
    """What the kernel holds now, proven by real handshakes unless check mode or verify: false;
    the foreign programs that meet ours, and those that can explain a failed handshake."""
    applied = Current(os.path.join(params["pin_dir"], params["name"]), link_info=kernel.link_info)
    try:
        own_ids = [applied.prog_info.id] if applied.prog_info else []
    finally:
        applied.close()
    programs = coexistence.survey(desired.cgroup, cgroups.cgroup2_mount(), own_ids, _instance_program_ids(params))
    verification = None
    if params["verify"] and not check_mode:
        verification = handshakes.verify(desired, coexistence.descendants_to_probe(programs))
    applied = Current(os.path.join(params["pin_dir"], params["name"]), link_info=kernel.link_info)
    try:
        instance = views.with_hits(views.describe_desired(desired), applied)
        for rule, held in zip(instance["rules"], desired.rules):
            rule["syn_give_up_s"] = syn_give_up.rule_give_up_seconds(
                syn_give_up.shortest_rto_jiffies(desired, held.rto_jiffies, held.auto), held.syn_retries, desired.hz
            )
    finally:
        applied.close()
    failed = [check for check in (verification or {}).get("checks", []) if not check["ok"]]
    conflicts = (
        coexistence.conflicts(failed, programs, desired.cgroup, own_ids, KERNEL_DEFAULT_RTO_MS) if failed else []
    )
    return Observed(instance, programs, verification, conflicts, syn_give_up.give_up_seconds(desired))


def _failed_checks(observed):
    if observed is None or observed.verification is None:
        return []
    return [check for check in observed.verification["checks"] if not check["ok"]]
