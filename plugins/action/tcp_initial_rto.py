# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of netbpf.tcp_rto.tcp_initial_rto: choose the BPF object (the shipped one,
another .o, or a .c compiled here with clang) and run the module with it. The object (a few KiB)
travels inside the module's arguments: with pipelining the whole task is one remote command, where
a file transfer would add three (a temporary directory, the copy, its removal). The option instance,
a mapping of the module's options, is spread out here: the host never sees it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import os
import shutil
import tempfile
from collections.abc import Mapping

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.netbpf.tcp_rto.plugins.module_utils.rto_program import MAX_RULES, too_many_rules
from ansible_collections.netbpf.tcp_rto.plugins.plugin_utils.bpf_build import (
    OBJECT_NAME,
    SHIPPED_OBJECT,
    compile_object,
)


def compile_source(source, workdir):
    """Compile a .c with the same command that builds the shipped object."""
    if shutil.which("clang") is None:
        raise AnsibleActionFail(
            "src %s is C source and needs clang on the controller to compile it; install clang "
            "(Debian/Ubuntu: apt-get install clang) or give a compiled .o" % source
        )
    output = os.path.join(workdir, OBJECT_NAME)
    code, text = compile_object(source, output)
    if code != 0:
        raise AnsibleActionFail("compiling %s failed:\n%s" % (source, to_text(text)))
    return output


def expanded_args(args):
    """The task's arguments with instance spread out: its options that have a value (null counts as
    left out), then the options given on their own, which win."""
    options = {key: value for key, value in args.items() if key != "instance"}
    instance = args.get("instance")
    if instance is None:
        return options
    if not isinstance(instance, Mapping):
        raise AnsibleActionFail(
            "instance must be a mapping of this module's options (name, cgroup, rules, ...), not %s: %r"
            % (type(instance).__name__, instance)
        )
    reserved = sorted(key for key in instance if key in ("instance", "src_object_base64"))
    if reserved:
        raise AnsibleActionFail(
            "instance cannot hold %s; give the options of the instance itself" % ", ".join(reserved)
        )
    expanded = {key: value for key, value in instance.items() if value is not None}
    expanded.update(options)
    return expanded


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def _local_object(self, src, workdir):
        if src is None:
            return SHIPPED_OBJECT
        try:
            path = self._find_needle("files", src)
        except AnsibleError:
            raise AnsibleActionFail(
                "src %s not found on the controller: give an absolute path, or one relative to "
                "the playbook's or the role's files/ directory" % src
            )
        return compile_source(path, workdir) if path.endswith(".c") else path

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        try:
            module_args = expanded_args(self._task.args)
        except AnsibleActionFail as exc:
            result.update(failed=True, msg=to_text(exc))
            return result
        rules = module_args.get("rules")
        if isinstance(rules, list) and len(rules) > MAX_RULES:
            # Checked here too: validating a huge list on the host takes Ansible many seconds per 10 000 rules.
            result.update(failed=True, msg=too_many_rules(len(rules)))
            return result
        workdir = tempfile.mkdtemp(prefix="tcp_rto-")
        try:
            if module_args.get("state", "present") == "present":
                local = self._local_object(module_args.pop("src", None), workdir)
                with open(local, "rb") as handle:
                    module_args["src_object_base64"] = base64.b64encode(handle.read()).decode("ascii")
            result.update(
                self._execute_module(
                    module_name="netbpf.tcp_rto.tcp_initial_rto", module_args=module_args, task_vars=task_vars
                )
            )
        except AnsibleActionFail as exc:
            result.update(failed=True, msg=to_text(exc))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
