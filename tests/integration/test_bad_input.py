"""Bad input to netbpf.tcp_rto.tcp_initial_rto: every case fails the task with a message that says
what to do (no traceback) and leaves the kernel as it was, both for a new instance and, for a
representative subset, for an instance that is already applied (same program id, same maps).

Input refused by validation alone (the argument spec, names, rules, rto_ms, the object's reader and
contract) is tested case by case without the module in tests/unit/plugins/test_input_validation.py;
here a representative few of those go through the module end to end, with every case that needs
the host (cgroups, bpffs, symlinks, the verifier, the controller's files) and the boot records.

The kernel is read with bpftool, which shares no code with the collection (see kernel_objects()
for why not the machine-wide tests/support/bpf_inventory.py snapshot); files by listing the private bpffs,
the test cgroup and the case's scratch directory."""

import collections
import json
import os
import shlex
import shutil
import subprocess
import time

import pytest

from ansible_collections.netbpf.tcp_rto.tests.support import bpf_inventory, bpf_objects, sandbox
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import bpftool
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_objects import (
    SH_OFFSET,
    section_header,
    shipped_section_size,
)
from ansible_collections.netbpf.tcp_rto.tests.support.paths import SHIPPED_OBJECT

pytestmark = pytest.mark.kernel

NAME = "t1"
GOOD = dict(rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}, {"dest": "fd00::/8", "rto_ms": 40}], rto_ms=500)


# ---------------------------------------------------------------- BPF objects made for the cases

# A ctx read far past struct bpf_sock_ops: clang emits it, the verifier refuses it.
OUT_OF_BOUNDS_BODY = "return *(volatile __u32 *)((char *)skops + 4096) ? 1 : 1;"
# No bound at all: the verifier refuses the back-edge (or gives up on the complexity).
UNBOUNDED_LOOP_BODY = "while (*(volatile __u32 *)&skops->op != 99) { } return 1;"
# Bounded, but a million iterations the verifier walks one by one: past its 1M-instruction limit,
# with a verifier log that fills the 16 MiB buffer.
TOO_COMPLEX_BODY = (
    "__u32 x = skops->op; "
    '_Pragma("nounroll") for (int i = 0; i < 1000000; i++) { x = x * 3 + skops->remote_port; } '
    "skops->reply = x; return 1;"
)
# op is read-only for sock_ops programs.
CTX_WRITE_BODY = "skops->op = 5; return 1;"
WITHOUT_HITS = {name: spec for name, spec in bpf_objects.CONTRACT_MAPS.items() if name != "hits"}


def compiled(name, **variant):
    """An object of bpf_objects.contract_source(**variant) in the case's scratch directory."""
    return lambda env: bpf_objects.compile_to(bpf_objects.contract_source(**variant), env.scratch(name + ".o"))


def scratch_text(name, text):
    """A file with text in the case's scratch directory (C source, or anything else)."""

    def make(env):
        path = env.scratch(name)
        with open(path, "w") as handle:
            handle.write(text)
        return path

    return make


def patched_object(name, *patches):
    """The shipped object with patches applied (bpf_objects.patched)."""

    def make(env):
        with open(SHIPPED_OBJECT, "rb") as source:
            data = bpf_objects.patched(source.read(), *patches)
        path = env.scratch(name + ".bpf.o")
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    return make


def truncated_object(env):
    path = env.scratch("truncated.bpf.o")
    with open(SHIPPED_OBJECT, "rb") as source, open(path, "wb") as handle:
        handle.write(source.read(100))
    return path


# ---------------------------------------------------------------- the environment of one case


class Env:
    """The test's cgroup, private bpffs and a scratch directory for files the cases point at."""

    def __init__(self, cgroup, bpffs, tmp_path):
        self.cgroup = cgroup
        self.bpffs = bpffs
        self.pin_dir = os.path.join(bpffs, "tcp_rto")
        self.scratch_dir = str(tmp_path / "scratch")
        os.mkdir(self.scratch_dir)

    def scratch(self, *parts):
        return os.path.join(self.scratch_dir, *parts)

    def args(self, **extra):
        return dict(dict(name=NAME, cgroup=self.cgroup, pin_dir=self.pin_dir, mount_bpffs=False), **extra)


@pytest.fixture
def env(cgroup, bpffs, tmp_path):
    return Env(cgroup, bpffs, tmp_path)


