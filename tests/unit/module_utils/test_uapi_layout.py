"""The hand-typed offsets of plugins/module_utils/uapi.py (union bpf_attr and the info structs)
against the kernel's own uapi header: a C table of offsetof/sizeof compiled with clang from
<linux/bpf.h>. A field added to uapi is checked as soon as it is added; its name must be the
header's."""

import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import uapi

# Where a command's fields sit in union bpf_attr: anonymous structs at the top level, the others
# in a named member.
ATTR_MEMBER = {
    "BPF_OBJ_GET_INFO_BY_FD": "info.",
    "BPF_PROG_QUERY": "query.",
    "BPF_LINK_CREATE": "link_create.",
    "BPF_LINK_UPDATE": "link_update.",
    "BPF_LINK_DETACH": "link_detach.",
}
# uapi's generic name -> the header's, per command.
ALIASES = {
    ("BPF_PROG_GET_FD_BY_ID", "id"): "prog_id",
    ("BPF_MAP_GET_FD_BY_ID", "id"): "map_id",
    ("BPF_LINK_GET_FD_BY_ID", "id"): "link_id",
}
INFO_STRUCTS = {
    "bpf_prog_info": uapi.PROG_INFO,
    "bpf_map_info": uapi.MAP_INFO,
    "bpf_link_info": uapi.LINK_INFO,
}
INFO_MEMBER = {
    ("bpf_link_info", "cgroup_id"): "cgroup.cgroup_id",
    ("bpf_link_info", "attach_type"): "cgroup.attach_type",
}


def expected_layout():
    """{(C type, C member): (offset, size)} as uapi has them typed."""
    layout = {}
    for command, (_number, fields) in uapi.COMMANDS.items():
        for field, (offset, fmt) in fields.items():
            member = ATTR_MEMBER.get(command, "") + ALIASES.get((command, field), field)
            layout[("union bpf_attr", member)] = (offset, struct.calcsize("=" + fmt))
    for name, (_size, fields) in INFO_STRUCTS.items():
        for field, (offset, fmt) in fields.items():
            member = INFO_MEMBER.get((name, field), field)
            layout[("struct " + name, member)] = (offset, struct.calcsize("=" + fmt))
    return layout


def header_layout(layout, workdir):
    """{(C type, C member): (offset, size)} from the header, plus sizeof of each type."""
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <linux/bpf.h>", "int main(void) {"]
    for c_type, member in sorted(layout):
        lines.append(
            '    printf("%s|%s %%zu %%zu\\n", offsetof(%s, %s), sizeof(((%s *)0)->%s));'
            % (c_type, member, c_type, member, c_type, member)
        )
    for c_type in sorted({c_type for c_type, _member in layout}):
        lines.append('    printf("%s|sizeof %%zu 0\\n", sizeof(%s));' % (c_type, c_type))
    lines += ["    return 0;", "}"]
    source = os.path.join(workdir, "layout.c")
    binary = os.path.join(workdir, "layout")
    with open(source, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    compiled = subprocess.run(
        ["clang", "-Wall", "-Werror", source, "-o", binary],
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert compiled.returncode == 0, "a field of uapi is not in <linux/bpf.h> by that name:\n%s" % (
        compiled.stdout.decode()
    )
    found = {}
    for line in subprocess.run([binary], check=True, stdout=subprocess.PIPE).stdout.decode().splitlines():
        key, offset, size = line.rsplit(" ", 2)
        c_type, member = key.split("|")
        found[(c_type, member)] = (int(offset), int(size))
    return found


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    assert shutil.which("clang"), "clang compiles the layout table (scripts/setup-env installs it)"
    expected = expected_layout()
    return expected, header_layout(expected, str(tmp_path_factory.mktemp("uapi")))


def test_every_field_sits_where_the_header_puts_it(layouts):
    expected, found = layouts
    wrong = {key: (typed, found[key]) for key, typed in expected.items() if typed != found[key]}
    assert wrong == {}, "uapi (offset, size) vs <linux/bpf.h>: %r" % wrong


def test_buffers_hold_the_whole_structs(layouts):
    _expected, found = layouts
    assert found[("union bpf_attr", "sizeof")][0] <= uapi.ATTR_SIZE
    for name, (size, _fields) in INFO_STRUCTS.items():
        assert found[("struct " + name, "sizeof")][0] <= size, name
