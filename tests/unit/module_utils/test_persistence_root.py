"""persistence.py under a temporary root, in this process: what install writes and what it reports,
the record read back and refused when edited, remove, check mode, and the refusal of symlinks and
files writable by others. No systemd is called under a test root (Systemd is a no-op there). The
boot unit running the restore is tests/integration/test_persistence.py's job."""

import hashlib
import json
import os
import sys

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import persistence

OBJECT = b"\x7fELF stand-in: persistence copies the object without reading it"
SHA256 = hashlib.sha256(OBJECT).hexdigest()


def params(name="web", **given):
    values = dict(
        name=name,
        cgroup="/sys/fs/cgroup/unified/tcp_rto_test",
        rules=[{"dest": "10.0.0.0/8", "rto_ms": 200}],
        rto_ms=None,
        direction="both",
        pin_dir="/sys/fs/bpf/tcp_rto",
        mount_bpffs=True,
        hz=None,
        verify=True,
        force_legacy_attach=False,
        unit=None,
    )
    values.update(given)
    return values


@pytest.fixture
def root(tmp_path):
    path = os.path.realpath(str(tmp_path / "root"))
    os.mkdir(path)
    return path


@pytest.fixture
def layout(root):
    return persistence.Layout(root)


@pytest.fixture
def object_path(tmp_path):
    path = str(tmp_path / "tcp_initial_rto.bpf.o")
    with open(path, "wb") as handle:
        handle.write(OBJECT)
    return path


def install(root, object_path, check_mode=False, **given):
    return persistence.install(
        params(**given), object_path, SHA256, root=root, python=sys.executable, check_mode=check_mode
    )


def files_under(root):
    return sorted(
        os.path.relpath(os.path.join(directory, name), root)
        for directory, dirs, names in os.walk(root)
        for name in names + [d for d in dirs if os.path.islink(os.path.join(directory, d))]
    )


def test_install_writes_the_record_object_code_and_unit(root, layout, object_path):
    changes = install(root, object_path)
    assert changes == [
        "copy object to %s" % layout.object("web"),
        "copy restore code to %s" % layout.lib_dir,
        "install %s" % layout.unit,
        "record %s" % layout.record("web"),
        "enable tcp-rto@web.service",
    ]
    with open(layout.object("web"), "rb") as handle:
        assert handle.read() == OBJECT
    for module in persistence.CODE_FILES:
        assert os.path.isfile(os.path.join(layout.code_dir, module + ".py")), module
    with open(layout.unit) as handle:
        unit = handle.read()
    assert "ExecStart=%s -I %s %%i\n" % (sys.executable, layout.script) in unit
    assert os.readlink(layout.wants_link("web")) == os.path.join("..", persistence.UNIT_TEMPLATE)
    for path in (layout.record("web"), layout.object("web"), layout.unit, layout.script):
        assert os.stat(path).st_mode & 0o7777 == 0o644, path


def test_the_record_reads_back_as_the_parameters(root, layout, object_path):
    install(root, object_path)
    assert persistence.read_record("web", root=root) == dict(params(), src=layout.object("web"))
    assert persistence.recorded("web", root=root) and not persistence.recorded("other", root=root)
    assert layout.recorded_names() == ["web"]


def test_installing_again_changes_nothing(root, object_path):
    install(root, object_path)
    assert install(root, object_path) == []


def test_a_changed_rule_rewrites_only_the_record(root, layout, object_path):
    install(root, object_path)
    assert install(root, object_path, rules=[{"dest": "10.0.0.0/8", "rto_ms": 300}]) == [
        "record %s" % layout.record("web")
    ]
    assert persistence.read_record("web", root=root)["rules"] == [{"dest": "10.0.0.0/8", "rto_ms": 300}]