def _tree(root):
    """Every path under root (symlinks not followed), with its kind; None when root is missing."""
    if not os.path.lexists(root):
        return None
    found = []
    for directory, subdirs, files in os.walk(root):
        for entry in subdirs + files:
            path = os.path.join(directory, entry)
            kind = "link" if os.path.islink(path) else "dir" if os.path.isdir(path) else "file"
            found.append((os.path.relpath(path, root), kind))
    return sorted(found)


def _cgroup_tree(cgroup):
    return [
        cgroup,
        *sorted(os.path.join(directory, entry) for directory, subdirs, _files in os.walk(cgroup) for entry in subdirs),
    ]


def _quiet_bpftool(*args):
    try:
        return bpftool(*args)
    except subprocess.CalledProcessError:
        return None


def _pinned_object(path):
    """(kind, id) of the BPF object pinned at path."""
    for kind in ("prog", "map", "link"):
        found = _quiet_bpftool(kind, "show", "pinned", path)
        if found:
            return kind, found["id"]
    return "unknown", None


def kernel_objects(env):
    """The BPF objects this test's module runs could have left or changed, as bpftool sees them:
    sock_ops attachments of the test cgroup, its descendants and the cgroup v2 root (the module's
    default), pins on the test's bpffs and on /sys/fs/bpf (the default pin root), cgroup links of
    those cgroups, and what these reference (the programs' maps).

    Not the machine-wide lists of tests/support/bpf_inventory.py: other test runs on this machine load and
    free programs all the time, and every object a module run could leave behind is reachable from
    here (an object that is neither pinned, attached nor linked dies with the module's process)."""
    cgroups = [*_cgroup_tree(env.cgroup), sandbox.cgroup2_mount()]
    attached = {path: bpf_inventory._cgroup(path) for path in cgroups}
    pins = {}
    for root in (env.bpffs, "/sys/fs/bpf"):
        for relative, kind in _tree(root) or []:
            if kind == "file" and not relative.endswith(".debug"):
                pins[os.path.join(root, relative)] = _pinned_object(os.path.join(root, relative))
    cgroup_ids = {os.stat(path).st_ino for path in cgroups if os.path.isdir(path)}
    prog_ids = {entry[0] for entries in attached.values() for entry in entries or []}
    prog_ids |= {object_id for kind, object_id in pins.values() if kind == "prog"}
    links = {
        link["id"]: (link.get("type"), link.get("prog_id"), link.get("cgroup_id"))
        for link in bpftool("link", "show")
        if link.get("cgroup_id") in cgroup_ids
        or link["id"] in {object_id for kind, object_id in pins.values() if kind == "link"}
    }
    prog_ids |= {prog_id for _type, prog_id, _cgroup in links.values()}
    progs, map_ids = {}, {object_id for kind, object_id in pins.values() if kind == "map"}
    for prog_id in prog_ids:
        prog = _quiet_bpftool("prog", "show", "id", str(prog_id)) or {}
        progs[prog_id] = (prog.get("type"), prog.get("name"), tuple(prog.get("map_ids", ())))
        map_ids |= set(prog.get("map_ids", ()))
    maps = {}
    for map_id in map_ids:
        found = _quiet_bpftool("map", "show", "id", str(map_id)) or {}
        maps[map_id] = (found.get("type"), found.get("name"))
    return {"cgroups": attached, "pins": pins, "links": links, "progs": progs, "maps": maps}


def _pinned_instance(pin_dir, name):
    """An applied instance as bpftool reads it from its pins: program, link and map contents."""
    directory = os.path.join(pin_dir, name)
    if os.path.islink(directory) or os.path.islink(os.path.join(directory, "prog")):
        return "a symlink"  # what it points at is in the inventory already (bpffs, scratch)
    if not os.path.isdir(directory):
        return None
    found = {"prog": bpftool("prog", "show", "pinned", os.path.join(directory, "prog"))["id"]}
    if os.path.exists(os.path.join(directory, "link")):
        link = bpftool("link", "show", "pinned", os.path.join(directory, "link"))
        found["link"] = (link["id"], link["prog_id"])
    for map_name in ("rules", "config", "meta"):  # not hits: counters are not configuration
        found[map_name] = bpftool("map", "dump", "pinned", os.path.join(directory, map_name))
    return found


