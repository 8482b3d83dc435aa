# Test aid: writes every task result as one JSON line to $RECORD_RESULTS_FILE, so that tests
# assert on what modules returned instead of parsing screen output.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: record_results
type: aggregate
short_description: write task results as JSON lines (test aid)
description: Writes each task result to the file named by RECORD_RESULTS_FILE.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record_results"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        entry = dict(
            result._result,
            task=result._task.get_name(),
            action=result._task.action,
            host=result._host.get_name(),
            status=status,
        )
        with open(os.environ["RECORD_RESULTS_FILE"], "a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        # what set_stats published, next to the results: <RECORD_RESULTS_FILE>.custom_stats
        with open(os.environ["RECORD_RESULTS_FILE"] + ".custom_stats", "w") as handle:
            json.dump(stats.custom, handle, default=str)
