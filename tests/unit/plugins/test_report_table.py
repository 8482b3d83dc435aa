"""The report_table filter on info results as the info module returns them."""

import csv
import io

from ansible_collections.netbpf.tcp_rto.plugins.filter.report_table import report_table

KERNEL = {"release": "6.1.0-28-amd64", "hz": 250}
HEALTHY = {
    "supported": True,
    "kernel": KERNEL,
    "instances": [{"name": "dc", "state": "ok", "cgroup": "/sys/fs/cgroup", "rules": [], "problems": []}],
    "recorded_not_loaded": [],
    "problems": [],
}
DETACHED_PROBLEM = "detached: program 7 is not attached to /sys/fs/cgroup/system.slice/api.service: ..."
BROKEN = {
    "supported": True,
    "kernel": KERNEL,
    "instances": [
        {
            "name": "api",
            "state": "detached",
            "cgroup": "/sys/fs/cgroup/system.slice/api.service",
            "rules": [],
            "problems": [DETACHED_PROBLEM],
        }
    ],
    "recorded_not_loaded": ["dc"],
    "problems": ["api: " + DETACHED_PROBLEM, "recorded, not loaded: dc has a record but ..."],
}


def rows(infos):
    return list(csv.DictReader(io.StringIO(report_table(infos))))


def test_state_column_and_not_loaded_rows():
    table = rows({"h1": HEALTHY, "h2": BROKEN})
    assert [(row["host"], row["instance"], row["state"]) for row in table] == [
        ("h1", "dc", "ok"),
        ("h2", "api", "detached"),
        ("h2", "dc", "not loaded"),
    ]
    assert table[1]["problems"] == DETACHED_PROBLEM
    assert table[2]["problems"] == "recorded, not loaded: dc has a record but ..."


def test_summary_names_the_unhealthy_hosts():
    assert report_table({"h1": HEALTHY}, "summary") == "all 1 hosts healthy\n"
    summary = report_table(
        {"h1": HEALTHY, "h2": BROKEN, "h3": {"failed": True, "msg": "unreachable"}}, "summary"
    ).splitlines()
    assert summary[0] == "2 of 3 hosts unhealthy:"
    assert summary[1].startswith("h2: api detached (detached: program 7") and "; dc not loaded (recorded" in summary[1]
    assert summary[2] == "h3: unsupported: unreachable"