def test_check_mode_reports_the_changes_and_writes_nothing(root, object_path):
    changes = install(root, object_path, check_mode=True)
    assert len(changes) == 5
    assert files_under(root) == []


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda record: record.update(rto_ms="fast"), 'rto_ms is "fast", expected an integer or null'),
        (lambda record: record.pop("pin_dir"), "missing pin_dir"),
        (lambda record: record.update(extra=1), "unknown key(s) extra"),
        (lambda record: record.update(name="db"), "it names the instance 'db'"),
        (lambda record: record.update(src="/tmp/evil.o"), "src is /tmp/evil.o, not the collection's copy"),
        (lambda record: record.update(format=2), "format is not 1"),
    ],
)
def test_an_edited_record_is_refused_with_what_is_wrong(root, layout, object_path, edit, reason):
    install(root, object_path)
    with open(layout.record("web")) as handle:
        record = json.load(handle)
    edit(record)
    with open(layout.record("web"), "w") as handle:
        json.dump(record, handle)
    with pytest.raises(persistence.RecordError) as raised:
        persistence.read_record("web", root=root)
    assert reason in str(raised.value)
    assert "apply the instance again with Ansible to rewrite it" in str(raised.value)


def test_a_record_of_an_earlier_version_without_unit_reads_as_none(root, layout, object_path):
    install(root, object_path)
    with open(layout.record("web")) as handle:
        record = json.load(handle)
    del record["unit"]
    with open(layout.record("web"), "w") as handle:
        json.dump(record, handle)
    assert persistence.read_record("web", root=root)["unit"] is None


def test_a_replaced_object_is_refused(root, layout, object_path):
    install(root, object_path)
    with open(layout.object("web"), "wb") as handle:
        handle.write(b"another program")
    with pytest.raises(persistence.RecordError, match="is another file, not the one the record"):
        persistence.read_record("web", root=root)


def test_no_record_says_how_to_make_one(root):
    with pytest.raises(persistence.RecordError, match="apply it with persistent: true, or disable tcp-rto@web"):
        persistence.read_record("web", root=root)


def test_a_symlinked_record_directory_is_refused_before_anything_is_written(root, layout, object_path, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.makedirs(os.path.dirname(layout.record_dir))
    os.symlink(str(elsewhere), layout.record_dir)
    with pytest.raises(persistence.UnsafePath, match="is a symlink"):
        persistence.check_paths("web", root=root)
    with pytest.raises(persistence.UnsafePath, match="is a symlink"):
        install(root, object_path)
    assert list(elsewhere.iterdir()) == []


def test_a_directory_others_can_write_is_refused(root, layout, object_path):
    install(root, object_path)
    os.chmod(layout.lib_dir, 0o777)
    with pytest.raises(persistence.UnsafePath, match=r"mode 0777\) could be changed by another user"):
        install(root, object_path, rules=[])


def test_a_unit_to_follow_installs_a_dropin_instead_of_enabling(root, layout, object_path):
    install(root, object_path)
    changes = install(root, object_path, unit="api.service")
    assert "disable tcp-rto@web.service" in changes
    assert not os.path.lexists(layout.wants_link("web"))
    assert layout.dropins("web") == [layout.dropin("api.service", "web")]
    assert persistence.recorded_unit("web", root=root) == "api.service"
    install(root, object_path, unit="db.service")  # the instance moved: the old drop-in goes
    assert layout.dropins("web") == [layout.dropin("db.service", "web")]


def test_remove_keeps_the_shared_files_while_another_instance_has_a_record(root, layout, object_path):
    install(root, object_path)
    install(root, object_path, name="db")
    changes = persistence.remove("web", root=root)
    assert changes == [
        "remove %s" % layout.wants_link("web"),
        "remove %s" % layout.record("web"),
        "remove %s" % layout.object("web"),
    ]
    assert os.path.exists(layout.unit) and os.path.exists(layout.script)
    assert persistence.read_record("db", root=root)["name"] == "db"


def test_removing_the_last_instance_leaves_nothing(root, layout, object_path):
    install(root, object_path)
    assert persistence.remove("web", root=root, check_mode=True)
    assert persistence.read_record("web", root=root)  # check mode removed nothing
    persistence.remove("web", root=root)
    assert files_under(root) == []
    assert persistence.remove("web", root=root) == []
