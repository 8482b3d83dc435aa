"""Bad input the module refuses before it touches the host: its parameters as AnsibleModule
validates them (the argument spec, through ansible's ArgumentSpecValidator) and then the domain
(desired.desired_state: name, rules, rto_ms, direction), and objects as the reader and the
contract check refuse them, each with the message the module fails with. No kernel, no playbook.

tests/integration/test_bad_input.py runs a representative few of these through the module, with
the kernel checked untouched, and the cases that need the host (cgroups, bpffs, the verifier)."""

import os

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_object, desired, reconcile, rto_program
from ansible_collections.netbpf.tcp_rto.plugins.modules.tcp_initial_rto import ARGUMENT_SPEC
from ansible_collections.netbpf.tcp_rto.tests.support import bpf_objects
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_objects import (
    E_SHENTSIZE,
    E_SHNUM,
    E_SHOFF,
    E_SHSTRNDX,
    SH_LINK,
    SH_NAME,
    SH_OFFSET,
    SH_SIZE,
    at,
    section_body,
    section_header,
    shipped_section_size,
)
from ansible_collections.netbpf.tcp_rto.tests.support.paths import SHIPPED_OBJECT

HZ = 250
ONE_JIFFY_MS = 1000 // HZ
NAME = "t1"


def refusal(args, hz=HZ):
    """The message the module fails with for args (None: accepted): the argument spec's errors,
    else what desired_state raises, as reconcile.describe_error words it."""
    validated = ArgumentSpecValidator(ARGUMENT_SPEC).validate(dict(dict(name=NAME), **args))
    if validated.error_messages:
        return "; ".join(validated.error_messages)
    params = validated.validated_parameters
    try:
        rules, default = params["rules"], params["rto_ms"]
        desired.desired_state(
            params["name"],
            params["pin_dir"],
            "/cg",
            hz,
            rules,
            default,
            params["direction"],
            "link",
            None,
            syn_give_up_s=params["syn_give_up_s"],
            auto_params={key: params[key] for key in desired.AUTO_DEFAULTS},
        )
    except desired.ConfigError as exc:
        return reconcile.describe_error(exc)
    return None


def rule(rto_ms=100, dest="10.0.0.0/8", **extra):
    return dict(extra, dest=dest, rto_ms=rto_ms)


