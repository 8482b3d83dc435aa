# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One run of an instance, from parameters to result: preflight, plan, apply, verify.

The module and the boot-time restore both call run(), so a host restores exactly what Ansible
applied. Plain stdlib: no Ansible import."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import apply as kernel_apply
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall as bpf
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    coexistence,
    drift,
    fault,
    features,
    host,
    lock,
    persistence,
    probe,
    service_unit,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import instance as model
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program as abi
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.bpf_object import BpfObject, BpfObjectError, check_contract

PROBE_ADDRESS = "127.0.0.1"


# persistent as the boot-time code passes it: it applies the record and changes nothing of it.
PERSISTENCE_UNTOUCHED = "untouched"


def persistence_step(params):
    """What a run with state present does to the instance's persistence: "record" (persistent: true,
    or omitted for an instance that has a record, which follows the new parameters), "forget"
    (persistent: false on a recorded instance) or None."""
    persistent = params.get("persistent")
    if persistent is True:
        return "record"
    if persistent not in (None, False) or not persistence.recorded(params["name"], _persist_root(params)):
        return None
    return "forget" if persistent is False else "record"


class VerificationFailed(Exception):
    """Applied, but a real handshake does not start with the configured RTO; .result has the rest."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


# What run() raises for the caller to report (each message says what to do).
ERRORS = (
    model.ConfigError,
    model.InstanceError,
    host.HostError,
    BpfObjectError,
    probe.ProbeError,
    bpf.BpfError,
    persistence.RecordError,
    lock.LockedError,
    service_unit.UnitError,
    EnvironmentError,
)


def describe_error(exc):
    if isinstance(exc, BpfObjectError):
        return "src is not a BPF object this collection can load: %s" % exc
    if isinstance(exc, bpf.BpfError):
        return "a bpf(2) call failed: %s." % exc
    return str(exc)


def discover_hz(params, release):
    if params["hz"] is not None:
        if params["hz"] <= 0:
            raise model.ConfigError("hz must be positive, got %d" % params["hz"])
        return params["hz"], "parameter"
    return host.config_hz(release) or (host.tick_hz(), "measured")


def _check(direction, expected_jiffies, observed_ms, low_ms, high_ms, hz):
    """One handshake: ok when the value the rules give lies within what was observed."""
    expected_ms = model.jiffies_to_ms(expected_jiffies, hz) if expected_jiffies else model.KERNEL_DEFAULT_RTO_MS
    return {
        "direction": direction,
        "address": PROBE_ADDRESS,
        "expected_ms": expected_ms,
        "observed_ms": model.plain_number(observed_ms),
        "ok": low_ms <= expected_ms <= high_ms,
    }


def verify(desired, descendants=()):
    """Real handshakes from inside the cgroup compared with what the instance should give them:
    always a connect() (the kernel default when direction leaves it out), and an accept() when
    direction includes incoming; a connect() in each of descendants too (checks with a cgroup key)."""
    directions = abi.DIRECTIONS[desired.direction]
    jiffies = model.rule_for(PROBE_ADDRESS, desired.rules, desired.default_jiffies)
    jiffy_ms = 1000.0 / desired.hz

    def outgoing_check(cgroup):
        observed_ms = probe.outgoing_rto_us(cgroup, PROBE_ADDRESS) / 1000.0  # exact: tcpi_rto
        expected = jiffies if directions & abi.DIRECTION_OUTGOING else None
        return _check(
            "outgoing", expected, observed_ms, observed_ms - jiffy_ms / 2, observed_ms + jiffy_ms / 2, desired.hz
        )

    checks = [outgoing_check(desired.cgroup)]
    if directions & abi.DIRECTION_INCOMING:
        incoming = probe.incoming_rto_ms(desired.cgroup, PROBE_ADDRESS)
        # The timer was armed somewhere between the connect and the read, so its full length lies in
        # [remaining, remaining + elapsed], give or take a jiffy of timer granularity; a busy VM's
        # clock can make the "exact" reading one jiffy off.
        checks.append(
            _check(
                "incoming",
                jiffies,
                incoming.rto_ms,
                incoming.remaining_ms - jiffy_ms,
                incoming.remaining_ms + incoming.elapsed_ms + jiffy_ms,
                desired.hz,
            )
        )
    checks.extend(dict(outgoing_check(descendant), cgroup=descendant) for descendant in descendants)
    return {"ok": all(check["ok"] for check in checks), "checks": checks}


def instance_result(desired, current):
    """The instance as the kernel holds it after apply (current re-read), or as planned."""
    view = model.describe_desired(desired)
    hits = current.hits() if current.exists else {}
    for slot, rule in enumerate(view["rules"]):
        rule["hits"] = hits.get(slot, 0)
        held = desired.rules[slot]
        rule["syn_give_up_s"] = _give_up_s(held.rto_jiffies, held.syn_retries, desired.hz)
    view.update(
        name=desired.name,
        pin_dir=current.instance_dir,
        program_id=current.prog_info.id if current.prog_info else None,
        default_hits=hits.get(abi.DEFAULT_HIT_SLOT, 0),
    )
    return view


def _give_up_s(rto_jiffies, syn_retries, hz):
    """When connect() with this initial RTO gives up on a peer that never answers: with the SYN
    retries the program sets (syn_give_up_s), else the host's tcp_syn_retries."""
    return round(
        host.syn_give_up_seconds(
            rto_jiffies / float(hz),
            syn_retries or host.read_sysctl("net.ipv4.tcp_syn_retries", 6),
            host.read_sysctl("net.ipv4.tcp_syn_linear_timeouts", 0),
        ),
        3,
    )