def _instances(pin_dir):
    names = sorted(os.listdir(pin_dir)) if os.path.isdir(pin_dir) else []
    return {name: _pinned_instance(pin_dir, name) for name in names}


def _processes(cgroup):
    with open(os.path.join(cgroup, "cgroup.procs")) as handle:
        return handle.read().split()


def host_state(env):
    """Everything a bad input must leave alone."""
    return {
        "kernel": kernel_objects(env),
        "bpffs": _tree(env.bpffs),
        "scratch": _tree(env.scratch_dir),
        "cgroup tree": _cgroup_tree(env.cgroup),
        "cgroup processes": _processes(env.cgroup),
        "instances": _instances(env.pin_dir),
    }


def settled_state(env, expected=None, timeout=5.0):
    """host_state once it stops changing (expected None) or equals expected (else the last one
    after timeout): the kernel frees a detached program's objects a little after the call."""
    deadline = time.monotonic() + timeout
    previous = host_state(env)
    while time.monotonic() < deadline and previous != expected:
        time.sleep(0.1 if expected is not None else 0.25)
        current = host_state(env)
        if expected is None and current == previous:
            break
        previous = current
    return previous


def assert_refused(result, fragment, before, env):
    """The one check of every case: a failed task with a clear message, and nothing changed."""
    output = result["_output"]
    assert result["status"] == "failed", output
    for marker in ("Traceback", "MODULE FAILURE"):  # fail_json, not a crash
        assert marker not in json.dumps(result), output
    assert "module_stderr" not in result, output
    for part in (fragment,) if isinstance(fragment, str) else fragment:
        assert part in result.get("msg", ""), result.get("msg")
    assert settled_state(env, before) == before


# ---------------------------------------------------------------- the cases

Case = collections.namedtuple("Case", "id args expect existing")
# args: the bad module arguments, or a function env -> them (for paths the case makes).
# expect: a distinctive part of the message (or a tuple of parts). existing: also run against an
# applied instance.


def case(case_id, args, expect, existing=False):
    return Case(case_id, args, expect, existing)


def rule(rto_ms=100, dest="10.0.0.0/8", **extra):
    return dict(extra, dest=dest, rto_ms=rto_ms)


def symlink_to(target_of, name):
    """A function env -> path of a symlink in the scratch dir pointing at target_of(env)."""

    def make(env):
        link = env.scratch(name)
        os.symlink(target_of(env), link)
        return link

    return make


def scratch_dir(name):
    def make(env):
        path = env.scratch(name)
        os.makedirs(path)
        return path

    return make


def bpffs_symlink_out(env):
    """A symlink inside the private bpffs pointing at a directory outside it."""
    target = scratch_dir("outside-bpffs")(env)
    link = os.path.join(env.bpffs, "escape")
    os.symlink(target, link)
    return os.path.join(link, "tcp_rto")


def foreign_pins(env):
    """A directory on the test's bpffs holding a pinned map that is not ours (another team's)."""
    directory = os.path.join(env.bpffs, "foreign")
    os.mkdir(directory)
    spec = "type array key 4 value 8 entries 1 name foreign".split()
    subprocess.run(["bpftool", "map", "create", os.path.join(directory, "prog"), *spec], check=True)
    return directory


def bpffs_symlink(name, target_of):
    """A symlink on the test's bpffs pointing at target_of(env); -> its path."""

    def make(env):
        link = os.path.join(env.bpffs, name)
        os.symlink(target_of(env), link)
        return link

    return make


def symlinked_instance_dir(target_of, **extra):
    """<pin_dir>/<name> is a symlink to target_of(env)."""

    def make(env):
        os.makedirs(env.pin_dir)
        os.symlink(target_of(env), os.path.join(env.pin_dir, NAME))
        return extra

    return make


def symlinked_pin(**extra):
    """<pin_dir>/<name>/prog is a symlink to another program's pin."""

    def make(env):
        os.makedirs(os.path.join(env.pin_dir, NAME))
        os.symlink(os.path.join(foreign_pins(env), "prog"), os.path.join(env.pin_dir, NAME, "prog"))
        return extra

    return make


def cgroup_escape(env):
    # <mount>/<test cgroup>/../.. is /sys/fs/cgroup: the tmpfs holding the cgroup mounts
    return os.path.join(env.cgroup, "..", "..")


