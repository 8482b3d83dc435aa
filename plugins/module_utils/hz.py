# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's HZ (CONFIG_HZ), in which the program's RTO is counted (jiffies): given, read from
the kernel's config, or measured. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import os
import time
from typing import Optional, Tuple

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import ConfigError

# Linux clock id (uapi, every architecture); the time module names it only from Python 3.13 on.
CLOCK_MONOTONIC_COARSE = 6
MEASURED = "measured"
PARAMETER = "parameter"


def discover(given: Optional[int] = None, release: Optional[str] = None) -> Tuple[int, str]:
    """-> (hz, where it comes from: "parameter", the kernel config's path, or "measured")."""
    if given is not None:
        if given <= 0:
            raise ConfigError("hz must be positive, got %d" % given)
        return given, PARAMETER
    return config_hz(release) or (tick_hz(), MEASURED)


def config_hz(
    release: Optional[str] = None, boot_dir: str = "/boot", proc_config: str = "/proc/config.gz"
) -> Optional[Tuple[int, str]]:
    """CONFIG_HZ of the kernel -> (hz, source path), or None when no kernel config is readable.

    Looks at <boot_dir>/config-<release> first, then the gzip'd <proc_config> (CONFIG_IKCONFIG_PROC).
    """
    release = release if release is not None else host.kernel_release()
    candidates = ((os.path.join(boot_dir, "config-" + release), open), (proc_config, gzip.open))
    for path, opener in candidates:
        try:
            with opener(path, "rb") as handle:
                for line in handle:
                    if line.startswith(b"CONFIG_HZ="):
                        return int(line.split(b"=", 1)[1].strip()), path
        except (OSError, EOFError, ValueError):
            continue
    return None


def tick_hz() -> int:
    """CONFIG_HZ measured, for hosts without a kernel config: CLOCK_MONOTONIC_COARSE advances once per
    jiffy and clock_getres() reports that tick (4 ms at HZ 250)."""
    return round(1.0 / time.clock_getres(CLOCK_MONOTONIC_COARSE))
