"""persistence.py's files under a test root, in this process: what install writes and reports, the
record read back and refused when edited, remove, check mode, the refusal of symlinks and of files
others can write (no systemd is called under a test root); every file is synced before it is
renamed into place and its directory after, and the persistence lock keeps the last instance's
remove from taking the shared files while another instance installs (deterministic interleavings
at fault points, one run in a thread); the metrics timer persistence installs beside the boot
unit (its units checked with systemd-analyze verify where it exists, its script run as the service
runs it). tests/integration/test_persistence.py runs them with the module and a real unit."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bytecode,
    fault,
    host_paths,
    lock,
    metrics_timer,
    persistence,
    record,
    safe_files,
)

OBJECT = b"\x7fELF stand-in: persistence copies the object without reading it"


def params(name="web", **given):
    values = dict(
        name=name,
        cgroup="/sys/fs/cgroup/unified/tcp_rto_test",
        rules=[{"dest": "10.0.0.0/8", "rto_ms": 200}],
        rto_ms=None,
        syn_give_up_s=None,
        direction="both",
        pin_dir="/sys/fs/bpf/tcp_rto",
        mount_bpffs=True,
        hz=None,
        verify=True,
        unit=None,
        **dict.fromkeys(record.AUTO_KEYS),  # the module passes the auto_ options, None when not given
    )
    values.update(given)
    return values


@pytest.fixture
def root(tmp_path):
    path = os.path.realpath(str(tmp_path / "root"))
    os.mkdir(path)
    yield path
    assert not os.path.exists(lock.persistence_lock_path(path))  # released with its file


@pytest.fixture
def object_path(tmp_path):
    path = str(tmp_path / "tcp_initial_rto.bpf.o")
    with open(path, "wb") as handle:
        handle.write(OBJECT)
    return path


SHA256 = hashlib.sha256(OBJECT).hexdigest()


def install_with(root, object_path, check_mode=False, **given):
    return persistence.install(
        params(**given), object_path, SHA256, root=root, python=sys.executable, check_mode=check_mode
    )


def install(name, root, object_path):
    return install_with(root, object_path, name=name)


def shared_files(layout):
    code = [os.path.join(layout.code_dir, module + ".py") for module in persistence.CODE_FILES]
    compiled = [bytecode.cached(layout.code_dir, module) for module in persistence.CODE_FILES]
    return [*code, *compiled, layout.script, layout.unit]


def assert_installed_alone(name, root):
    """name's record reads back (its object matches), every shared file is there, nothing else is recorded."""
    layout = host_paths.Layout(root)
    assert layout.recorded_names() == [name]
    assert persistence.read_record(name, root)["name"] == name
    assert [path for path in shared_files(layout) if not os.path.isfile(path)] == []
    assert os.path.islink(layout.wants_link(name))


# ---------------------------------------------------------------- fsync before rename


