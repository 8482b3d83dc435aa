"""The controller side of tcp_initial_rto (plugins/action/tcp_initial_rto.py) with stand-ins for the
connection and the module run: which object goes to the host, what the module is called with, and
the failures the controller reports itself. No ansible-playbook, no host."""

import base64
import os
import types

import pytest
from ansible.errors import AnsibleError

from ansible_collections.netbpf.tcp_rto.plugins.action import tcp_initial_rto
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program
from ansible_collections.netbpf.tcp_rto.plugins.plugin_utils import bpf_build

REMOTE_TMP = "/home/ops/.ansible/tmp/ansible-tmp-1"
REMOTE_OBJECT = REMOTE_TMP + "/" + bpf_build.OBJECT_NAME
MODULE_RESULT = {"changed": True, "instance": {"name": "web"}}


class Shell:
    tmpdir = REMOTE_TMP

    @staticmethod
    def join_path(*parts):
        return "/".join(parts)


class Recorder:
    """The ActionBase calls the plugin makes, recorded; files found under files_dir."""

    def __init__(self, files_dir):
        self.files_dir = files_dir
        self.transferred, self.executed, self.removed = [], [], []

    def find_needle(self, dirname, needle):
        path = needle if os.path.isabs(needle) else os.path.join(self.files_dir, needle)
        if not os.path.exists(path):
            raise AnsibleError("not found: %s" % needle)
        return path

    def execute_module(self, module_name, module_args, task_vars):
        self.executed.append((module_name, dict(module_args)))
        return dict(MODULE_RESULT)


@pytest.fixture
def files_dir(tmp_path):
    path = tmp_path / "files"
    path.mkdir()
    (path / "custom.bpf.o").write_bytes(b"\x7fELF")
    (path / "custom.bpf.c").write_text("int x;\n")
    return str(path)


@pytest.fixture
def workdirs(tmp_path, monkeypatch):
    """The controller's temporary directories of each run, to check they are removed."""
    made = []

    def mkdtemp(prefix):
        made.append(str(tmp_path / ("%s%d" % (prefix, len(made)))))
        os.mkdir(made[-1])
        return made[-1]

    monkeypatch.setattr(tcp_initial_rto.tempfile, "mkdtemp", mkdtemp)
    return made


def run_action(files_dir, **args):
    """-> (result, recorder) of the action plugin on a task with args."""
    recorder = Recorder(files_dir)
    task = types.SimpleNamespace(args=args, async_val=0, check_mode=False, action="netbpf.tcp_rto.tcp_initial_rto")
    connection = types.SimpleNamespace(_shell=Shell())
    action = tcp_initial_rto.ActionModule(task, connection, None, None, None, None)
    action._find_needle = recorder.find_needle
    action._transfer_file = lambda local, remote: recorder.transferred.append((local, remote))
    action._fixup_perms2 = lambda paths: None
    action._execute_module = recorder.execute_module
    action._remove_tmp_path = recorder.removed.append
    return action.run(task_vars={}), recorder


def test_the_shipped_object_by_default(files_dir, workdirs):
    result, recorder = run_action(files_dir, name="web", rules=[{"dest": "10.0.0.0/8", "rto_ms": 200}])
    with open(bpf_build.SHIPPED_OBJECT, "rb") as handle:
        shipped = base64.b64encode(handle.read()).decode("ascii")
    # the object travels in the module's arguments: no file transfer, no extra round trip
    assert recorder.transferred == []
    assert recorder.executed == [
        (
            "netbpf.tcp_rto.tcp_initial_rto",
            dict(name="web", rules=[{"dest": "10.0.0.0/8", "rto_ms": 200}], src_object_base64=shipped),
        )
    ]
    assert result == MODULE_RESULT
    assert recorder.removed == [REMOTE_TMP]
    assert not any(os.path.exists(path) for path in workdirs)


def test_an_object_from_the_files_directory(files_dir, workdirs):
    _result, recorder = run_action(files_dir, name="web", src="custom.bpf.o")
    assert recorder.transferred == []
    assert base64.b64decode(recorder.executed[0][1]["src_object_base64"]) == b"\x7fELF"
    assert "src" not in recorder.executed[0][1]


def test_a_missing_src_fails_on_the_controller(files_dir, workdirs):
    result, recorder = run_action(files_dir, name="web", src="nowhere.bpf.o")
    assert result["failed"] is True
    assert result["msg"].startswith("src nowhere.bpf.o not found on the controller: give an absolute path")
    assert recorder.transferred == [] and recorder.executed == []
    assert recorder.removed == [REMOTE_TMP]