PARAMETER_CASES = {
    "rto_ms-zero": (dict(rto_ms=0), "rto_ms must be positive"),
    "rto_ms-negative": (dict(rto_ms=-5), "default: rto_ms must be positive, got -5"),
    "rto_ms-not-a-number": (dict(rto_ms="abc"), "default: rto_ms must be a whole number of milliseconds or auto"),
    "rto_ms-fraction": (dict(rto_ms=1.5), "default: rto_ms must be a whole number of milliseconds or auto, got 1.5"),
    "rto_ms-above-rto-max": (dict(rto_ms=120001), "above the kernel's TCP_RTO_MAX of 120000 ms"),
    "rto_ms-one-ms-below-one-jiffy": (dict(rto_ms=1), "is below one jiffy at HZ %d" % HZ),
    "rto_ms-just-below-one-jiffy": (dict(rto_ms=ONE_JIFFY_MS - 1), "use at least %d" % ONE_JIFFY_MS),
    "rule-rto_ms-zero": (dict(rules=[rule(0)]), "rules[0]: rto_ms must be positive"),
    "rule-rto_ms-negative": (dict(rules=[rule(-5)]), "rules[0]: rto_ms must be positive"),
    "rule-rto_ms-not-a-number": (
        dict(rules=[rule("abc")]),
        "rules[0]: rto_ms must be a whole number of milliseconds or auto, got 'abc'",
    ),
    "rule-rto_ms-fraction": (
        dict(rules=[rule(1.5)]),
        "rules[0]: rto_ms must be a whole number of milliseconds or auto",
    ),
    "rule-rto_ms-above-rto-max": (
        dict(rules=[rule(), rule(120001, "fd00::/8")]),
        "rules[1]: rto_ms 120001 is above the kernel's TCP_RTO_MAX",
    ),
    "rule-rto_ms-below-one-jiffy": (dict(rules=[rule(1)]), "rules[0]: rto_ms 1 is below one jiffy"),
    "dest-prefix-too-long": (dict(rules=[rule(dest="10.0.0.0/33")]), "is not a network in CIDR notation"),
    "dest-not-an-ip": (dict(rules=[rule(dest="not-an-ip")]), "is not a network in CIDR notation"),
    "dest-host-bits-set": (dict(rules=[rule(dest="10.0.0.1/8")]), "has host bits set"),
    "dest-duplicate": (
        dict(rules=[rule(dest="10.0.0.0/8"), rule(dest="10.0.0.0/8")]),
        "rules[1]: dest 10.0.0.0/8 is the same network as rules[0]",
    ),
    "dest-v4-and-v4-mapped": (
        dict(rules=[rule(dest="10.0.0.0/8"), rule(dest="::ffff:10.0.0.0/104")]),
        "is the same network as rules[0] (10.0.0.0/8)",
    ),
    "rule-unknown-key": (dict(rules=[rule(port=443)]), "rules.port. Supported parameters include: dest, rto_ms"),
    "rule-without-dest": (dict(rules=[{"rto_ms": 100}]), "missing required arguments: dest found in rules"),
    "too-many-rules": (
        dict(rules=[rule(dest="10.%d.%d.0/24" % divmod(index, 256)) for index in range(1025)]),
        rto_program.too_many_rules(1025),
    ),
    "direction-unknown": (dict(direction="sideways"), "direction must be one of"),
    "direction-non-ascii": (dict(direction="bóth"), "direction must be one of"),
    "name-slash": (dict(name="a/b"), "is not a valid instance name"),
    "name-dotdot": (dict(name=".."), "is not a valid instance name"),
    "name-space": (dict(name="a b"), "is not a valid instance name"),
    "name-dot": (dict(name="a.b"), "is not a valid instance name"),
    "name-empty": (dict(name=""), "is not a valid instance name"),
    "name-too-long": (dict(name="n" * 65), "is not a valid instance name"),
    "name-leading-dash": (dict(name="-rto"), "is not a valid instance name"),
    "name-non-ascii-letter": (dict(name="tcp_rtö"), "is not a valid instance name"),
    "name-fullwidth-digits": (dict(name="\uff11\uff12\uff13"), "is not a valid instance name"),
    "name-emoji": (dict(name="rto-\U0001f680"), "is not a valid instance name"),
    "name-right-to-left-override": (dict(name="rto\u202eevil"), "is not a valid instance name"),
    "name-nul-byte": (dict(name="a\x00b"), "is not a valid instance name"),
    "name-trailing-newline": (dict(name="abc\n"), "is not a valid instance name"),
    "dest-fullwidth-digits": (dict(rules=[rule(dest="\uff11\uff10.0.0.0/8")]), "is not a network in CIDR"),
    "dest-non-ascii-word": (dict(rules=[rule(dest="réseau/8")]), "is not a network in CIDR"),
    "dest-arabic-indic-prefix": (dict(rules=[rule(dest="10.0.0.0/\u0668")]), "is not a network in CIDR"),
    "dest-nul-byte": (dict(rules=[rule(dest="10.0.0.0/8\x00")]), "is not a network in CIDR"),
    "rto_ms-auto-misspelt": (
        dict(rto_ms="automatic"),
        "default: rto_ms must be a whole number of milliseconds or auto",
    ),
    "auto-min-above-max": (
        dict(rto_ms="auto", auto_min_ms=500, auto_max_ms=200),
        "auto_min_ms 500 is above auto_max_ms 200: give auto_min_ms <= auto_max_ms",
    ),
    "auto-min-below-one-jiffy": (dict(rules=[rule("auto")], auto_min_ms=1), "auto_min_ms: rto_ms 1 is below one jiffy"),
    "auto-max-above-rto-max": (dict(rto_ms="auto", auto_max_ms=120001), "auto_max_ms must be a whole number from 1"),
    "auto-factor-below-one": (dict(rto_ms="auto", auto_factor=0.5), "auto_factor must be a number from 1 to 10"),
    "auto-min-samples-zero": (dict(rto_ms="auto", auto_min_samples=0), "auto_min_samples must be a whole number"),
    "auto-ttl-zero": (dict(rto_ms="auto", auto_ttl_s=0), "auto_ttl_s must be a whole number from 1"),
    "auto-budget-negative": (dict(rto_ms="auto", auto_retransmit_budget=-1), "auto_retransmit_budget must be"),
    "auto-table-size-zero": (dict(rto_ms="auto", auto_table_size=0), "auto_table_size must be a whole number from 1"),
    "auto-rule-with-give-up": (
        dict(rules=[rule("auto", syn_give_up_s=5)]),
        "rules[0]: syn_give_up_s with rto_ms: auto is not supported",
    ),
    "auto-default-with-give-up": (
        dict(rto_ms="auto", syn_give_up_s=5),
        "default: syn_give_up_s with rto_ms: auto is not supported",
    ),
}