def test_files_are_synced_before_rename_and_their_directory_after(root, object_path, monkeypatch):
    """Except the compiled code, a cache: a damaged file is compiled again."""
    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink("/proc/self/fd/%d" % fd)))
        real_fsync(fd)

    def rename(source, destination, *args, **kwargs):
        events.append(("rename", source, destination))
        real_rename(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    install("dc", root, object_path)

    layout = host_paths.Layout(root)
    renames = [(index, event) for index, event in enumerate(events) if event[0] == "rename"]
    assert sorted(event[2] for _index, event in renames) == sorted(
        [*shared_files(layout), layout.record("dc"), layout.object("dc")]
    )
    compiled = set(compiled_files(layout))
    for index, (_rename, source, destination) in renames:
        synced = ("fsync", source) in events[:index]
        assert synced == (destination not in compiled), destination
        if destination not in compiled:
            assert ("fsync", os.path.dirname(destination)) in events[index + 1 :], destination


# ---------------------------------------------------------------- install and remove at once


def interleave(monkeypatch, at_point, first, second):
    """Run first(); when it reaches the fault point at_point, run second() in a thread, and let
    first go on once second has finished or is waiting for a lock. -> second's result."""
    waiting = threading.Event()
    outcome = {}
    real_try_lock = lock.FileLock._try_lock

    def try_lock(self):
        fd = real_try_lock(self)
        if fd is None:
            waiting.set()
        return fd

    def run_second():
        try:
            outcome["result"] = second()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc
        finally:
            waiting.set()

    threads = []
    real_point = fault.point

    def point(name):
        real_point(name)
        if name == at_point and not threads:
            threads.append(threading.Thread(target=run_second))
            threads[0].start()
            assert waiting.wait(60), "the second run neither finished nor waited for a lock"

    monkeypatch.setattr(lock.FileLock, "_try_lock", try_lock)
    monkeypatch.setattr(fault, "point", point)
    first()
    assert threads, "first never reached %s" % at_point
    threads[0].join(120)
    assert not threads[0].is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_remove_of_the_last_instance_keeps_what_an_install_copied(root, object_path, monkeypatch):
    """A's install has copied the shared code but not yet written its record when B, the only
    recorded instance, is removed: B's remove waits, then sees A's record and keeps the shared files."""
    install("b", root, object_path)
    removed = interleave(
        monkeypatch,
        "persist_code_copied",
        lambda: install("a", root, object_path),
        lambda: persistence.remove("b", root),
    )
    assert_installed_alone("a", root)
    assert "remove %s" % host_paths.Layout(root).lib_dir not in removed


def test_install_waits_for_the_last_remove(root, object_path, monkeypatch):
    """B, the only recorded instance, is being removed (its unit is gone, the code not yet) when A
    installs: A's install waits, then puts back every shared file."""
    install("b", root, object_path)
    interleave(
        monkeypatch,
        "unpersist_unit_removed",
        lambda: persistence.remove("b", root),
        lambda: install("a", root, object_path),
    )
    assert_installed_alone("a", root)


def test_persistence_lock_names():
    assert lock.persistence_lock_path("/") == "/run/tcp_rto/persistence.lock"
    assert lock.persistence_lock_path("//") == "/run/tcp_rto/persistence.lock"
    assert lock.persistence_lock_path("/tmp/root/") == lock.persistence_lock_path("/tmp/root")
    assert lock.persistence_lock_path("/tmp/root").startswith("/run/tcp_rto/persistence@")


# ---------------------------------------------------------------- what install writes, read back and refused


@pytest.fixture
def layout(root):
    return host_paths.Layout(root)


def files_under(root):
    return sorted(
        os.path.relpath(os.path.join(directory, name), root)
        for directory, dirs, names in os.walk(root)
        for name in names + [d for d in dirs if os.path.islink(os.path.join(directory, d))]
    )


def test_install_writes_the_record_object_code_and_unit(root, layout, object_path):
    changes = install_with(root, object_path)
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
    assert os.readlink(layout.wants_link("web")) == os.path.join("..", host_paths.UNIT_TEMPLATE)
    for path in (layout.record("web"), layout.object("web"), layout.unit, layout.script):
        assert os.stat(path).st_mode & 0o7777 == 0o644, path


def compiled_files(layout):
    """{path: (inode, mtime)} of the compiled code beside the copies."""
    paths = (bytecode.cached(layout.code_dir, module) for module in persistence.CODE_FILES)
    return {path: (os.stat(path).st_ino, os.stat(path).st_mtime_ns) for path in paths}


def test_the_copied_code_is_compiled_beside_it_once_and_not_as_a_change(root, layout, object_path):
    install_with(root, object_path)
    for module in persistence.CODE_FILES:
        path = bytecode.cached(layout.code_dir, module)
        with open(path, "rb") as handle:
            compiled = handle.read()
        with open(os.path.join(layout.code_dir, module + ".py"), "rb") as handle:
            assert bytecode.compiled_from(compiled, handle.read()), module
        assert os.stat(path).st_mode & 0o7777 == 0o644, path
    written = compiled_files(layout)
    assert install_with(root, object_path) == []
    assert compiled_files(layout) == written  # not rewritten
    os.remove(next(iter(written)))
    assert install_with(root, object_path) == []  # a cache written again, not a change of the host
    assert sorted(compiled_files(layout)) == sorted(written)


def test_the_restore_takes_the_compiled_code(root, layout, object_path):
    """Python's own import of the copies (the boot-time restore, the metrics timer) checks the
    compiled code's source hash and runs it."""
    install_with(root, object_path)
    module = "rto_program"
    source_path = os.path.join(layout.code_dir, module + ".py")
    with open(source_path, "rb") as handle:
        source = handle.read()
    # the code of another source under this source's hash: what runs tells which was taken
    stand_in = bytecode.compiled(b"TAKEN_FROM = 'compiled'\n", source_path)
    with open(bytecode.cached(layout.code_dir, module), "wb") as handle:
        handle.write(bytecode.compiled(source, source_path)[:16] + stand_in[16:])
    script = "import sys; sys.path.insert(0, %r); from %s import %s as m; print(getattr(m, 'TAKEN_FROM', 'source'))" % (
        os.path.join(layout.lib_dir, "lib"),
        host_paths.MODULE_UTILS,
        module,
    )
    taken = subprocess.run([sys.executable, "-I", "-c", script], stdout=subprocess.PIPE, check=True)
    assert taken.stdout == b"compiled\n"


def test_the_record_reads_back_as_the_parameters(root, layout, object_path):
    install_with(root, object_path)
    assert persistence.read_record("web", root=root) == dict(params(), src=layout.object("web"))
    assert persistence.recorded("web", root=root) and not persistence.recorded("other", root=root)
    assert layout.recorded_names() == ["web"]


def test_installing_again_changes_nothing(root, object_path):
    install_with(root, object_path)
    assert install_with(root, object_path) == []


def test_a_changed_rule_rewrites_only_the_record(root, layout, object_path):
    install_with(root, object_path)
    assert install_with(root, object_path, rules=[{"dest": "10.0.0.0/8", "rto_ms": 300}]) == [
        "record %s" % layout.record("web")
    ]
    assert persistence.read_record("web", root=root)["rules"] == [{"dest": "10.0.0.0/8", "rto_ms": 300}]


def test_check_mode_reports_the_changes_and_writes_nothing(root, object_path):
    changes = install_with(root, object_path, check_mode=True)
    assert len(changes) == 5
    assert files_under(root) == []


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda record: record.update(rto_ms="fast"), 'rto_ms is "fast", expected an integer, auto or null'),
        (lambda record: record.pop("pin_dir"), "missing pin_dir"),
        (lambda record: record.update(extra=1), "unknown key(s) extra"),
        (lambda record: record.update(name="db"), "it names the instance 'db'"),
        (lambda record: record.update(src="/tmp/evil.o"), "src is /tmp/evil.o, not the collection's copy"),
        (lambda record: record.update(format=2), "format is not 1"),
        (lambda record: record["rules"][0].update(syn_give_up_s="2"), "rules is"),
    ],
)
def test_an_edited_record_is_refused_with_what_is_wrong(root, layout, object_path, edit, reason):
    install_with(root, object_path)
    with open(layout.record("web")) as handle:
        content = json.load(handle)
    edit(content)
    with open(layout.record("web"), "w") as handle:
        json.dump(content, handle)
    with pytest.raises(record.RecordError) as raised:
        persistence.read_record("web", root=root)
    assert reason in str(raised.value)
    assert "apply the instance again with Ansible to rewrite it" in str(raised.value)