# Of the pure-validation cases (tests/unit/plugins/test_input_validation.py has them all), one or
# two of each kind: the argument spec's conversions and unknown keys, the domain's rto_ms, rules,
# names and directions, NUL and non-ASCII text, and objects refused by the reader and the contract.
RTO_CASES = [
    case("rto_ms-zero", dict(rto_ms=0), "rto_ms must be positive", existing=True),
    case(
        "rto_ms-not-a-number",
        dict(rto_ms="abc"),
        "default: rto_ms must be a whole number of milliseconds or auto, got 'abc'",
        existing=True,
    ),
    case(
        "rule-rto_ms-above-rto-max",
        dict(rules=[rule(), rule(120001, "fd00::/8")]),
        "rules[1]: rto_ms 120001 is above the kernel's TCP_RTO_MAX",
        existing=True,
    ),
]

RULE_CASES = [
    case(
        "dest-duplicate",
        dict(rules=[rule(dest="10.0.0.0/8"), rule(dest="10.0.0.0/8")]),
        "rules[1]: dest 10.0.0.0/8 is the same network as rules[0]",
        existing=True,
    ),
    case(
        "rule-unknown-key",
        dict(rules=[rule(port=443)]),
        "Unsupported parameters for (netbpf.tcp_rto.tcp_initial_rto) module: rules.port",
        existing=True,
    ),
    case(
        "too-many-rules",
        dict(rules=[rule(dest="10.%d.%d.0/24" % divmod(index, 256)) for index in range(1025)]),
        "1025 rules given; the program's rules map holds at most 1024",
        existing=True,
    ),
    case("direction-unknown", dict(direction="sideways"), "direction must be one of", existing=True),
    case(
        "rules-100000",  # refused by the action plugin before anything is sent to the host
        dict(rules=[rule(dest="10.%d.%d.%d/32" % (i >> 16, i >> 8 & 255, i & 255)) for i in range(100000)]),
        ("100000 rules given; the program's rules map holds at most 1024", "merge neighbouring networks"),
    ),
]

NON_ASCII_CASES = [
    case(
        "cgroup-non-ascii-missing",
        lambda env: dict(cgroup=os.path.join(env.cgroup, "ünïcødé-\u2713")),
        "does not exist",
        existing=True,
    ),
    case("cgroup-non-ascii-not-a-cgroup", lambda env: dict(cgroup=scratch_dir("cgrøup")(env)), "not cgroup2"),
    case("pin_dir-non-ascii-not-bpffs", lambda env: dict(pin_dir=scratch_dir("pïns")(env)), "not bpffs"),
    case("dest-non-ascii-word", dict(rules=[rule(dest="réseau/8")]), "is not a network in CIDR", existing=True),
    case("src-non-ascii-missing", lambda env: dict(src=env.scratch("öbject.bpf.o")), "not found on the controller"),
]

NUL_CASES = [
    case("name-nul-byte", dict(name="a\x00b"), "is not a valid instance name"),
    case("cgroup-nul-byte", lambda env: dict(cgroup=env.cgroup + "\x00x"), "contains a NUL byte", existing=True),
    case("pin_dir-nul-byte", lambda env: dict(pin_dir=env.pin_dir + "\x00x"), "contains a NUL byte"),
]

NAME_CASES = [
    case("name-slash", dict(name="a/b"), "is not a valid instance name"),
]

