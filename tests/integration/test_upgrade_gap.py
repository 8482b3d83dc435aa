"""Upgrade without a gap: while a process in the cgroup makes SYN_SENT sockets without pause
(tests/support/syn_rto_stream.py), the program object is replaced by a new version, the rules
change in place (a rule gives way to the default), and the object goes back, each with another
value. Every socket started with the value before or after a change, none with the kernel
default (1 s)."""

import os
import sys

import pytest

from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run
from ansible_collections.netbpf.tcp_rto.tests.support.hz import jiffies_us
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import KERNEL_DEFAULT_US, RtoStream

pytestmark = pytest.mark.kernel

# (options, rto of 127.0.0.1 in ms, whether the program object changes)
STEPS = [
    (dict(src="second", rules=[{"dest": "127.0.0.0/8", "rto_ms": 300}]), 300, True),
    (dict(src="second", rules=[], rto_ms=400), 400, False),
    (dict(rules=[{"dest": "127.0.0.0/8", "rto_ms": 252}], rto_ms=400), 252, True),
]


@pytest.mark.parametrize(
    "mode",
    [dict(), dict(_legacy_attach=True), dict(_legacy_attach=True, _no_prog_replace=True)],
    ids=["link_update", "legacy_replace", "legacy_attach_then_detach"],
)
def test_no_socket_sees_the_kernel_default(cgroup, bpffs, second_object, mode):
    def params(options):
        options = dict(mode, **options)
        if options.get("src") == "second":
            options["src"] = second_object
        return reconcile_run.module_params(
            name="upgrade", cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, **options
        )

    returncode, result, err = reconcile_run.run(params(dict(rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}])))
    assert returncode == 0, (result, err)
    program_ids = [result["instance"]["program_id"]]
    expected = [jiffies_us(200)]
    stream = RtoStream(cgroup)
    try:
        assert stream.wait_for(expected[0]), stream.values[-5:]
        for options, rto_ms, new_object in STEPS:
            returncode, result, err = reconcile_run.run(params(options))
            assert returncode == 0, (result, err)
            assert (result["instance"]["program_id"] != program_ids[-1]) is new_object
            program_ids.append(result["instance"]["program_id"])
            expected.append(jiffies_us(rto_ms))
            assert stream.wait_for(expected[-1]), stream.values[-5:]
    finally:
        assert stream.stop() == 0
    values = stream.values
    assert KERNEL_DEFAULT_US not in values
    assert set(values) == set(expected)
    sys.stdout.write(
        "\nupgrade gap %s: %d probe sockets, values seen %s\n"
        % (
            "+".join(sorted(mode)) or "link",
            len(values),
            {value // 1000: values.count(value) for value in sorted(set(values))},
        )
    )
    assert reconcile_run.run(params(dict(state="absent")))[0] == 0