@pytest.mark.parametrize("key", sorted(record.ADDED_KEYS))
def test_a_record_of_an_earlier_version_without_a_later_key_reads_with_its_default(root, layout, object_path, key):
    install_with(root, object_path)
    with open(layout.record("web")) as handle:
        content = json.load(handle)
    del content[key]
    with open(layout.record("web"), "w") as handle:
        json.dump(content, handle)
    assert persistence.read_record("web", root=root)[key] == record.ADDED_KEYS[key]


def test_syn_give_up_s_is_recorded_and_a_rule_without_one_as_before(root, object_path):
    """Ansible passes a rule's omitted syn_give_up_s as None: the record leaves it out, so that a
    record reads as an earlier version's did, and keeps the values given."""
    rules = [
        {"dest": "10.0.0.0/8", "rto_ms": 300, "syn_give_up_s": None},
        {"dest": "10.1.0.0/16", "rto_ms": 300, "syn_give_up_s": 2.5},
    ]
    install_with(root, object_path, rules=rules, syn_give_up_s=4)
    recorded = persistence.read_record("web", root=root)
    assert recorded["rules"] == [{"dest": "10.0.0.0/8", "rto_ms": 300}, rules[1]]
    assert recorded["syn_give_up_s"] == 4


def test_a_record_of_0_2_0_with_force_legacy_attach_reads_without_it(root, layout, object_path):
    install_with(root, object_path)
    with open(layout.record("web")) as handle:
        record = json.load(handle)
    record["force_legacy_attach"] = True  # an option until 0.2.0, a test aid; now the environment's
    with open(layout.record("web"), "w") as handle:
        json.dump(record, handle)
    assert "force_legacy_attach" not in persistence.read_record("web", root=root)
    record["force_legacy_attach"] = "yes"  # its value is never looked at
    with open(layout.record("web"), "w") as handle:
        json.dump(record, handle)
    assert persistence.read_record("web", root=root) == dict(params(), src=layout.object("web"))