CGROUP_CASES = [
    case(
        "cgroup-missing", lambda env: dict(cgroup=os.path.join(env.cgroup, "missing")), "does not exist", existing=True
    ),
    case(
        "cgroup-regular-file",
        lambda env: dict(cgroup=scratch_text("file", "not a cgroup\n")(env)),
        "is not a directory",
    ),
    case("cgroup-v1", dict(cgroup="/sys/fs/cgroup/cpu"), "is a cgroup v1 directory", existing=True),
    case("cgroup-outside-mount", lambda env: dict(cgroup=scratch_dir("dir")(env)), "not cgroup2"),
    case("cgroup-dotdot-escapes-mount", lambda env: dict(cgroup=cgroup_escape(env)), "not cgroup2", existing=True),
    case("cgroup-relative-dotdot-to-v1", dict(cgroup="../cpu"), "is a cgroup v1 directory"),
    case("cgroup-dotdot-above-mount", lambda env: dict(cgroup=sandbox.cgroup2_mount() + "/.."), "not cgroup2"),
    case("cgroup-relative-dotdot-to-sysfs", dict(cgroup="../../.."), "not cgroup2"),
    case(
        "cgroup-dotdot-inside-to-missing",
        lambda env: dict(cgroup=os.path.join(env.cgroup, "..", "tcp_rto_test-missing")),
        "does not exist",
    ),
    case(
        "cgroup-symlink-then-dotdot-out",
        lambda env: dict(cgroup=os.path.join(symlink_to(lambda env: env.cgroup, "up")(env), "..", "..")),
        "not cgroup2",
    ),
    case("cgroup-symlink-out", lambda env: dict(cgroup=symlink_to(scratch_dir("dir"), "link")(env)), "resolves to"),
    case(
        "cgroup-symlinked-parent-out",
        lambda env: dict(cgroup=os.path.join(symlink_to(scratch_dir("dir/sub"), "parent")(env), "..", "sub")),
        "not cgroup2",
    ),
    case(
        "cgroup-symlink-to-v1",
        lambda env: dict(cgroup=symlink_to(lambda _env: "/sys/fs/cgroup/cpu", "v1")(env)),
        "is a cgroup v1 directory",
    ),
]

PIN_DIR_CASES = [
    case("pin_dir-not-bpffs", lambda env: dict(pin_dir=scratch_dir("pins")(env)), "not bpffs"),
    case("pin_dir-symlink-out-of-bpffs", lambda env: dict(pin_dir=bpffs_symlink_out(env)), "not bpffs"),
    case(
        "pin_dir-is-a-symlink-out-of-bpffs",
        lambda env: dict(pin_dir=symlink_to(scratch_dir("outside"), "pins")(env)),
        "not bpffs",
    ),
    case("pin_dir-dotdot-out-of-bpffs", lambda env: dict(pin_dir=os.path.join(env.bpffs, "..", "x")), "not bpffs"),
    case(
        "pin_dir-is-a-symlink-on-bpffs",
        lambda env: dict(pin_dir=bpffs_symlink("pins", foreign_pins)(env)),
        "is a symlink on bpffs",
    ),
    case(
        "pin_dir-parent-is-a-symlink-on-bpffs",
        lambda env: dict(pin_dir=os.path.join(bpffs_symlink("parent", foreign_pins)(env), "tcp_rto")),
        "is a symlink on bpffs",
    ),
    case("instance-dir-symlink-to-foreign-pins", symlinked_instance_dir(foreign_pins), "is a symlink on bpffs"),
    case(
        "instance-dir-symlink-to-foreign-pins-absent",
        symlinked_instance_dir(foreign_pins, state="absent"),
        "is a symlink on bpffs",
    ),
    case(
        "instance-dir-symlink-out-of-bpffs",
        symlinked_instance_dir(scratch_dir("outside")),
        "is a symlink on bpffs",
    ),
    case("instance-pin-symlink-to-foreign-pin", symlinked_pin(), "is a symlink on bpffs"),
    case("instance-pin-symlink-to-foreign-pin-absent", symlinked_pin(state="absent"), "is a symlink on bpffs"),
]


def src(make):
    """Case arguments with src made by make(env) (a file in the scratch directory)."""
    return lambda env: dict(src=make(env))


def unloadable(detail):
    """The message of an object the module reads and refuses before it touches the kernel."""
    return "src is not a BPF object this collection can load: " + detail


def unloadable_with(detail):
    """unloadable() with detail somewhere after the prefix."""
    return unloadable(""), detail


SRC_CASES = [
    case(
        "src-missing", lambda env: dict(src=env.scratch("missing.bpf.o")), "not found on the controller", existing=True
    ),
    case(
        "src-truncated",
        src(truncated_object),
        unloadable("section header table past end of file (truncated?)"),
        existing=True,
    ),
    case(
        "src-missing-hits-map",
        src(compiled("nohits", maps=WITHOUT_HITS)),
        unloadable("object has no 'hits' map"),
        existing=True,
    ),
    case("src-c-does-not-compile", src(scratch_text("broken.c", "int broken( {\n")), "broken.c failed:", existing=True),
    case(
        "src-o-verifier-ctx-out-of-bounds",
        src(compiled("oob", body=OUT_OF_BOUNDS_BODY)),
        "invalid bpf_context access off=4096",
        existing=True,
    ),
    case("src-o-verifier-unbounded-loop", src(compiled("loop", body=UNBOUNDED_LOOP_BODY)), "infinite loop detected"),
    case(
        "src-c-verifier-ctx-out-of-bounds",
        src(scratch_text("oob.c", bpf_objects.contract_source(body=OUT_OF_BOUNDS_BODY))),
        "invalid bpf_context access off=4096",
        existing=True,
    ),
    case(
        "src-c-verifier-unbounded-loop",
        src(scratch_text("loop.c", bpf_objects.contract_source(body=UNBOUNDED_LOOP_BODY))),
        "infinite loop detected",
    ),
]