@pytest.mark.parametrize("args, expect", list(PARAMETER_CASES.values()), ids=list(PARAMETER_CASES))
def test_bad_parameters_are_refused_with_what_to_do(args, expect):
    message = refusal(args)
    assert message is not None, "accepted: %r" % (args,)
    assert expect in message


def test_good_parameters_are_accepted():
    """The cases above differ from this in the one thing they name."""
    assert refusal(dict(rules=[rule(), rule(40, "fd00::/8")], rto_ms=500, direction="outgoing")) is None
    assert refusal(dict(rules=[rule(ONE_JIFFY_MS), rule(120000, "fd00::/8")], rto_ms=ONE_JIFFY_MS)) is None
    full = [rule(dest="10.%d.%d.0/24" % divmod(index, 256)) for index in range(rto_program.MAX_RULES)]
    assert refusal(dict(name="n" * 64, rules=full)) is None
    assert refusal(dict(rules=[rule("auto"), rule(40, "fd00::/8")], rto_ms="AUTO", auto_min_ms=ONE_JIFFY_MS)) is None
    assert refusal(dict(rules=[rule("50")], rto_ms="auto", auto_factor=1, auto_retransmit_budget=0)) is None


def test_one_millisecond_is_a_whole_jiffy_at_hz_1000():
    assert refusal(dict(rto_ms=1), hz=1000) is None
    assert (
        refusal(dict(rto_ms=1), hz=100) == "default: rto_ms 1 is below one jiffy at HZ 100 (10.0 ms): use at least 10"
    )


# ---------------------------------------------------------------- objects


def object_refusal(path):
    """The message the module fails with for src at path (None: it reads and meets the contract)."""
    try:
        bpf_object.check_contract(bpf_object.BpfObject.from_file(path))
    except bpf_object.BpfObjectError as exc:
        return reconcile.describe_error(exc)
    return None


def unloadable(detail):
    return "src is not a BPF object this collection can load: " + detail


def compiled(**variant):
    return lambda directory: bpf_objects.compile_to(
        bpf_objects.contract_source(**variant), os.path.join(directory, "variant.o")
    )


def patched_shipped(*patches):
    def make(directory):
        with open(SHIPPED_OBJECT, "rb") as handle:
            data = bpf_objects.patched(handle.read(), *patches)
        path = os.path.join(directory, "patched.bpf.o")
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    return make


def file_with(content):
    def make(directory):
        path = os.path.join(directory, "object.o")
        with open(path, "wb") as handle:
            handle.write(content)
        return path

    return make


def shipped_head(size):
    with open(SHIPPED_OBJECT, "rb") as handle:
        return file_with(handle.read(size))


WITHOUT_HITS = {name: spec for name, spec in bpf_objects.CONTRACT_MAPS.items() if name != "hits"}
HITS_NOT_PERCPU = dict(bpf_objects.CONTRACT_MAPS, hits=bpf_objects.CONTRACT_MAPS["hits"].replace("PERCPU_", ""))

