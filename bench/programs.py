"""The two programs under comparison, put on a sandbox cgroup.

- the collection's: through module_utils' reconcile.run, the code path the module and the
  boot-time restore take (shipped object, maps, bpf_link, verification handshakes);
- the blog's: bench/blog/blog_rto.bpf.c compiled with clang, loaded and attached with bpftool,
  the manual sequence the collection replaces.
"""

import os
import subprocess
import time

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_info, bpf_syscall, reconcile
from ansible_collections.netbpf.tcp_rto.tests.support import lab, paths, reconcile_run

BLOG_SOURCE = os.path.join(lab.BENCH, "blog", "blog_rto.bpf.c")
BLOG_RTO_S = 3  # the blog's reply = HZ * 3
MULTIARCH_INCLUDE = "/usr/include/%s-linux-gnu" % os.uname()[4]  # asm/types.h for linux/bpf.h


def collection_params(name, cgroup, pin_dir, rules, state="present", src=None):
    params = reconcile_run.module_params(
        name=name,
        state=state,
        cgroup=cgroup,
        rules=[dict(dest=dest, rto_ms=rto_ms) for dest, rto_ms in rules],
        pin_dir=pin_dir,
        mount_bpffs=False,
    )
    if src:
        params["src"] = src
    return params


def apply_collection(name, cgroup, pin_dir, rules, src=None):
    """rules [(dest, rto_ms)] on cgroup as instance name (src: another object); -> the collection's
    program id."""
    result = reconcile.run(collection_params(name, cgroup, pin_dir, rules, src=src))
    if not result["verification"]["ok"]:
        raise RuntimeError("collection instance %s did not verify: %s" % (name, result["verification"]))
    return result["instance"]["program_id"]


def remove_collection(name, cgroup, pin_dir):
    reconcile.run(collection_params(name, cgroup, pin_dir, [], state="absent"))


# The shipped source with its telemetry switched off (issue 13): only TIMEOUT_INIT is handled and
# no RETRANS_CB is asked for; maps and layouts stay, so the module loads it like the shipped one.
TELEMETRY_OFF = (
    (
        "if (op != BPF_SOCK_OPS_TIMEOUT_INIT && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&\n"
        "\t    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_RETRANS_CB)",
        "if (op != BPF_SOCK_OPS_TIMEOUT_INIT)",
    ),
    ("\tbpf_sock_ops_cb_flags_set(skops, ", "\tif (0)\n\t\tbpf_sock_ops_cb_flags_set(skops, "),
)


def build_without_telemetry(workdir):
    """-> the path of the collection's object built with TELEMETRY_OFF."""
    with open(os.path.join(paths.REPO, "files", "bpf", "tcp_initial_rto.bpf.c")) as handle:
        source = handle.read()
    for old, new in TELEMETRY_OFF:
        if old not in source:
            raise RuntimeError("the program source changed: bench/programs.py TELEMETRY_OFF does not apply")
        source = source.replace(old, new)
    source_path = os.path.join(workdir, "tcp_initial_rto_no_telemetry.bpf.c")
    with open(source_path, "w") as handle:
        handle.write(source)
    object_path = os.path.join(workdir, "tcp_initial_rto_no_telemetry.bpf.o")
    lab.run([os.path.join(paths.REPO, "files", "bpf", "build"), object_path, source_path], stdout=subprocess.PIPE)
    return object_path


def compile_blog(output, hz):
    lab.run(
        ["clang", "-O2", "-target", "bpf", "-I" + MULTIARCH_INCLUDE, "-DHZ=%d" % hz, "-c", BLOG_SOURCE, "-o", output],
        stdout=subprocess.PIPE,
    )


def load_blog(obj, pin):
    lab.run(["bpftool", "prog", "load", obj, pin, "type", "sockops"])


def attach_blog(cgroup, pin):
    lab.run(["bpftool", "cgroup", "attach", cgroup, "sock_ops", "pinned", pin])


def detach_blog(cgroup, pin):
    subprocess.run(["bpftool", "cgroup", "detach", cgroup, "sock_ops", "pinned", pin], check=False)


def manual_sequence(workdir, cgroup, bpffs, hz):
    """The blog's steps, each timed: -> ({step: seconds}, pinned program path)."""
    obj = os.path.join(workdir, "blog_rto.bpf.o")
    pin = os.path.join(bpffs, "blog_rto_%d" % time.monotonic_ns())
    times = {}
    start = time.perf_counter()
    compile_blog(obj, hz)
    times["clang compile"] = time.perf_counter() - start
    start = time.perf_counter()
    load_blog(obj, pin)
    times["bpftool prog load"] = time.perf_counter() - start
    start = time.perf_counter()
    attach_blog(cgroup, pin)
    times["bpftool cgroup attach"] = time.perf_counter() - start
    return times, pin


def program_id_of_pin(pin):
    with bpf_syscall.closing_fd(bpf_syscall.obj_get(pin)) as fd:
        return bpf_info.prog_info(fd).id


def program_stats(prog_id):
    """(run_time_ns, run_cnt) of a program, as bpf_stats_enabled counts them."""
    with bpf_syscall.closing_fd(bpf_info.prog_get_fd_by_id(prog_id)) as fd:
        info = bpf_info.prog_info(fd)
    return info.run_time_ns, info.run_cnt