def test_the_root_is_slash_unless_the_test_aid_moves_it(monkeypatch, root):
    monkeypatch.delenv(host_paths.TEST_ROOT_ENVIRONMENT, raising=False)
    assert host_paths.host_root() == "/"
    monkeypatch.setenv(host_paths.TEST_ROOT_ENVIRONMENT, root)
    assert host_paths.host_root() == root


def test_a_replaced_object_is_refused(root, layout, object_path):
    install_with(root, object_path)
    with open(layout.object("web"), "wb") as handle:
        handle.write(b"another program")
    with pytest.raises(record.RecordError, match="is another file, not the one the record"):
        persistence.read_record("web", root=root)


def test_no_record_says_how_to_make_one(root):
    with pytest.raises(record.RecordError, match="apply it with persistent: true, or disable tcp-rto@web"):
        persistence.read_record("web", root=root)


def test_a_symlinked_record_directory_is_refused_before_anything_is_written(root, layout, object_path, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.makedirs(os.path.dirname(layout.record_dir))
    os.symlink(str(elsewhere), layout.record_dir)
    with pytest.raises(safe_files.UnsafePath, match="is a symlink"):
        persistence.check_paths("web", root=root)
    with pytest.raises(safe_files.UnsafePath, match="is a symlink"):
        install_with(root, object_path)
    assert list(elsewhere.iterdir()) == []


def test_a_directory_others_can_write_is_refused(root, layout, object_path):
    install_with(root, object_path)
    os.chmod(layout.lib_dir, 0o777)
    with pytest.raises(safe_files.UnsafePath, match=r"mode 0777\) could be changed by another user"):
        install_with(root, object_path, rules=[])


def test_a_unit_to_follow_installs_a_dropin_instead_of_enabling(root, layout, object_path):
    install_with(root, object_path)
    changes = install_with(root, object_path, unit="api.service")
    assert "disable tcp-rto@web.service" in changes
    assert not os.path.lexists(layout.wants_link("web"))
    assert layout.dropins("web") == [layout.dropin("api.service", "web")]
    assert persistence.recorded_unit("web", root=root) == "api.service"
    install_with(root, object_path, unit="db.service")  # the instance moved: the old drop-in goes
    assert layout.dropins("web") == [layout.dropin("db.service", "web")]


def test_remove_keeps_the_shared_files_while_another_instance_has_a_record(root, layout, object_path):
    install_with(root, object_path)
    install_with(root, object_path, name="db")
    changes = persistence.remove("web", root=root)
    assert changes == [
        "remove %s" % layout.wants_link("web"),
        "remove %s" % layout.record("web"),
        "remove %s" % layout.object("web"),
    ]
    assert os.path.exists(layout.unit) and os.path.exists(layout.script)
    assert persistence.read_record("db", root=root)["name"] == "db"


def test_removing_the_last_instance_leaves_nothing(root, layout, object_path):
    install_with(root, object_path)
    assert persistence.remove("web", root=root, check_mode=True)
    assert persistence.read_record("web", root=root)  # check mode removed nothing
    persistence.remove("web", root=root)
    assert files_under(root) == []
    assert persistence.remove("web", root=root) == []


# ---------------------------------------------------------------- the metrics timer (metrics_textfile)


def test_a_textfile_installs_the_timer_and_its_service_runs_the_copied_code(root, layout, object_path, tmp_path):
    textfile = str(tmp_path / "tcp_rto.prom")
    changes = install_with(root, object_path, metrics_textfile=textfile, metrics_interval_s=30)
    files = metrics_timer.paths(layout)
    assert [change for change in changes if "metrics" in change] == [
        "install %s" % files["script"],
        "install %s" % files["service"],
        "install %s" % files["timer"],
        "enable tcp-rto-metrics.timer",
    ]  # no systemd under a test root: nothing started
    assert os.readlink(files["wants"]) == os.path.join("..", metrics_timer.TIMER)
    with open(files["timer"]) as handle:
        assert "OnUnitActiveSec=30s\n" in handle.read()
    with open(files["service"]) as handle:
        service = handle.read()
    command = "%s -I %s /sys/fs/bpf/tcp_rto %s" % (sys.executable, files["script"], textfile)
    assert "ExecStart=%s\n" % command in service
    # As systemd would run it: the copied code only (-I: no environment, no site-packages, no cwd).
    run = subprocess.run(
        command.replace("/sys/fs/bpf/tcp_rto", str(tmp_path / "no_pins")).split(),
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout
    with open(textfile) as handle:
        assert "# TYPE tcp_rto_handshakes_total counter\n" in handle.read()
    assert install_with(root, object_path, metrics_textfile=textfile, metrics_interval_s=30) == []
    assert install_with(root, object_path) == []  # omitted: left as it is


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze here")
def test_systemd_analyze_verify_takes_the_units(root, layout, object_path, tmp_path):
    install_with(root, object_path, metrics_textfile="/var/lib/node_exporter/tcp_rto.prom")
    files = metrics_timer.paths(layout)
    run = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", files["service"], files["timer"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        check=False,
    )
    lines = [line for line in run.stdout.splitlines() if "tcp-rto-metrics" in line]
    assert run.returncode == 0 and lines == [], run.stdout


def test_an_empty_textfile_removes_the_timer(root, layout, object_path):
    install_with(root, object_path, metrics_textfile="/run/tcp_rto.prom")
    changes = install_with(root, object_path, metrics_textfile="")
    files = metrics_timer.paths(layout)
    assert changes == ["remove %s" % files[key] for key in ("wants", "timer", "service", "script")]
    assert not any(os.path.lexists(path) for path in files.values())


def test_the_last_instances_removal_takes_the_timer(root, layout, object_path):
    install_with(root, object_path, metrics_textfile="/run/tcp_rto.prom")
    install_with(root, object_path, name="other")
    persistence.remove("other", root=root)
    assert os.path.exists(metrics_timer.paths(layout)["timer"])
    persistence.remove("web", root=root)
    assert not os.path.exists(os.path.join(root, "etc", "systemd", "system", metrics_timer.TIMER))
    assert [files for _dir, _sub, files in os.walk(root) if files] == []


@pytest.mark.parametrize("textfile", ["relative.prom", "/with space.prom", "/per%cent.prom"])
def test_a_path_systemd_cannot_take_as_one_word_is_refused(textfile):
    with pytest.raises(record.RecordError, match="metrics_textfile"):
        metrics_timer.check(textfile, "/sys/fs/bpf/tcp_rto", 60)
    with pytest.raises(record.RecordError, match="pin_dir"):
        metrics_timer.check("/run/x.prom", textfile, 60)
    with pytest.raises(record.RecordError, match="metrics_interval_s"):
        metrics_timer.check("/run/x.prom", "/sys/fs/bpf/tcp_rto", 0)
