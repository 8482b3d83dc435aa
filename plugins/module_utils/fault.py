# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test aid: kill the running module with SIGKILL, or fail it, right after a named step boundary.

With TCP_RTO_FAULT_AT=<point> in its environment, a run that reaches point(<point>) kills itself
as a power cut or the OOM killer would: no undo, no finally, no cleanup. With TCP_RTO_FAIL_AT=<point>
the step fails instead, as a refused kernel call would (OSError EIO): the run undoes what it did
and reports the error. Unset (always, outside tests) point() does nothing. POINTS is every boundary the code marks, in the order a run meets
them; tests/integration/test_crash.py kills a run at each one and checks that the next run repairs
it. A name missing from POINTS is a programming error, refused at once. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import signal

ENVIRONMENT = "TCP_RTO_FAULT_AT"
FAIL_ENVIRONMENT = "TCP_RTO_FAIL_AT"

POINTS = (
    # reconcile.run
    "lock_taken",
    # apply.apply_present: new maps
    "instance_dir_made",
    "maps_created",
    "first_rule_written",
    "maps_filled",
    # apply.apply_present: rules update in place (live maps)
    "hit_counter_reset",
    "first_rule_updated",
    "config_updated",
    "first_rule_deleted",
    # apply.apply_present: pins, program, attachment, commit
    "meta_created",
    "first_map_pinned",
    "maps_pinned",
    "program_loaded",
    "program_pinned",
    "attached",
    "link_pinned",
    "old_program_detached",
    "stale_link_unpinned",
    "first_pin_renamed",
    "pins_renamed",
    "orphans_detached",
    # apply.apply_absent
    "absent_detached",
    "absent_first_pin_removed",
    "absent_pins_removed",
    # reconcile.run, after the kernel changes, before verification and persistence
    "converged",
    # persistence.install (persist_temp_file_written: in safe_files.write, for each file it writes)
    "persist_temp_file_written",
    "persist_object_copied",
    "persist_code_copied",
    "persist_unit_written",
    "persist_record_written",
    "persist_enabled",
    # persistence.remove
    "unpersist_first_file_removed",
    "unpersist_unit_removed",
)


def point(name):
    """A step boundary: SIGKILL this process when TCP_RTO_FAULT_AT names it, fail the step when
    TCP_RTO_FAIL_AT does."""
    if name not in POINTS:
        raise ValueError("fault point %r is not listed in fault.POINTS" % name)
    if os.environ.get(ENVIRONMENT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(FAIL_ENVIRONMENT) == name:
        raise OSError(errno.EIO, "failure injected at step %s (%s)" % (name, FAIL_ENVIRONMENT))
