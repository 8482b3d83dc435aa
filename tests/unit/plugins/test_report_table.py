"""The report_table filter on info results as the info module returns them."""

import csv
import io

from ansible_collections.netbpf.tcp_rto.plugins.filter.report_table import COLUMNS, report_table, unhealthy

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


def telemetry(outgoing, incoming, syn=0, synack=0, p99=None, samples=0):
    """The telemetry fields of a rule as the info module shows them."""
    return {
        "handshakes": {"outgoing": outgoing, "incoming": incoming},
        "syn_retransmits": syn,
        "synack_retransmits": synack,
        "spurious_retransmits": 0,
        "rtt_us": {"p50": 1, "p90": 1, "p99": p99} if p99 else None,
        "rtt_samples": samples,
    }


FULL = {
    "supported": True,
    "kernel": KERNEL,
    "instances": [
        {
            "name": "web",
            "state": "ok",
            "cgroup": "/sys/fs/cgroup/web|front",
            "rules": [
                dict(
                    {"dest": "10.0.0.0/8", "rto_ms": 200, "hits": 3},
                    **telemetry(2, 1, syn=4, synack=1, p99=81920, samples=120),
                ),
                dict({"dest": "fd00::/8", "rto_ms": 52.5, "hits": 1}, **telemetry(0, 0)),
            ],
            "default_rto_ms": 500,
            "default_hits": 2,
            "default_telemetry": telemetry(1, 0, syn=2, p99=900, samples=1),
            "harm_warnings": [{"instance": "web", "dest": "10.0.0.0/8", "message": "web: rule 10.0.0.0/8: ..."}],
            "program_id": 41,
            "foreign_programs": [{"id": 7}, {"id": 9}],
            "problems": [],
        }
    ],
    "recorded_not_loaded": [],
    "problems": [],
}


def test_every_column_of_an_instance():
    [row] = rows({"h1": FULL})
    assert row == {
        "host": "h1",
        "kernel": "6.1.0-28-amd64",
        "hz": "250",
        "instance": "web",
        "state": "ok",
        "cgroup": "/sys/fs/cgroup/web|front",
        "rules": "10.0.0.0/8=200ms fd00::/8=52.5ms",
        "default_ms": "500",
        "program_id": "41",
        "hits": "6",
        "handshakes": "4",
        "syn_retransmits": "6",
        "synack_retransmits": "1",
        "rtt_p99_us": "10.0.0.0/8=81920(n=120) default=900(n=1)",
        "warnings": "1",
        "learned": "",
        "foreign": "7 9",
        "supported": "yes",
        "problems": "",
        "rollback": "",
    }


def test_hosts_without_instances_get_one_row_and_failed_hosts_say_why():
    table = rows(
        {
            "h2": dict(HEALTHY, instances=[]),
            "h1": {"failed": True, "msg": "unreachable"},
            "h3": {"supported": False, "unsupported_reasons": ["no cgroup v2", "kernel 4.9"], "kernel": KERNEL},
        }
    )
    assert [(row["host"], row["instance"], row["hits"], row["supported"]) for row in table] == [
        ("h1", "", "", "no: unreachable"),
        ("h2", "", "", "yes"),
        ("h3", "", "", "no: no cgroup v2; kernel 4.9"),
    ]


def test_markdown_escapes_the_cell_separator():
    lines = report_table({"h1": FULL}, "markdown").splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[1] == "|" + "---|" * len(COLUMNS)
    assert "/sys/fs/cgroup/web\\|front" in lines[2]
    assert lines[2].count(" | ") == len(COLUMNS) - 1  # the escaped | does not split a cell


def test_summary_names_each_reason_once_per_host():
    broken = dict(BROKEN, supported=False, unsupported_reasons=["no BTF"])
    assert unhealthy({"h1": HEALTHY, "h2": broken}) == {
        "h2": [
            "unsupported: no BTF",
            "api detached (%s)" % DETACHED_PROBLEM,
            "dc not loaded (recorded, not loaded: dc has a record but ...)",
        ]
    }


