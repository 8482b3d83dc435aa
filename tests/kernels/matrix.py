"""The kernel matrix (tests/kernels/run): the module's scenarios on Debian's kernels under qemu.

archive.py fetches the kernel images from Debian's archive and initramfs.py builds the guest
(Debian's busybox and Python, then the project). Here, one AnsiballZ payload per step of steps.py
is built with ansible-core's own module_common, as a controller builds it; every kernel boots in
parallel, each under `timeout`, and runs guest_job.py; its lines on the serial console become a
table kernel x scenario. Console logs stay in .cache/kernels/run/.
"""

import argparse
import concurrent.futures
import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in tests/kernels (the collection build ships tests/)
import archive  # noqa: E402
import initramfs  # noqa: E402
from archive import CACHE, KERNELS, REPO, MatrixError, log  # noqa: E402
from steps import SCENARIOS, SCENARIOS_PARAMETER, STEPS  # noqa: E402

MODULE = "netbpf.tcp_rto.tcp_initial_rto"
MARK = "@@TCPRTO"

# -icount: the guest's clock advances by instructions executed, so a slow or busy host does not show
# up in the guest as late timers (the probes read socket timers to the jiffy), and sleep=off skips
# the idle waits (SYN-ACK and SYN timeouts) instead of sitting through them.
QEMU = [
    "qemu-system-x86_64",
    "-accel",
    "tcg",
    "-cpu",
    "Westmere",
    "-m",
    "512M",
    "-smp",
    "1",
    "-nographic",
    "-no-reboot",
    "-nodefaults",
    "-serial",
    "stdio",
    "-monitor",
    "none",
    "-icount",
    "shift=0,sleep=off",
]
KERNEL_CMDLINE = "console=ttyS0 panic=-1 quiet"


# ---------------------------------------------------------------- AnsiballZ payloads


def collections_root():
    """A collections path holding this checkout as netbpf.tcp_rto (as scripts/setup-env makes it)."""
    root = os.path.join(REPO, ".cache", "collections")
    link = os.path.join(root, "ansible_collections", "netbpf", "tcp_rto")
    if os.path.realpath(link) != REPO:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(REPO, link)
    return root


def build_payloads():
    """{step: AnsiballZ payload bytes}, as ActionBase._execute_module builds them: module_common with
    the task's arguments plus the internal _ansible_* ones, the configured compression."""
    from ansible import constants as C
    from ansible.executor import module_common
    from ansible.parsing.dataloader import DataLoader
    from ansible.release import __version__
    from ansible.template import Templar
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    root = collections_root()
    _AnsibleCollectionFinder(paths=[root])._install()
    module_path = os.path.join(
        root, "ansible_collections", "netbpf", "tcp_rto", "plugins", "modules", "tcp_initial_rto.py"
    )
    templar = Templar(loader=DataLoader())
    payloads = {}
    for step, params in STEPS.items():
        args = dict(params)
        args.update(
            _ansible_check_mode=False,
            _ansible_no_log=False,
            _ansible_debug=False,
            _ansible_diff=False,
            _ansible_verbosity=0,
            _ansible_version=__version__,
            _ansible_module_name=MODULE,
            _ansible_syslog_facility=C.DEFAULT_SYSLOG_FACILITY,
            _ansible_selinux_special_fs=C.DEFAULT_SELINUX_SPECIAL_FS,
            _ansible_socket=None,
            _ansible_shell_executable="/bin/sh",
            _ansible_keep_remote_files=False,
            _ansible_tmpdir=None,
            _ansible_remote_tmp="~/.ansible/tmp",
            _ansible_ignore_unknown_opts=False,
            _ansible_target_log_info=None,
            _ansible_tracebacks_for=[],
        )
        built = module_common.modify_module(
            module_name=MODULE,
            module_path=module_path,
            module_args=args,
            templar=templar,
            task_vars={"ansible_python_interpreter": "/usr/bin/python3"},
            module_compression=C.config.get_config_value("DEFAULT_MODULE_COMPRESSION"),
        )
        payloads[step] = built.b_module_data
    return payloads