def give_up_seconds(desired):
    """The soonest any connect() the instance answers gives up (the kernel's 1 s for the rest)."""
    values = [(rule.rto_jiffies, rule.syn_retries) for rule in desired.rules]
    values.append(
        (desired.default_jiffies, desired.default_syn_retries) if desired.default_jiffies else (desired.hz, None)
    )
    return min(_give_up_s(jiffies, retries, desired.hz) for jiffies, retries in values)


def run(params, check_mode=False, diff=False):
    """Bring the instance to what params describe (state present or absent); -> the result dict.
    Raises one of ERRORS; VerificationFailed after an apply whose handshakes do not match."""
    result = dict(changed=False, actions=[], foreign_programs=[], drift=[], conflicts=[], warnings=[])
    kernel = preflight(params, result)
    params = follow_unit(params, result)
    desired = None
    if params["state"] == "present":
        desired = desired_instance(params, kernel, result["kernel"]["hz"], pending=result.get("unit_running") is False)
    step = persistence_step(params) if desired is not None else None
    if desired is None or step:
        persistence.check_paths(params["name"], _persist_root(params))
    if check_mode:  # reads only: no need to keep other runs out
        _reconcile(params, desired, kernel, step, check_mode, diff, result)
    else:
        with lock.InstanceLock(
            params["name"], params["pin_dir"], params.get("lock_timeout", lock.DEFAULT_TIMEOUT)
        ) as held:
            try:
                fault.point("lock_taken")
                _reconcile(params, desired, kernel, step, check_mode, diff, result)
            finally:
                if not os.path.isdir(os.path.join(params["pin_dir"], params["name"])):
                    held.remove_file()  # no instance (absent, or a refused first run): no lock file either
    if step == "record" and not params.get("unit"):
        # outside the lock: the unit's restore takes it
        result["actions"].extend(persistence.start_unit(params["name"], _persist_root(params), check_mode))
    result["changed"] = bool(result["actions"])
    if not result["warnings"]:
        del result["warnings"]
    return result


def _reconcile(params, desired, kernel, step, check_mode, diff, result):
    if result.get("unit_running") is not False:
        converge(params, desired, kernel, check_mode, diff, result)
    fault.point("converged")
    root = _persist_root(params)
    if desired is None:
        result["actions"].extend(persistence.remove(params["name"], root, check_mode))
    else:
        if result.get("unit_running") is not False:
            report(params, desired, kernel, check_mode, result)
        if step == "record":
            result["actions"].extend(
                persistence.install(params, params["src"], desired.object.sha256, root, check_mode=check_mode)
            )
        elif step == "forget":
            result["actions"].extend(persistence.remove(params["name"], root, check_mode))


def _persist_root(params):
    return params.get("persist_root") or "/"


def preflight(params, result):
    """Checks that change nothing (the feature probes leave nothing behind): privileges, kernel
    features, name, HZ. -> the kernel's features (features.KernelFeatures)."""
    release = os.uname()[2]
    kernel = features.detect(release)
    kernel.require()
    model.validate_name(params["name"])
    for key in ("cgroup", "pin_dir", "src", "persist_root"):
        if "\0" in (params.get(key) or ""):
            raise model.ConfigError("%s %r contains a NUL byte, which no path can hold: remove it" % (key, params[key]))
    hz, hz_source = discover_hz(params, release)
    result["kernel"] = dict(release=release, hz=hz, hz_source=hz_source, features=kernel.as_dict())
    return kernel