ELF_CASES = [
    case(
        "elf-section-offset-past-end",
        src(patched_object("offset", (section_header("sockops", SH_OFFSET), "Q", 1 << 32))),
        unloadable_with("(offset 4294967296, size %d) past end of file" % shipped_section_size("sockops")),
        existing=True,
    ),
]

LICENSE_CASES = [
    case("license-mit", src(compiled("mit", license="MIT")), unloadable("license 'MIT' is not GPL-compatible")),
]

VERIFIER_CASES = [
    case(
        "src-o-verifier-ctx-write-read-only-field",
        src(compiled("ctxwrite", body=CTX_WRITE_BODY)),
        ("the kernel refused the program", "fix the program's source", "invalid bpf_context access off=0"),
    ),
    case(
        "src-o-verifier-too-complex",  # a 16 MiB verifier log: the message carries its last lines
        src(compiled("complex", body=TOO_COMPLEX_BODY)),
        ("Last 30 of", "lines of the verifier log:", "BPF program is too large. Processed 1000001 insn"),
    ),
]

CASES = (
    RTO_CASES
    + RULE_CASES
    + NAME_CASES
    + NON_ASCII_CASES
    + NUL_CASES
    + CGROUP_CASES
    + PIN_DIR_CASES
    + SRC_CASES
    + ELF_CASES
    + LICENSE_CASES
    + VERIFIER_CASES
)


def params(cases):
    return [pytest.param(item, id=item.id) for item in cases]


def bad_args(item, env):
    return item.args(env) if callable(item.args) else dict(item.args)


@pytest.mark.parametrize("item", params(CASES))
def test_bad_input_on_a_new_instance(playbook, env, item):
    bad = bad_args(item, env)
    before = settled_state(env)
    result = playbook.module(**env.args(**bad))
    assert_refused(result, item.expect, before, env)


@pytest.mark.parametrize("item", params([item for item in CASES if item.existing]))
def test_bad_input_leaves_an_applied_instance_alone(playbook, env, item):
    good = env.args(**GOOD)
    applied = playbook.module(**good)
    assert applied["status"] == "ok", applied["_output"]
    program_id = applied["instance"]["program_id"]
    bad = bad_args(item, env)
    before = settled_state(env)
    assert before["instances"][NAME]["prog"] == program_id
    result = playbook.module(**dict(good, **bad))
    assert_refused(result, item.expect, before, env)
    again = playbook.module(check=True, **good)  # the module itself sees nothing to change either
    assert again["changed"] is False, again["actions"]
    assert again["instance"]["program_id"] == program_id


# ---------------------------------------------------------------- one instance per cgroup


def same_cgroup_spellings():
    return [
        pytest.param(lambda env: env.cgroup, id="same-path"),
        pytest.param(lambda env: env.cgroup + "/", id="trailing-slash"),
        pytest.param(lambda env: os.path.basename(env.cgroup), id="relative-to-mount"),
        pytest.param(symlink_to(lambda env: env.cgroup, "cgroup-link"), id="via-symlink"),
    ]


@pytest.mark.parametrize("spelling", same_cgroup_spellings())
def test_second_instance_on_the_same_cgroup(playbook, env, spelling):
    first = playbook.module(**env.args(name="a", **GOOD))
    assert first["status"] == "ok", first["_output"]
    cgroup = spelling(env)
    before = settled_state(env)
    assert list(before["instances"]) == ["a"]
    result = playbook.module(**env.args(name="b", cgroup=cgroup, rto_ms=300))
    assert_refused(result, "already has the tcp_rto instance a", before, env)  # a as it was, no b


# ---------------------------------------------------------------- check mode