# ---------------------------------------------------------------- boot and parse


def boot(kernel, initrd, timeout, logdir, scenarios):
    """Boot one kernel with the job running scenarios; -> dict(kernel, cells, info, details,
    seconds, log, problem)."""
    logfile = os.path.join(logdir, kernel["key"] + ".log")
    started = time.monotonic()
    command = [
        "timeout",
        "-k",
        "5",
        str(timeout),
        *QEMU,
        "-kernel",
        os.path.join(CACHE, kernel["key"], "vmlinuz"),
        "-initrd",
        initrd,
        "-append",
        "%s %s%s" % (KERNEL_CMDLINE, SCENARIOS_PARAMETER, ",".join(scenarios)),
    ]
    with open(logfile, "wb") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    console = open(logfile, "rb").read().decode("utf-8", "replace").replace("\r", "")
    console = re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)", "", console)  # the firmware's terminal resets
    parsed = parse_console(console)
    parsed.update(kernel=kernel, seconds=time.monotonic() - started, log=logfile)
    if not parsed["done"]:
        parsed["problem"] = "the guest did not finish (%s); last console lines:\n%s" % (
            "timed out after %d s" % timeout if proc.returncode in (124, 137) else "qemu exit %d" % proc.returncode,
            "\n".join(console.strip().splitlines()[-25:]),
        )
    return parsed


def parse_console(console):
    cells, details, info, done = {}, {}, {}, False
    current = None
    for line in console.splitlines():
        if MARK + " " in line:
            line = line[line.index(MARK) :]
            words = line.split(" ", 4)
            kind = words[1]
            if kind == "INFO":
                info = json.loads(line.split(" ", 2)[2])
            elif kind == "CELL":
                cells[words[2]] = dict(json.loads(words[4]), status=words[3])
            elif kind == "BEGIN":
                current = words[2]
                details[current] = []
            elif kind == "END":
                current = None
            elif kind == "DONE":
                done = True
        elif current is not None:
            details[current].append(line)
    return dict(
        cells=cells,
        details={key: "\n".join(lines) for key, lines in details.items()},
        info=info,
        done=done,
        problem=None,
    )


def cell_text(cell):
    return "FAIL" if cell is None or cell["status"] != "PASS" else ("pass " + cell["note"]).strip()


def table(results, scenarios):
    header = ["kernel", "suite", "HZ", "attach", *scenarios]
    rows = []
    for result in results:
        kernel, cells = result["kernel"], result["cells"]
        row = [
            kernel["release"],
            kernel["suite"],
            str(result["info"].get("hz", kernel["hz"])),
            result["info"].get("attach", "?"),
        ]
        rows.append(row + [cell_text(cells.get(scenario)) for scenario in scenarios])
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(results, scenarios):
    header = ["kernel", "Debian suite", "HZ", "attach", *scenarios]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        kernel, cells = result["kernel"], result["cells"]
        row = [
            "%s (%s)" % (kernel["release"], kernel["version"]),
            kernel["suite"],
            str(kernel["hz"]),
            result["info"].get("attach", "?"),
        ]
        lines.append("| " + " | ".join(row + [cell_text(cells.get(scenario)) for scenario in scenarios]) + " |")
    return "\n".join(lines)


def failed(result, scenarios):
    return bool(result["problem"]) or any(result["cells"].get(name, {}).get("status") != "PASS" for name in scenarios)