def follow_unit(params, result):
    """For unit: params with cgroup set to the running unit's cgroup, and result["unit_running"];
    for cgroup: a warning when it is a unit's cgroup, which systemd replaces at every start."""
    unit = params.get("unit")
    if not unit:
        owner = service_unit.unit_of_cgroup(params.get("cgroup"))
        if owner and params["state"] == "present":
            result["warnings"].append(
                "cgroup %s belongs to the systemd unit %s, which gets a new cgroup at every start: the instance "
                "stays on the old one. Give unit: %s instead to follow it across restarts and reboots"
                % (params["cgroup"], owner, owner)
            )
        return params
    if params.get("cgroup"):
        raise model.ConfigError("cgroup and unit are exclusive: give one (unit: follows the unit's cgroup)")
    if params["state"] == "absent":
        return params  # the pins say where the instance is attached
    if params.get("persistent") is False:
        raise model.ConfigError(
            "unit: %s attaches the instance at every start of the unit from its record: set persistent: true" % unit
        )
    cgroup = service_unit.running_cgroup(unit, host.cgroup2_mount())
    result["unit_running"] = cgroup is not None
    if cgroup is None:
        result["warnings"].append("%s does not run: the instance is recorded, and its next start attaches it" % unit)
    return dict(params, cgroup=cgroup)


def desired_instance(params, kernel, hz, pending=False):
    """The instance params ask for, fully validated (cgroup, object, rules) before any change; with
    pending (a unit that does not run yet) the cgroup is not resolved."""
    cgroup_root = host.cgroup2_mount()
    cgroup = None if pending else host.resolve_cgroup(params["cgroup"] or cgroup_root, cgroup_root)
    if not params["src"]:
        raise model.ConfigError(
            "src is required: run the module as netbpf.tcp_rto.tcp_initial_rto so that "
            "its action plugin sends the object, or give the object's path on the host"
        )
    obj = BpfObject.from_file(params["src"])
    check_contract(obj)
    attach_mode = kernel.attach_mode(params["force_legacy_attach"])
    desired = model.desired_state(
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
    )
    if (desired.default_syn_retries or any(rule.syn_retries for rule in desired.rules)) and not (
        features.syn_retries_settable(cgroup_root)
    ):
        raise host.HostError(
            "kernel %s does not let a sock_ops program set TCP_SYNCNT (bpf_setsockopt refused it in a probe; "
            "upstream Linux allows it from about 5.9), so syn_give_up_s cannot be kept: drop syn_give_up_s, "
            "or set net.ipv4.tcp_syn_retries for the whole host instead" % kernel.release
        )
    return desired


def converge(params, desired, kernel, check_mode, diff, result):
    """Plan from what the pins hold to desired (None: absent) and, unless check_mode, apply it
    with what the kernel (features.KernelFeatures) offers."""
    if host.ensure_bpffs(params["pin_dir"], mount=params["mount_bpffs"], check_mode=check_mode):
        result["actions"].append("mount bpffs on /sys/fs/bpf")
    host.check_pin_path(params["pin_dir"], params["name"])
    current = model.Current(
        os.path.join(params["pin_dir"], params["name"]), desired.cgroup if desired else None, kernel.link_info
    )
    try:
        if desired is None:
            unrecorded, searched_all = model.unrecorded_attachments(current, _cgroup_root())
            plan = model.plan_absent(current, unrecorded)
            if plan.steps and not check_mode:
                kernel_apply.apply_absent(current, params["pin_dir"], unrecorded, link_detach=kernel.link_detach)
            warnings = [model.unknown_entries_warning(current, params["name"])]
            if not searched_all:
                warnings.append(
                    "the instance record (meta pin) of %s is missing or unreadable, and only the first %d cgroups "
                    "were searched for its programs: check with 'bpftool cgroup tree' that none is left attached"
                    % (params["name"], model.MAX_CGROUPS_SEARCHED)
                )
            warnings = [warning for warning in warnings if warning]
            if warnings:
                result.setdefault("warnings", []).extend(warnings)
        else:
            others = model.instances_on_cgroup(params["pin_dir"], desired.cgroup, exclude=params["name"])
            if others:
                raise model.InstanceError(
                    "cgroup %s already has the tcp_rto instance %s: one instance per cgroup. "
                    "Change that instance's rules, or remove it first." % (desired.cgroup, others[0])
                )
            result["drift"] = drift.findings(current, desired)
            plan = model.plan_present(desired, current)
            _refuse_blocked_attach(desired, current, plan)
            if plan.steps and not check_mode:
                kernel_apply.apply_present(
                    desired, current, plan, can_replace=kernel.prog_replace, link_detach=kernel.link_detach
                )
        result["actions"].extend(plan.steps)
        if diff:
            result["diff"] = dict(
                before=model.describe_current(current), after=model.describe_desired(desired) if desired else {}
            )
            if result.get("drift"):
                result["diff"]["before"]["drift"] = result["drift"]
    finally:
        current.close()


