"""The tests' HZ (conftest.kernel_hz) is the module's own discovery, so that the tests expect what
the module computes on any host: on a stock distribution kernel that is /boot/config-<release>,
and there is no /proc/config.gz."""

import functools
import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import hz
from ansible_collections.netbpf.tcp_rto.tests.support.hz import kernel_hz


def test_kernel_hz_from_boot_config_without_proc_config(tmp_path, monkeypatch):
    release = os.uname()[2]
    # a value this kernel does not have, so that reading the real kernel's config cannot pass
    boot_hz = next(value for value in (300, 100, 1000) if value != hz.tick_hz())
    (tmp_path / ("config-" + release)).write_text("CONFIG_HZ_%d=y\nCONFIG_HZ=%d\n" % (boot_hz, boot_hz))
    # the host's files as a distribution kernel has them: /boot/config-<release>, no /proc/config.gz
    monkeypatch.setattr(
        hz,
        "config_hz",
        functools.partial(hz.config_hz, boot_dir=str(tmp_path), proc_config=str(tmp_path / "config.gz")),
    )
    assert hz.discover(None, release) == (boot_hz, str(tmp_path / ("config-" + release)))
    assert kernel_hz() == boot_hz
