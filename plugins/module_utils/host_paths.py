# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the collection's files live on a host (see persistence): under / on a real host, under
the directory TCP_RTO_TEST_PERSIST_ROOT names in tests."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import service_unit

MODULE_UTILS = "ansible_collections.netbpf.tcp_rto.plugins.module_utils"
# Test aid: a directory standing for / for every file persistence writes, reads and removes
# (records, the copied code and object, units). Unset outside tests.
TEST_ROOT_ENVIRONMENT = "TCP_RTO_TEST_PERSIST_ROOT"
UNIT_TEMPLATE = "tcp-rto@.service"


def host_root():
    """/, or under tests the directory TCP_RTO_TEST_PERSIST_ROOT names."""
    return os.environ.get(TEST_ROOT_ENVIRONMENT) or "/"


class Layout:
    """Where the files of persistence live under root."""

    def __init__(self, root="/"):
        self.root = root
        self.record_dir = os.path.join(root, "etc", "tcp_rto")
        self.lib_dir = os.path.join(root, "var", "lib", "tcp_rto")
        self.code_dir = os.path.join(self.lib_dir, "lib", *MODULE_UTILS.split("."))
        self.script = os.path.join(self.lib_dir, "restore.py")
        self.unit_dir = os.path.join(root, "etc", "systemd", "system")
        self.unit = os.path.join(self.unit_dir, UNIT_TEMPLATE)

    def owns(self, path):
        """Whether path lies in a directory only the collection writes to."""
        return any(path == mine or path.startswith(mine + os.sep) for mine in (self.record_dir, self.lib_dir))

    def record(self, name):
        return os.path.join(self.record_dir, name + ".json")

    def object(self, name):
        return os.path.join(self.lib_dir, "objects", name + ".bpf.o")

    def wants_link(self, name):
        return os.path.join(self.unit_dir, "multi-user.target.wants", "tcp-rto@%s.service" % name)

    def dropin(self, unit, name):
        """The drop-in of unit that attaches the instance name at every start of the unit."""
        return os.path.join(service_unit.dropin_dir(self.unit_dir, unit), service_unit.DROPIN_NAME % name)

    def dropins(self, name):
        """The drop-ins of name, of whatever unit (an instance that moved leaves the old one behind)."""
        wanted = service_unit.DROPIN_NAME % name
        if not os.path.isdir(self.unit_dir):
            return []
        return sorted(
            os.path.join(self.unit_dir, entry, wanted)
            for entry in os.listdir(self.unit_dir)
            if entry.endswith(".service.d") and os.path.lexists(os.path.join(self.unit_dir, entry, wanted))
        )

    def recorded_names(self):
        if not os.path.isdir(self.record_dir):
            return []
        # Instance names have no dot, so <name>.previous.json (the role's history) is no record.
        return sorted(
            entry[:-5] for entry in os.listdir(self.record_dir) if entry.endswith(".json") and "." not in entry[:-5]
        )