def test_handshake_columns_are_empty_without_telemetry_and_zero_without_traffic():
    """An instance an earlier release applied has null counters; HEALTHY's has no rules nor default
    telemetry; a quiet instance counts zeros."""
    earlier = dict(HEALTHY["instances"][0], rules=[dict({"dest": "10.0.0.0/8", "rto_ms": 50}, **telemetry(0, 0))])
    earlier["rules"][0]["handshakes"] = None
    quiet = dict(HEALTHY["instances"][0], name="quiet", default_telemetry=telemetry(0, 0), harm_warnings=[])
    table = rows({"h1": dict(HEALTHY, instances=[earlier, quiet])})
    columns = ("handshakes", "syn_retransmits", "synack_retransmits", "rtt_p99_us", "warnings")
    assert [[row[column] for column in columns] for row in table] == [["", "", "", "", ""], ["0", "0", "0", "", "0"]]


def test_summary_names_hosts_with_harm_warnings():
    assert unhealthy({"h1": FULL}) == {
        "h1": ["web has 1 harm warnings (rtt_p99_us 10.0.0.0/8=81920(n=120) default=900(n=1))"]
    }


def test_rules_column_shows_auto_without_a_unit():
    instance = dict(
        HEALTHY["instances"][0],
        rules=[{"dest": "10.0.0.0/8", "rto_ms": 52}, {"dest": "0.0.0.0/0", "rto_ms": "auto"}],
        default_rto_ms="auto",
    )
    (row,) = rows({"h1": dict(HEALTHY, instances=[instance])})
    assert row["rules"] == "10.0.0.0/8=52ms 0.0.0.0/0=auto"
    assert row["default_ms"] == "auto"


def learned_host(host, samples, rto_ms=20.0, fallback=None):
    """A host of the info module's learned list (the fields the report shows)."""
    return dict(host=host, samples=samples, estimate_us=samples * 10, rto_ms=rto_ms, fallback=fallback)


def test_learned_column_shows_the_hosts_with_the_most_samples():
    learned = [learned_host("10.0.0.%d" % n, 100 - n) for n in range(1, 7)]
    learned[1] = learned_host("10.0.0.2", 98, rto_ms=1000.0, fallback="over_retransmit_budget")
    instance = dict(HEALTHY["instances"][0], learned=learned)
    (row,) = rows({"h1": dict(HEALTHY, instances=[instance])})
    assert row["learned"].split() == [
        "10.0.0.1=20ms(n=99,est=990us)",
        "10.0.0.2=1000ms(n=98,est=980us)!over_retransmit_budget",
        "10.0.0.3=20ms(n=97,est=970us)",
        "10.0.0.4=20ms(n=96,est=960us)",
        "10.0.0.5=20ms(n=95,est=950us)",
    ]  # five of the six, in the info module's order


def test_rollback_column_says_how_far_back_and_to_what():
    """From the info module's history: how many rollbacks in a row each instance has, and what the
    next one puts back."""
    previous = {
        "state": "present",
        "rules": [{"dest": "10.0.0.0/8", "rto_ms": 200, "syn_give_up_s": None}],
        "rto_ms": 300,
    }
    info = dict(
        HEALTHY,
        instances=HEALTHY["instances"]
        + [dict(HEALTHY["instances"][0], name="new"), dict(HEALTHY["instances"][0], name="odd")],
        history={
            "dc": {"previous": previous, "records": 2},
            "new": {"previous": {"state": "absent"}, "records": 1},
            "odd": {"previous": None, "records": 1},
        },
    )
    table = rows({"h1": info, "h2": HEALTHY})
    assert [(row["host"], row["instance"], row["rollback"]) for row in table] == [
        ("h1", "dc", "2: 10.0.0.0/8=200ms default=300ms"),
        ("h1", "new", "1: no instance"),
        ("h1", "odd", "1: record unreadable"),
        ("h2", "dc", ""),  # no history: a rollback changes nothing
    ]
