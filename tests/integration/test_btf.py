"""The object's BTF on this kernel, through the module: loaded where the kernel takes it (typed map
dumps and source lines in bpftool), and every refusal falls back to loading without it: the BTF as
a whole (as a kernel older than the BTF kinds the object uses refuses it), the program's func_info,
a map's key type. Objects with legacy maps (as earlier releases shipped) still load. The kernel is
read with bpftool, which shares no code with the collection."""

import os
import struct

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_object, bpf_syscall, rto_program
from ansible_collections.netbpf.tcp_rto.tests.support import bpf_inventory, bpf_objects
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import bpftool
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz
from ansible_collections.netbpf.tcp_rto.tests.support.paths import SHIPPED_OBJECT
from ansible_collections.netbpf.tcp_rto.tests.support.rto_probe import observed_rto_us

pytestmark = pytest.mark.kernel

HZ = kernel_hz()
RULE_MS, DEFAULT_MS = 200, 500
BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_TYPEDEF, BTF_KIND_FUNC = 1, 2, 3, 4, 8, 12


def jiffies(ms):
    return -(-ms * HZ // 1000)


@pytest.fixture
def apply(playbook, cgroup, bpffs):
    """apply(src=None) runs the module for one instance -> {"prog": pin, map name: pin}."""

    def run(src=None):
        args = dict(
            name="btf",
            cgroup=cgroup,
            pin_dir=os.path.join(bpffs, "tcp_rto"),
            mount_bpffs=False,
            rules=[{"dest": "127.0.0.0/8", "rto_ms": RULE_MS}],
            rto_ms=DEFAULT_MS,
        )
        if src is not None:
            args["src"] = src
        result = playbook.module(**args)
        assert not result.get("failed") and result.get("verification", {}).get("ok"), result["_output"]
        assert observed_rto_us(cgroup) == jiffies(RULE_MS) * 1000000 // HZ
        instance_dir = os.path.join(bpffs, "tcp_rto", "btf")
        pins = {name: os.path.join(instance_dir, name) for name in rto_program.MAP_CONTRACT}
        pins["prog"] = os.path.join(instance_dir, "prog")
        return pins

    return run


def btf_ids(pins):
    """{"prog": its btf_id, map name: its btf_id} as bpftool shows them (0: loaded without BTF)."""
    ids = {"prog": bpftool("prog", "show", "pinned", pins["prog"]).get("btf_id", 0)}
    for name in rto_program.MAP_CONTRACT:
        ids[name] = bpftool("map", "show", "pinned", pins[name]).get("btf_id", 0)
    return ids


def patched_shipped(tmp_path, name, *edits):
    """A copy of the shipped object with edits: each (offset_of(data), struct format, value)."""
    with open(SHIPPED_OBJECT, "rb") as handle:
        data = bytearray(handle.read())
    for offset_of, fmt, value in edits:
        struct.pack_into(fmt, data, offset_of(bytes(data)), value)
    path = str(tmp_path / (name + ".bpf.o"))
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def kernel_takes_btf(path):
    obj = bpf_object.BpfObject.from_file(path)
    try:
        os.close(bpf_syscall.btf_load(obj.btf.data))
    except bpf_syscall.BpfError:
        return False
    return True


def test_shipped_object_loads_with_btf(apply):
    pins = apply()
    ids = btf_ids(pins)
    assert all(ids.values()), ids
    config = bpftool("map", "dump", "pinned", pins["config"])
    assert config[0]["formatted"] == {
        "key": 0,
        "value": bpf_inventory.config_as_bpftool_shows(
            default_rto_jiffies=jiffies(DEFAULT_MS), directions=rto_program.DIRECTION_OUTGOING | 2
        ),
    }
    (rule,) = bpftool("map", "dump", "pinned", pins["rules"])
    assert rule["formatted"]["key"]["prefixlen"] == 96 + 8  # 127.0.0.0/8 as ::ffff:127.0.0.0/104
    assert rule["formatted"]["value"] == {"rto_jiffies": jiffies(RULE_MS), "hit_slot": 0, "syn_retries": 0, "flags": 0}
    xlated = bpftool("prog", "dump", "xlated", "pinned", pins["prog"])
    sources = [line.get("src") for insn in xlated for line in [insn] if "src" in insn]
    assert "rule = bpf_map_lookup_elem(&rules, &key);" in [text.strip() for text in sources]


def test_legacy_maps_object_still_loads(apply, tmp_path):
    """The object earlier releases shipped: legacy maps, no BTF at all."""
    ids = btf_ids(apply(src=bpf_objects.build_legacy(tmp_path)))
    assert not any(ids.values()), ids


def test_btf_refused_by_the_kernel_loads_without(apply, tmp_path):
    """A FUNC with a linkage the kernel does not know (as kernels before 5.6 refuse a global one):
    BPF_BTF_LOAD fails with EINVAL, and the program and maps load without BTF."""

    def func_info_word(data):
        return bpf_objects.btf_type(data, BTF_KIND_FUNC, rto_program.PROGRAM_NAME)[1] + 4

    src = patched_shipped(tmp_path, "badfunc", (func_info_word, "<I", BTF_KIND_FUNC << 24 | 7))
    assert not kernel_takes_btf(src)
    ids = btf_ids(apply(src=src))
    assert not any(ids.values()), ids


def test_func_info_refused_loads_the_program_without_btf(apply, tmp_path):
    """The kernel takes the BTF and the maps' types but not func_info naming a struct: the maps
    keep their BTF, the program loads without."""

    def func_info_type(data):
        return bpf_objects.btf_ext_block(data, 0) + 12 + 4

    struct_id = bpf_objects.btf_type(open(SHIPPED_OBJECT, "rb").read(), BTF_KIND_STRUCT, "rule_key")[0]
    src = patched_shipped(tmp_path, "badfuncinfo", (func_info_type, "<I", struct_id))
    assert kernel_takes_btf(src)
    ids = btf_ids(apply(src=src))
    assert ids.pop("prog") == 0 and all(ids.values()), ids


def test_map_types_refused_create_those_maps_without_btf(apply, tmp_path):
    """A 4-byte key that is an array, not an integer: the kernel refuses it for array maps
    (config, hits), which are made without BTF; the trie keeps its BTF, the program too."""
    with open(SHIPPED_OBJECT, "rb") as handle:
        shipped = handle.read()
    _start, types, _strings = bpf_objects.btf_types(shipped)
    u32 = bpf_objects.btf_type(shipped, BTF_KIND_TYPEDEF, "__u32")[0]
    key_pointers = [
        at for at, kind, _vlen, _name in types.values() if kind == BTF_KIND_PTR and _target(shipped, at) == u32
    ]
    four_byte_array = [
        type_id
        for type_id, (at, kind, _vlen, _name) in types.items()
        if kind == BTF_KIND_ARRAY
        and struct.unpack_from("<I", shipped, at + 12 + 8)[0] == 1
        and types[struct.unpack_from("<I", shipped, at + 12)[0]][1] == BTF_KIND_INT
    ]
    assert len(key_pointers) == 1 and four_byte_array  # config's and hits' key: one __u32 *
    src = patched_shipped(tmp_path, "arraykey", (lambda _data: key_pointers[0] + 8, "<I", four_byte_array[0]))
    assert kernel_takes_btf(src)
    ids = btf_ids(apply(src=src))
    assert ids["config"] == 0 and ids["hits"] == 0 and ids["rules"] and ids["prog"], ids


def _target(data, at):
    return struct.unpack_from("<I", data, at + 8)[0]
