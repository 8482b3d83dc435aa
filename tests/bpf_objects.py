"""Program objects for tests: the shipped source in variants, built with the collection's compile
command (plugins/plugin_utils/bpf_build.py), and the legacy-maps form earlier releases shipped.

Imported by unit and integration tests (tests/ is on sys.path through tests/conftest.py)."""

import os
import subprocess

from ansible_collections.netbpf.tcp_rto.plugins.plugin_utils import bpf_build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "files", "bpf", "tcp_initial_rto.bpf.c")
SHIPPED = os.path.join(REPO, "plugins", "plugin_utils", "tcp_initial_rto.bpf.o")

# The map definitions of releases before BTF-defined maps: struct bpf_map_def in SEC("maps").
LEGACY_MAPS = """struct bpf_map_def { __u32 type, key_size, value_size, max_entries, map_flags; };

struct bpf_map_def SEC("maps") rules = {
	.type = BPF_MAP_TYPE_LPM_TRIE, .key_size = sizeof(struct rule_key),
	.value_size = sizeof(struct rule_value), .max_entries = MAX_RULES,
	.map_flags = BPF_F_NO_PREALLOC,
};

struct bpf_map_def SEC("maps") config = {
	.type = BPF_MAP_TYPE_ARRAY, .key_size = sizeof(__u32),
	.value_size = sizeof(struct config_value), .max_entries = 1,
};

struct bpf_map_def SEC("maps") hits = {
	.type = BPF_MAP_TYPE_PERCPU_ARRAY, .key_size = sizeof(__u32),
	.value_size = sizeof(__u64), .max_entries = MAX_RULES + 1,
};

"""
BTF_MAPS_START = "struct {\n\t__uint(type, BPF_MAP_TYPE_LPM_TRIE);"
MAPS_END = "static __attribute__((always_inline)) void count_hit"
# What -g adds to the compile command; without it clang emits neither BTF nor DWARF.
DEBUG_FLAGS = ("-g", "-fdebug-compilation-dir=.")


def shipped_source():
    with open(SOURCE) as handle:
        return handle.read()


def legacy_source(source=None):
    """The shipped source (or source) with its maps defined the legacy way."""
    source = shipped_source() if source is None else source
    start, end = source.index(BTF_MAPS_START), source.index(MAPS_END)
    return source[:start] + LEGACY_MAPS + source[end:]


def build(source, directory, name="variant", target="bpf", btf=True):
    """Compile source text in directory -> the object's bytes. btf=False: the command without -g,
    as releases before BTF-defined maps built (no .BTF, no .BTF.ext, no DWARF)."""
    c_file = os.path.join(str(directory), name + ".c")
    o_file = os.path.join(str(directory), name + ".o")
    with open(c_file, "w") as handle:
        handle.write(source)
    command = bpf_build.compile_command(c_file)
    command[command.index("-target") + 1] = target
    if not btf:
        command = [arg for arg in command if arg not in DEBUG_FLAGS]
    subprocess.run([*command, "-o", o_file], cwd=str(directory), check=True)
    if btf:
        subprocess.run([bpf_build.strip_tool(), "--strip-debug", o_file], check=True)
    with open(o_file, "rb") as handle:
        return handle.read()


def build_legacy(directory, name="legacy"):
    """The shipped program with legacy maps, built as earlier releases did -> path of the object."""
    build(legacy_source(), directory, name, btf=False)
    return os.path.join(str(directory), name + ".o")