def test_check_mode_with_a_good_config_touches_nothing(playbook, env):
    before = settled_state(env)
    result = playbook.module(check=True, **env.args(**GOOD))
    assert result["status"] == "ok", result["_output"]
    assert result["changed"] is True
    assert result["actions"]
    assert not os.path.lexists(env.pin_dir)
    assert settled_state(env, before) == before


# ---------------------------------------------------------------- damaged or edited records

# A persistent instance's record under <persist_root>/etc/tcp_rto/ is read at boot by the restore
# (tcp-rto@.service), which must refuse a damaged or edited one before it touches the kernel. Each
# case: apply with persistent: true, reboot (pins gone), damage, then the unit's ExecStart.

RECORD = "etc/tcp_rto/%s.json" % NAME
OBJECT_COPY = "var/lib/tcp_rto/objects/%s.bpf.o" % NAME


def write_file(root, relative, content):
    with open(os.path.join(root, relative), "wb") as handle:
        handle.write(content if isinstance(content, bytes) else content.encode("utf-8"))


def read_file(root, relative):
    with open(os.path.join(root, relative), "rb") as handle:
        return handle.read()


def record_text(text):
    return lambda env, root, playbook: write_file(root, RECORD, text)


def edited(change):
    """The record with change(record, env) applied to its parsed JSON."""

    def damage(env, root, playbook):
        record = json.loads(read_file(root, RECORD))
        change(record, env)
        write_file(root, RECORD, json.dumps(record))

    return damage


def setting(key, value):
    return edited(lambda record, env: record.__setitem__(key, value(env) if callable(value) else value))


def first_rule(key, value):
    return edited(lambda record, env: record["rules"][0].__setitem__(key, value))


def moved_behind_symlink(relative):
    """What lies at relative is moved to the scratch directory and a symlink put in its place."""

    def damage(env, root, playbook):
        path = os.path.join(root, relative)
        target = env.scratch("moved-" + os.path.basename(relative))
        shutil.move(path, target)
        os.symlink(target, path)

    return damage


def replaced_by_directory(relative):
    def damage(env, root, playbook):
        os.unlink(os.path.join(root, relative))
        os.mkdir(os.path.join(root, relative))

    return damage


def world_writable(relative):
    return lambda env, root, playbook: os.chmod(os.path.join(root, relative), 0o777)


def other_instance_on(make_cgroup):
    """Points the record at the cgroup of another instance, applied after the reboot."""

    def damage(env, root, playbook):
        other = make_cgroup(env)
        applied = playbook.module(**env.args(name="other", cgroup=other, rto_ms=300))
        assert applied["status"] == "ok", applied["_output"]
        setting("cgroup", other)(env, root, playbook)

    return damage


def child_cgroup(env):
    path = os.path.join(env.cgroup, "child")
    os.mkdir(path)
    return path


def removed(relative):
    return lambda env, root, playbook: os.unlink(os.path.join(root, relative))


def truncated_record(env, root, playbook):
    write_file(root, RECORD, read_file(root, RECORD)[:100])


def object_replaced(env, root, playbook):
    shutil.copy(truncated_object(env), os.path.join(root, OBJECT_COPY))


