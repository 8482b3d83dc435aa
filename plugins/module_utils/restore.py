# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot-time restore of a persistent instance: tcp-rto@<name>.service runs main([name]).

Reads the record, then the same reconcile.run the module uses. A missing or damaged record fails
before anything touches the kernel; a failing apply undoes itself. Exit 0 only when restored."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import sys

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import persistence, reconcile


def main(argv, root="/"):
    if len(argv) != 1:
        sys.stderr.write("usage: restore.py INSTANCE\n")
        return 2
    name = argv[0]
    try:
        params = persistence.read_record(name, root)
        result = reconcile.run(dict(params, state="present", persistent=None, persist_root=root))
    except (persistence.RecordError, reconcile.VerificationFailed, *reconcile.ERRORS) as exc:
        sys.stderr.write("tcp-rto restore of %s failed: %s\n" % (name, reconcile.describe_error(exc)))
        return 1
    summary = {key: result.get(key) for key in ("changed", "actions", "verification")}
    summary["program_id"] = result["instance"]["program_id"]
    sys.stdout.write("tcp-rto restore of %s: %s\n" % (name, json.dumps(summary, sort_keys=True)))
    return 0
