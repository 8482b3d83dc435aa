# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's metrics timer: tcp-rto-metrics.timer starts tcp-rto-metrics.service every interval,
which writes the handshake telemetry of every instance under a pin_dir to a Prometheus textfile
(metrics.main) with the collection's code that persistence copied for the boot restore, without
Ansible. Installed and removed by persistence under its lock (the module's metrics_textfile); it
goes with the last recorded instance, whose removal takes that code. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import safe_files
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.record import RecordError

SERVICE = "tcp-rto-metrics.service"
TIMER = "tcp-rto-metrics.timer"
# A path systemd takes in ExecStart as one word, without quoting or % specifiers.
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9_./:+@-]*$")

SCRIPT_TEXT = """\
# Installed by the Ansible collection netbpf.tcp_rto: tcp-rto-metrics.service runs this.
import sys
sys.dont_write_bytecode = True
sys.path.insert(0, {lib!r})
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import metrics
sys.exit(metrics.main(sys.argv[1:]))
"""

SERVICE_TEXT = """\
# Installed by the Ansible collection netbpf.tcp_rto: the handshake telemetry of the TCP initial
# RTO instances under {pin_dir}, for node_exporter's textfile collector.
[Unit]
Description=TCP initial RTO metrics textfile {textfile} (netbpf.tcp_rto)
After=local-fs.target

[Service]
Type=oneshot
ExecStart={python} -I {script} {pin_dir} {textfile}
"""

TIMER_TEXT = """\
# Installed by the Ansible collection netbpf.tcp_rto.
[Unit]
Description=Refresh the TCP initial RTO metrics textfile every {interval}s (netbpf.tcp_rto)

[Timer]
OnBootSec={interval}s
OnUnitActiveSec={interval}s
AccuracySec=1s

[Install]
WantedBy=timers.target
"""


def check(textfile, pin_dir, interval_s):
    """RecordError for a textfile, pin_dir or interval the units cannot hold (checked before the
    run changes anything)."""
    for what, path in (("metrics_textfile", textfile), ("pin_dir", pin_dir)):
        if not PLAIN_PATH.match(path or ""):
            raise RecordError(
                "%s %r: the metrics timer needs an absolute path of letters, digits and ._-/:+@ only (systemd's "
                "ExecStart takes it as one word)" % (what, path)
            )
    if not isinstance(interval_s, int) or interval_s < 1:
        raise RecordError("metrics_interval_s must be 1 or more seconds, not %r" % (interval_s,))


def paths(layout):
    """The files of the timer under layout: script, service, timer, enablement link."""
    return dict(
        script=os.path.join(layout.lib_dir, "metrics.py"),
        service=os.path.join(layout.unit_dir, SERVICE),
        timer=os.path.join(layout.unit_dir, TIMER),
        wants=os.path.join(layout.unit_dir, "timers.target.wants", TIMER),
    )


def install(layout, textfile, pin_dir, interval_s, python, check_mode):
    """Write the timer's script and units and enable it; -> list of what changed (the caller
    reloads systemd, then start() starts the timer)."""
    check(textfile, pin_dir, interval_s)
    files = paths(layout)
    texts = (
        (files["script"], SCRIPT_TEXT.format(lib=os.path.join(layout.lib_dir, "lib"))),
        (
            files["service"],
            SERVICE_TEXT.format(python=python, script=files["script"], pin_dir=pin_dir, textfile=textfile),
        ),
        (files["timer"], TIMER_TEXT.format(interval=interval_s)),
    )
    changes = []
    for path, text in texts:
        if safe_files.write(layout, path, text.encode("utf-8"), 0o644, check_mode):
            changes.append("install %s" % path)
    if safe_files.symlink(layout, os.path.join("..", TIMER), files["wants"], check_mode):
        changes.append("enable %s" % TIMER)
    return changes


def follow(layout, systemd, params, python, check_mode):
    """What the run's metrics_textfile asks: a path installs (or keeps) the timer writing there,
    "" removes it, None (omitted, as in the boot restore) leaves it as it is. -> what changed."""
    textfile = params.get("metrics_textfile")
    if textfile is None:
        return []
    if textfile == "":
        return remove(layout, systemd, check_mode)
    return install(layout, textfile, params["pin_dir"], params.get("metrics_interval_s") or 60, python, check_mode)


def start(systemd, check_mode):
    """(Re)start the timer after install() changed it, so that it runs the new units now."""
    if not systemd.live:
        return []
    if not check_mode:
        code, output = systemd.run("restart", TIMER)
        if code != 0:
            raise RecordError("%s failed to start (%s): see journalctl -u %s" % (TIMER, output.strip(), TIMER))
    return ["start %s" % TIMER]


def remove(layout, systemd, check_mode):
    """Stop and remove the timer and its files; -> list of what changed."""
    files = paths(layout)
    changes = []
    if os.path.lexists(files["timer"]) and systemd.live:
        changes.append("stop %s" % TIMER)
        if not check_mode:
            systemd.run("stop", TIMER, SERVICE)
            systemd.run("reset-failed", SERVICE)
    for path in (files["wants"], files["timer"], files["service"], files["script"]):
        for leftover in [path, *safe_files.temporaries(path)]:
            if safe_files.remove(layout, leftover, check_mode):
                changes.append("remove %s" % leftover)
    return changes