NOT_VALID = "is not valid"
RECORD_CASES = [
    case("record-not-json", record_text("hello\n"), (NOT_VALID, "apply the instance again with Ansible")),
    case("record-truncated", truncated_record, NOT_VALID),
    case("record-binary", record_text(bytes(range(256))), (NOT_VALID, "can't decode")),
    case("record-empty", record_text(""), NOT_VALID),
    case("record-json-array", record_text("[]"), "not a JSON object"),
    case("record-json-null", record_text("null"), "not a JSON object"),
    case("record-nested-too-deep", record_text("[" * 100000), "maximum recursion depth"),
    case("record-format-2", setting("format", 2), "format is not 1"),
    case("record-missing-key", edited(lambda record, env: record.pop("rules")), "missing rules"),
    case("record-unknown-key", setting("port", 443), "unknown key(s) port"),
    case("record-rto_ms-string", setting("rto_ms", "200"), 'rto_ms is "200", expected an integer, auto or null'),
    case("record-rto_ms-bool", setting("rto_ms", True), "rto_ms is true, expected an integer, auto or null"),
    case("record-rules-mapping", setting("rules", {"dest": "10.0.0.0/8"}), "rules is {"),
    case("record-rule-rto_ms-string", first_rule("rto_ms", "fast"), "expected a list of {dest: string"),
    case("record-rule-extra-key", first_rule("port", 443), "expected a list of {dest: string"),
    case("record-mount_bpffs-string", setting("mount_bpffs", "yes"), 'mount_bpffs is "yes", expected true or false'),
    case("record-hz-string", setting("hz", "250"), 'hz is "250"'),
    case("record-name-number", setting("name", 5), "name is 5, expected a string"),
    case("record-pin_dir-null", setting("pin_dir", None), "pin_dir is null"),
    case("record-names-other-instance", setting("name", "other"), "it names the instance 'other'"),
    case("record-src-elsewhere", setting("src", "/tmp/evil.bpf.o"), "not the collection's copy"),
    case("record-rto_ms-zero", setting("rto_ms", 0), "rto_ms must be positive"),
    case(
        "record-100000-rules",
        setting("rules", [rule(dest="10.%d.%d.%d/32" % (i >> 16, i >> 8 & 255, i & 255)) for i in range(100000)]),
        "100000 rules given",
    ),
    case("record-dest-fullwidth", first_rule("dest", "\uff11\uff10.0.0.0/8"), "is not a network in CIDR"),
    # A recorded cgroup that does not exist at boot is no bad record: the restore waits for it
    # (tests/integration/test_persistence.py::test_restore_waits_for_a_cgroup_made_after_boot).
    case("record-cgroup-filesystem-root", setting("cgroup", "/"), "not cgroup2"),
    case(
        "record-cgroup-dotdot-escape",
        setting("cgroup", lambda env: sandbox.cgroup2_mount() + "/.."),
        "not cgroup2",
    ),
    case("record-cgroup-nul-byte", setting("cgroup", "/sys/fs/cgroup\x00"), "contains a NUL byte"),
    case(
        "record-cgroup-of-another-instance", other_instance_on(child_cgroup), "already has the tcp_rto instance other"
    ),
    case(
        "record-pin_dir-not-bpffs",
        setting("pin_dir", scratch_dir("pins")),
        "not bpffs",
    ),
    case(
        "record-pin_dir-symlink-on-bpffs",
        setting("pin_dir", bpffs_symlink("pins", foreign_pins)),
        "is a symlink on bpffs",
    ),
    case("record-object-replaced", object_replaced, "is another file, not the one the record"),
    case("record-object-missing", removed(OBJECT_COPY), "is missing, not the one the record"),
    case("record-missing", removed(RECORD), "no record"),
    case("record-symlink", moved_behind_symlink(RECORD), "is a symlink"),
    case("record-dir-symlink", moved_behind_symlink("etc/tcp_rto"), "is a symlink"),
    case("record-object-symlink", moved_behind_symlink(OBJECT_COPY), "is a symlink"),
    case("record-lib-dir-symlink", moved_behind_symlink("var/lib/tcp_rto"), "is a symlink"),
    case("record-is-a-directory", replaced_by_directory(RECORD), "is not a regular file"),
    case("record-dir-world-writable", world_writable("etc/tcp_rto"), "could be changed by another user"),
]


def exec_start(root, name):
    """The unit's ExecStart command line for instance name, as systemd would run it."""
    with open(os.path.join(root, "etc/systemd/system/tcp-rto@.service")) as unit:
        line = next(line for line in unit if line.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart=") :].replace("%i", name))


@pytest.mark.parametrize("item", params(RECORD_CASES))
def test_bad_record_at_boot(playbook, env, item):
    root = env.scratch("root")
    os.mkdir(root)
    applied = playbook.module(**env.args(persistent=True, _persist_root=root, **GOOD))
    assert applied["status"] == "ok", applied["_output"]
    shutil.rmtree(env.pin_dir)  # a reboot: every pin and attachment gone
    item.args(env, root, playbook)
    before = settled_state(env)
    restore = subprocess.run(
        exec_start(root, NAME),
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        timeout=60,
    )
    assert restore.returncode == 1, restore.stdout + restore.stderr
    assert restore.stderr.startswith("tcp-rto restore of %s failed: " % NAME), restore.stderr
    assert "Traceback" not in restore.stderr
    assert restore.stderr.count("\n") == 1, restore.stderr  # one line: the message
    for part in (item.expect,) if isinstance(item.expect, str) else item.expect:
        assert part in restore.stderr, restore.stderr
    assert settled_state(env, before) == before
