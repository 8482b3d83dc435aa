"""Check mode reports everything a real run does: from the same state, the actions of a run in
check mode equal those of the real run that follows, for each kind of change the plan decides
(values in place, new maps, a new object, another cgroup, another attach mode, removal), on this
machine's kernel and on one without bpf_links or BPF_F_REPLACE (TCP_RTO_FORCE_MISSING)."""

import os

import pytest

from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids

pytestmark = pytest.mark.kernel

RULES = [{"dest": "127.0.0.0/8", "rto_ms": 200}]
NO_LINKS = "cgroup_link"
NO_LINKS_NO_REPLACE = "cgroup_link,prog_replace"


def many_rules(count, first_octet):
    return [
        {"dest": "%d.%d.%d.0/24" % (first_octet, index // 256, index % 256), "rto_ms": 200} for index in range(count)
    ]


NEW_OBJECT = dict(rules=RULES, src="SECOND_OBJECT")
# case: (first run, changed parameters, TCP_RTO_FORCE_MISSING, actions the change must include)
CASES = {
    "rules-in-place": (
        dict(rules=RULES),
        dict(rules=[{"dest": "127.0.0.0/8", "rto_ms": 300}], rto_ms=500),
        None,
        ["update rules", "update default and direction"],
    ),
    "rules-need-new-maps": (
        dict(rules=many_rules(600, 10)),
        dict(rules=many_rules(600, 11)),
        None,
        ["replace the attached program atomically (link)"],
    ),
    "new-object-link": (dict(rules=RULES), NEW_OBJECT, None, ["replace the attached program atomically (link)"]),
    "new-object-multi": (dict(rules=RULES), NEW_OBJECT, NO_LINKS, ["replace the attached program atomically (multi)"]),
    "new-object-multi-no-replace": (
        dict(rules=RULES),
        NEW_OBJECT,
        NO_LINKS_NO_REPLACE,
        ["attach to CGROUP (multi)", "detach from CGROUP (multi)"],
    ),
    "other-cgroup": (
        dict(rules=RULES),
        dict(rules=RULES, cgroup="CHILD"),
        None,
        ["attach to CHILD (link)", "detach from CGROUP (link)"],
    ),
    "other-cgroup-multi": (
        dict(rules=RULES),
        dict(rules=RULES, cgroup="CHILD"),
        NO_LINKS,
        ["attach to CHILD (multi)", "detach from CGROUP (multi)"],
    ),
    "absent": (dict(rules=RULES), dict(state="absent"), None, ["detach from CGROUP (link)"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_mode_lists_what_the_run_does(case, cgroup, bpffs, second_object):
    first, change, force_missing, expected = CASES[case]
    child = os.path.join(cgroup, "child")
    os.mkdir(child)
    substitutes = {"SECOND_OBJECT": second_object, "CHILD": child, "CGROUP": cgroup}
    expected = [" ".join(substitutes.get(word, word) for word in step.split(" ")) for step in expected]
    change = {key: substitutes.get(value, value) if isinstance(value, str) else value for key, value in change.items()}

    def run(given, check_mode=False):
        params = reconcile_run.module_params(
            name="checked", cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, verify=False
        )
        params.update(given, _check_mode=check_mode)
        returncode, result, err = reconcile_run.run(params, force_missing=force_missing)
        assert returncode == 0, (result, err)
        return result

    run(first)
    planned = run(change, check_mode=True)
    done = run(change)
    assert planned["changed"] is True
    assert planned["actions"] == done["actions"]
    assert [step for step in expected if step not in done["actions"]] == [], done["actions"]
    assert cgroup_program_ids(child if change.get("cgroup") else cgroup) == (
        [] if change.get("state") == "absent" else [done["instance"]["program_id"]]
    )
    assert run(change, check_mode=True)["actions"] == []
    if change.get("state") != "absent":
        run(dict(state="absent"))