def _cgroup_root():
    """The cgroup v2 mount, or None without one (then nothing can be attached)."""
    try:
        return host.cgroup2_mount()
    except host.HostError:
        return None


def _refuse_blocked_attach(desired, current, plan):
    """Fail before any change where the kernel would refuse our attach (a link update does not
    attach anew), naming the foreign programs in the way: in check mode too."""
    if not plan.attach or (desired.attach_mode == model.ATTACH_LINK and model.same_place(desired, current)):
        return
    blockers = coexistence.attach_blockers(desired.cgroup, host.cgroup2_mount())
    if blockers:
        raise model.InstanceError(coexistence.describe_blockers(desired.cgroup, blockers))


def _instance_program_ids(params):
    """Programs of the other tcp_rto instances under pin_dir: nested instances are not foreign."""
    ids = []
    pin_dir = params["pin_dir"]
    for name in sorted(os.listdir(pin_dir)) if os.path.isdir(pin_dir) else []:
        if name == params["name"]:
            continue
        try:
            with bpf.closing_fd(bpf.obj_get(os.path.join(pin_dir, name, model.PROG_PIN))) as fd:
                ids.append(bpf.prog_info(fd).id)
        except (OSError, bpf.BpfError):
            continue  # not an instance, or one without its program pin
    return ids


def report(params, desired, kernel, check_mode, result):
    """What the kernel holds now, proven by real handshakes unless check mode or verify: false;
    the foreign programs that meet ours, and those that can explain a failed handshake."""
    instance_dir = os.path.join(params["pin_dir"], params["name"])
    applied = model.Current(instance_dir, link_info=kernel.link_info)
    try:
        own_ids = [applied.prog_info.id] if applied.prog_info else []
    finally:
        applied.close()
    programs = coexistence.survey(desired.cgroup, host.cgroup2_mount(), own_ids, _instance_program_ids(params))
    result["foreign_programs"] = programs
    if params["verify"] and not check_mode:
        result["verification"] = verify(desired, coexistence.descendants_to_probe(programs))
    applied = model.Current(instance_dir, link_info=kernel.link_info)
    try:
        result["instance"] = instance_result(desired, applied)
    finally:
        applied.close()
    result["syn_give_up_s"] = give_up_seconds(desired)
    failed = [check for check in result.get("verification", {}).get("checks", []) if not check["ok"]]
    if failed:
        result["conflicts"] = coexistence.conflicts(
            failed, programs, desired.cgroup, own_ids, model.KERNEL_DEFAULT_RTO_MS
        )
        result["changed"] = bool(result["actions"])
        raise VerificationFailed(
            "verification failed: %s. %s The instance stays applied; the programs that run for the cgroup show "
            "with 'bpftool cgroup tree'."
            % (
                "; ".join(
                    "an %s handshake with %s in %s started with an initial RTO of %s ms, the rules give %s ms"
                    % (
                        check["direction"],
                        check["address"],
                        check.get("cgroup", desired.cgroup),
                        check["observed_ms"],
                        check["expected_ms"],
                    )
                    for check in failed
                ),
                "Foreign sock_ops programs that can cause it (see conflicts): %s."
                % "; ".join(
                    "program %d (%s) attached %s to %s (%s cgroup): %s"
                    % (c["id"], c["name"] or "no name", c["attach"], c["cgroup"], c["relation"], c["why"])
                    for c in result["conflicts"]
                )
                if result["conflicts"]
                else "No foreign sock_ops program runs for the cgroup: something outside BPF sets the value.",
            ),
            result,
        )