# ---------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tests/kernels/run", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument(
        "--kernels",
        default=",".join(key for key, _s, _p in KERNELS),
        help="comma-separated suites to test (default: all): %(default)s",
    )
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="look for newer kernel images in the archive instead of using the cached ones",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated scenarios to run, in the guest's order (default: all; each makes its own"
        " cgroup, but reapply, rules and absent build on apply): %(default)s",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="guests at once (default: cores)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per guest (default: %(default)s)")
    options = parser.parse_args(argv)
    keys = [key for key in options.kernels.split(",") if key]
    unknown = [key for key in keys if key not in [entry[0] for entry in KERNELS]]
    if unknown:
        parser.error("unknown kernel %s; known: %s" % (", ".join(unknown), ", ".join(entry[0] for entry in KERNELS)))
    chosen = [name for name in options.scenarios.split(",") if name]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown or not chosen:
        parser.error("unknown scenario %s; known: %s" % (", ".join(unknown) or "(none)", ", ".join(SCENARIOS)))
    scenarios = [name for name in SCENARIOS if name in chosen]
    for tool in ("qemu-system-x86_64", "timeout", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise MatrixError("%s is not installed (apt-get install qemu-system-x86 for qemu)" % tool)

    started = time.monotonic()
    os.makedirs(CACHE, exist_ok=True)
    lock = open(os.path.join(CACHE, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("waiting for another tests/kernels/run to finish")
        fcntl.flock(lock, fcntl.LOCK_EX)
    apt = archive.Apt(os.path.join(CACHE, "apt"))
    updated = []

    def suites_ready():
        if not updated:
            log("apt-get update (private lists in .cache/kernels/apt)")
            apt.update({suite for _k, suites, _p in KERNELS for suite in suites} | {initramfs.GUEST_SUITE})
            updated.append(True)

    cached = all(archive.cached_kernel(key) for key in keys)
    if options.refresh or not cached:
        suites_ready()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        kernels_future = pool.submit(archive.fetch_kernels, apt, options.refresh, keys)
        base_future = pool.submit(initramfs.guest_base, apt, suites_ready)
        payloads = build_payloads()
        fetched, base = kernels_future.result(), base_future.result()
    kernels = [fetched[key] for key in keys]
    shutil.rmtree(apt.root, ignore_errors=True)  # 60 MB of lists; --refresh fetches them again

    work = os.path.join(CACHE, "run")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    initrd = os.path.join(work, "initrd.cpio")
    project = os.path.join(work, "project.cpio")
    initramfs.project_cpio(project, payloads, kernels)
    with open(initrd, "wb") as out:
        for part in (base, project):  # the kernel unpacks concatenated archives in order
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out)
    prepared = time.monotonic()
    log(
        "prepared in %.0f s; booting %d kernels, %d at a time"
        % (prepared - started, len(kernels), min(options.jobs, len(kernels)))
    )

    with concurrent.futures.ThreadPoolExecutor(max(1, options.jobs)) as pool:
        results = list(
            pool.map(
                functools.partial(boot, initrd=initrd, timeout=options.timeout, logdir=work, scenarios=scenarios),
                kernels,
            )
        )
    for path in (initrd, project):  # the console logs stay
        os.unlink(path)

    for result in results:
        if failed(result, scenarios):
            kernel = result["kernel"]
            print(
                "\n=== %s (%s): console log %s"
                % (kernel["release"], kernel["suite"], os.path.relpath(result["log"], REPO))
            )
            if result["problem"]:
                print(result["problem"])
            for scenario in scenarios:
                if scenario in result["details"]:
                    print("--- %s\n%s" % (scenario, result["details"][scenario]))
    print()
    print(table(results, scenarios))
    with open(os.path.join(CACHE, "last-run.md"), "w") as handle:
        handle.write(markdown_table(results, scenarios) + "\n")
    bad = [result for result in results if failed(result, scenarios)]
    print(
        "\n%d kernels, %d failed; guests %s; total %.0f s"
        % (
            len(results),
            len(bad),
            ", ".join("%s %.0f s" % (r["kernel"]["suite"], r["seconds"]) for r in results),
            time.monotonic() - started,
        )
    )
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MatrixError as exc:
        print("tests/kernels/run: %s" % exc, file=sys.stderr)
        sys.exit(2)
