"""Making the instance directory while another instance's run (another lock) makes the shared
levels above it: a level that appears between the check and the mkdir is taken as it is, and the
undo removes only what this run made."""

import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import apply


def test_level_made_meanwhile_is_not_an_error_nor_undone(tmp_path, monkeypatch):
    pin_dir = tmp_path / "tcp_rto"
    instance_dir = pin_dir / "dc"
    real_mkdir = os.mkdir

    def racing_mkdir(path, mode=0o777):
        if path == str(pin_dir):
            real_mkdir(path, mode)  # the other run wins the race for the shared level
        real_mkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    undo = apply._Undo()
    apply._make_dirs(str(instance_dir), undo)
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    assert instance_dir.is_dir()
    undo.run()
    assert pin_dir.is_dir() and not instance_dir.exists()
