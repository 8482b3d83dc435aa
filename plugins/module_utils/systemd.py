# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd for persistence: systemctl on the tcp-rto@<name>.service units, and the interpreter
the boot unit runs as root (it, its link target and every directory above them root-owned and
writable by no one else).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat
import subprocess
import sys

from ansible_collections.netbpf.tcp_rto.plugins.module_utils.record import RecordError

UNIT_INSTANCE = "tcp-rto@%s.service"
# Interpreters the boot unit may run as root, best first: the distribution's own Python 3 (whose
# path survives upgrades of the minor version), then the one running now.
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/libexec/platform-python")


class Systemd:
    """systemctl for the instance units, when systemd runs the host this code runs on (root "/");
    every call is a no-op under a test root or without systemd. run: how to call systemctl (tests)."""

    def __init__(self, root="/", run=None):
        self.live = run is not None or (root == "/" and os.path.isdir("/run/systemd/system"))
        self.run = run or _systemctl

    def reload(self):
        if self.live:
            self.run("daemon-reload")

    def state(self, name):
        """ActiveState of the instance's unit: active, inactive, failed, activating, ..."""
        if not self.live:
            return "inactive"
        return self.run("show", "--property=ActiveState", "--value", UNIT_INSTANCE % name)[1].strip()

    def stop(self, name, check_mode):
        """Stop the unit and clear a failed state (systemd would list it as failed or not-found)."""
        if self.state(name) in ("inactive", ""):
            return []
        if not check_mode:
            self.run("stop", UNIT_INSTANCE % name)
            self.run("reset-failed", UNIT_INSTANCE % name)
        return ["stop %s" % UNIT_INSTANCE % name]

    def start(self, name, check_mode):
        """Start the unit unless active, after clearing a failed state (a failed boot restore that
        this run fixed). The unit's restore applies the record the run just wrote: it finds the
        kernel as the run left it and changes nothing. RecordError when it fails."""
        state = self.state(name)
        if not self.live or state == "active":
            return []
        if not check_mode:
            if state == "failed":
                self.run("reset-failed", UNIT_INSTANCE % name)
            code, output = self.run("start", UNIT_INSTANCE % name)
            if code != 0:
                raise RecordError(
                    "the instance is applied and recorded, but its boot unit %s failed to start (%s): see "
                    "journalctl -u %s" % (UNIT_INSTANCE % name, output.strip(), UNIT_INSTANCE % name)
                )
        return ["start %s" % UNIT_INSTANCE % name]


def _systemctl(*args):
    """-> (exit code, stdout and stderr). module_utils here are plain stdlib Python (the boot-time
    restore imports them without Ansible): no AnsibleModule, so no run_command."""
    proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
        ["systemctl", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True
    )
    output = proc.communicate()[0]
    return proc.returncode, output


def _python_problem(path):
    """Why path may not be the interpreter tcp-rto@.service runs as root at boot, or None: it, what
    it links to and every directory above them must be root-owned and writable by no one else."""
    if not os.path.isabs(path):
        return "not an absolute path"
    real = os.path.realpath(path)
    checked = [path, real]
    for start in (os.path.dirname(path), os.path.dirname(real)):
        while True:
            checked.append(start)
            if start == os.path.dirname(start):
                break
            start = os.path.dirname(start)
    for each in checked:
        try:
            status = os.stat(each) if each == path else os.lstat(each)
        except OSError as exc:
            return "%s: %s" % (each, exc.strerror)
        if stat.S_ISLNK(status.st_mode):
            continue  # a link's own mode means nothing; its target is checked
        if status.st_uid != 0 or status.st_mode & 0o022:
            return "%s is owned by uid %d with mode %04o" % (each, status.st_uid, status.st_mode & 0o7777)
    if not (stat.S_ISREG(os.stat(real).st_mode) and os.access(real, os.X_OK)):
        return "%s is not an executable file" % real
    return None


def boot_python(candidates=None):
    """The interpreter the boot unit runs (with -I): the first of candidates (default: the system's
    Python 3, then this run's interpreter) that is root-owned and writable by no one else, down to
    /. RecordError naming each candidate's problem when none is."""
    problems = []
    for candidate in candidates or (*SYSTEM_PYTHONS, sys.executable):
        problem = _python_problem(candidate)
        if problem is None:
            return candidate
        problems.append("%s (%s)" % (candidate, problem))
    raise RecordError(
        "no interpreter the boot unit can safely run as root: %s. Install the distribution's python3 "
        "(/usr/bin/python3), or run with a root-owned interpreter that only root can change" % "; ".join(problems)
    )