OBJECT_CASES = {
    "src-truncated": (shipped_head(100), unloadable("section header table past end of file (truncated?)")),
    "src-not-elf": (file_with(b"hello\n"), unloadable("not an ELF file")),
    "src-empty": (file_with(b""), unloadable("not an ELF file")),
    "src-elf-not-bpf": (lambda _directory: "/bin/true", unloadable("ELF machine 62 is not BPF (247)")),
    "src-no-program": (compiled(section=None), unloadable("object has no program section")),
    "src-kprobe-section": (
        compiled(section="kprobe/x"),
        unloadable("program section is 'kprobe/x'; a sock_ops program must be in SEC('sockops')"),
    ),
    "src-xdp-program": (compiled(section="xdp"), unloadable("program section is 'xdp'; a sock_ops program must be")),
    "src-missing-hits-map": (compiled(maps=WITHOUT_HITS), unloadable("object has no 'hits' map")),
    "src-hits-map-wrong-type": (
        compiled(maps=HITS_NOT_PERCPU),
        unloadable("map 'hits' is type 2 (ARRAY), the program needs 6 (PERCPU_ARRAY)"),
    ),
    "license-proprietary": (compiled(license="Proprietary"), unloadable("license 'Proprietary' is not GPL-compatible")),
    "license-mit": (compiled(license="MIT"), unloadable("license 'MIT' is not GPL-compatible")),
    "license-gplv2-spelling": (compiled(license="GPLv2"), unloadable("license 'GPLv2' is not")),
    "license-empty": (compiled(license=""), unloadable("license '' is not GPL-compatible")),
    "license-missing": (compiled(license=None), unloadable("object has no license section")),
    "license-non-ascii": (compiled(license="GPL ©"), unloadable("license section is not ASCII")),
    "elf-section-count-oversized": (
        patched_shipped((at(E_SHNUM), "H", 0xFF00)),
        unloadable("section header table past end of file (truncated?): 65280 headers"),
    ),
    "elf-section-table-offset-past-end": (
        patched_shipped((at(E_SHOFF), "Q", 1 << 40)),
        unloadable("section header table past end of file (truncated?): 12 headers at offset 1099511627776"),
    ),
    "elf-section-header-size": (
        patched_shipped((at(E_SHENTSIZE), "H", 40)),
        unloadable("section header size 40, expected 64"),
    ),
    "elf-name-table-index-out-of-range": (
        patched_shipped((at(E_SHSTRNDX), "H", 200)),
        unloadable("section name table index 200 out of range"),
    ),
    "elf-section-offset-past-end": (
        patched_shipped((section_header("sockops", SH_OFFSET), "Q", 1 << 32)),
        "(offset 4294967296, size %d) past end of file" % shipped_section_size("sockops"),
    ),
    "elf-section-size-past-end": (
        patched_shipped((section_header("sockops", SH_SIZE), "Q", 1 << 63)),
        "size 9223372036854775808) past end of file",
    ),
    "elf-section-offset-wraps-64-bit": (
        patched_shipped((section_header(".maps", SH_OFFSET), "Q", (1 << 64) - 8)),
        "(offset 18446744073709551608, size %d) past end of file" % shipped_section_size(".maps"),
    ),
    "elf-section-size-not-whole-instructions": (
        patched_shipped((section_header("sockops", SH_SIZE), "Q", 639)),
        "not a multiple of the 8-byte instruction",
    ),
    "elf-symbol-table-link-out-of-range": (
        patched_shipped((section_header(".symtab", SH_LINK), "I", 99)),
        "section index 99 out of range",
    ),
    "elf-symbol-name-past-string-table": (
        patched_shipped((section_body(".symtab", 24 + SH_NAME), "I", 0xFFFFFF)),
        "string offset 16777215 past its table",
    ),
    "elf-relocation-outside-program": (
        patched_shipped((section_body(".relsockops", 0), "Q", 1 << 20)),
        "offset 1048576 is outside the program section",
    ),
    "elf-relocation-symbol-out-of-range": (
        patched_shipped((section_body(".relsockops", 8), "Q", 9999 << 32 | 1)),
        "symbol index 9999 out of range",
    ),
    "elf-32-bit-class": (patched_shipped((at(4), "B", 1)), unloadable("ELF32 object")),
}


@pytest.mark.parametrize("make, expect", list(OBJECT_CASES.values()), ids=list(OBJECT_CASES))
def test_bad_objects_are_refused_before_the_kernel_sees_them(tmp_path, make, expect):
    message = object_refusal(make(str(tmp_path)))
    assert message is not None
    assert message.startswith(unloadable("")) and expect in message, message


def test_the_minimal_contract_object_is_accepted(tmp_path):
    """The object cases above differ from this one in the one thing they name."""
    assert object_refusal(compiled()(str(tmp_path))) is None
    assert object_refusal(SHIPPED_OBJECT) is None