def test_c_source_is_compiled_with_the_shipped_object_s_command(files_dir, workdirs, monkeypatch):
    compiled = []

    def compile_object(source, output):
        compiled.append((source, output))
        with open(output, "wb") as handle:
            handle.write(b"\x7fELF compiled")
        return 0, ""

    monkeypatch.setattr(tcp_initial_rto, "compile_object", compile_object)
    monkeypatch.setattr(tcp_initial_rto.shutil, "which", lambda name: "/usr/bin/" + name)
    _result, recorder = run_action(files_dir, name="web", src="custom.bpf.c")
    [(source, output)] = compiled
    assert source == os.path.join(files_dir, "custom.bpf.c")
    assert output == os.path.join(workdirs[0], bpf_build.OBJECT_NAME)
    assert base64.b64decode(recorder.executed[0][1]["src_object_base64"]) == b"\x7fELF compiled"
    assert not os.path.exists(workdirs[0])


def test_a_failed_compile_shows_the_compiler_output(files_dir, workdirs, monkeypatch):
    monkeypatch.setattr(tcp_initial_rto, "compile_object", lambda source, output: (1, b"custom.bpf.c:1: error: x"))
    monkeypatch.setattr(tcp_initial_rto.shutil, "which", lambda name: "/usr/bin/" + name)
    result, recorder = run_action(files_dir, name="web", src="custom.bpf.c")
    assert result["failed"] is True
    assert result["msg"] == "compiling %s failed:\ncustom.bpf.c:1: error: x" % os.path.join(files_dir, "custom.bpf.c")
    assert recorder.executed == []


def test_c_source_without_clang_says_what_to_install(files_dir, workdirs, monkeypatch):
    monkeypatch.setattr(tcp_initial_rto.shutil, "which", lambda name: None)
    result, _recorder = run_action(files_dir, name="web", src="custom.bpf.c")
    assert result["failed"] is True
    assert "needs clang on the controller" in result["msg"] and "apt-get install clang" in result["msg"]


def test_absent_sends_no_object(files_dir, workdirs):
    result, recorder = run_action(files_dir, name="web", state="absent", src="nowhere.bpf.o")
    assert recorder.transferred == []
    assert recorder.executed == [
        ("netbpf.tcp_rto.tcp_initial_rto", dict(name="web", state="absent", src="nowhere.bpf.o"))
    ]
    assert result == MODULE_RESULT


def test_too_many_rules_fail_before_anything_is_sent(files_dir, workdirs):
    rules = [{"dest": "10.%d.%d.0/24" % divmod(i, 256), "rto_ms": 200} for i in range(rto_program.MAX_RULES + 1)]
    result, recorder = run_action(files_dir, name="web", rules=rules)
    assert result["failed"] is True and result["msg"] == rto_program.too_many_rules(rto_program.MAX_RULES + 1)
    assert recorder.transferred == [] and recorder.executed == [] and workdirs == []


def test_instance_is_spread_out_and_options_given_on_their_own_win(files_dir, workdirs):
    instance = dict(
        name="ignored", rules=[{"dest": "10.0.0.0/8", "rto_ms": 200}], unit=None, src="custom.bpf.o", verify=True
    )
    _result, recorder = run_action(files_dir, name="web", verify=False, instance=instance)
    [(_module, args)] = recorder.executed
    # null counts as left out (the module's default holds), the object of instance's src is sent
    assert "unit" not in args and "instance" not in args and "src" not in args
    assert (args["name"], args["verify"], args["rules"]) == ("web", False, instance["rules"])
    assert base64.b64decode(args["src_object_base64"]) == b"\x7fELF"


def test_instance_state_absent_sends_no_object(files_dir, workdirs):
    _result, recorder = run_action(files_dir, name="web", instance=dict(state="absent"))
    assert recorder.executed == [("netbpf.tcp_rto.tcp_initial_rto", dict(name="web", state="absent"))]


@pytest.mark.parametrize(
    "instance, message",
    [
        (
            "name=web",
            "instance must be a mapping of this module's options (name, cgroup, rules, ...), not str: 'name=web'",
        ),
        (dict(instance=dict(name="web")), "instance cannot hold instance; give the options of the instance itself"),
        (
            dict(src_object_base64="AA=="),
            "instance cannot hold src_object_base64; give the options of the instance itself",
        ),
    ],
)
def test_a_bad_instance_fails_on_the_controller(files_dir, workdirs, instance, message):
    result, recorder = run_action(files_dir, name="web", instance=instance)
    assert result["failed"] is True and result["msg"] == message
    assert recorder.executed == [] and workdirs == []


def test_too_many_rules_in_instance_fail_before_anything_is_sent(files_dir, workdirs):
    rules = [{"dest": "10.%d.%d.0/24" % divmod(i, 256), "rto_ms": 200} for i in range(rto_program.MAX_RULES + 1)]
    result, recorder = run_action(files_dir, name="web", instance=dict(rules=rules))
    assert result["failed"] is True and result["msg"] == rto_program.too_many_rules(rto_program.MAX_RULES + 1)
    assert recorder.executed == []
