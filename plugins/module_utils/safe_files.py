# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading and writing the files of persistence so that nothing can redirect them: no symlink
followed, the collection's own directories owned by this user and writable by no one else, new
content written atomically (a new file fsynced and renamed over the old one). `layout` is a
host_paths.Layout: its root and the directories it owns.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import stat
import tempfile

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import fault
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.record import RecordError


class UnsafePath(RecordError):
    """A path of persistence is a symlink, not a regular file or directory, or writable by others."""


def refuse_symlink(path):
    raise UnsafePath(
        "%s is a symlink (to %s): the collection reads and writes only real files and directories there, "
        "so that nothing it writes or the boot-time restore runs can be redirected; remove the symlink "
        "(and find out who made it), then run again" % (path, os.readlink(path))
    )


def check_dirs(layout, directory, create=False):
    """Every component of directory below layout.root must be a real directory (not a symlink);
    the collection's own ones (under record_dir, lib_dir) also owned by this user and writable by
    no one else. Missing ones are made with mode 0755 whatever the umask when create is True."""
    path = layout.root
    if create and not os.path.isdir(path):
        os.makedirs(path, 0o755, exist_ok=True)
    for part in os.path.relpath(directory, layout.root).split(os.sep):
        path = os.path.join(path, part)
        try:
            status = os.lstat(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            if not create:
                return
            try:
                os.mkdir(path, 0o755)
                os.chmod(path, 0o755)  # the umask may have taken bits away
                continue
            except OSError as exc:
                if exc.errno != errno.EEXIST:  # another instance's run made it meanwhile: check it below
                    raise
            status = os.lstat(path)
        if stat.S_ISLNK(status.st_mode):
            refuse_symlink(path)
        if not stat.S_ISDIR(status.st_mode):
            raise UnsafePath("%s is not a directory: remove it, then run again" % path)
        if layout.owns(path) and (status.st_uid != os.geteuid() or status.st_mode & 0o022):
            raise UnsafePath(
                "%s (owner uid %d, mode %04o) could be changed by another user than uid %d, and the boot-time "
                "restore runs what it holds: chown %d %s && chmod 755 %s, then run again"
                % (path, status.st_uid, status.st_mode & 0o7777, os.geteuid(), os.geteuid(), path, path)
            )


def read(path):
    """The content of the regular file at path, None when missing; UnsafePath for a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        if exc.errno == errno.ELOOP:
            refuse_symlink(path)
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath("%s is not a regular file: remove it, then run again" % path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def write(layout, path, content, mode, check_mode, durable=True):
    """Write content atomically (a new file renamed over path) when it, the mode or the owner
    differs; -> whether anything differed. durable=False skips the syncs, for a cache whose
    readers take a damaged file for a missing one."""
    directory = os.path.dirname(path)
    check_dirs(layout, directory, create=not check_mode)
    if read(path) == content:
        status = os.lstat(path)
        if status.st_mode & 0o7777 == mode and status.st_uid == os.geteuid():
            return False
    if not check_mode:
        fd, temporary = tempfile.mkstemp(
            dir=directory, prefix=_TEMPORARY_PREFIX % os.path.basename(path), suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                os.fchmod(handle.fileno(), mode)
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())  # else a crash after the rename can leave an empty file
            fault.point("persist_temp_file_written")
            os.rename(temporary, path)
            if durable:
                _fsync_directory(directory)
        except BaseException:
            _remove_quietly(temporary)
            raise
    return True


def _fsync_directory(directory):
    """Make a rename in directory durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# write's new file before it is renamed over the real one; a killed run may leave it behind.
_TEMPORARY_PREFIX = ".%s."


def temporaries(path):
    """The files a killed write of path left in its directory."""
    directory, prefix = os.path.dirname(path), _TEMPORARY_PREFIX % os.path.basename(path)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return [
        os.path.join(directory, name) for name in sorted(names) if name.startswith(prefix) and name.endswith(".tmp")
    ]


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def symlink(layout, target, link, check_mode):
    check_dirs(layout, os.path.dirname(link), create=not check_mode)
    if os.path.islink(link) and os.readlink(link) == target:
        return False
    if not check_mode:
        remove(layout, link, False)
        os.symlink(target, link)
    return True


def remove(layout, path, check_mode):
    check_dirs(layout, os.path.dirname(path))
    if not os.path.lexists(path):
        return False
    if not check_mode:
        os.unlink(path)
    return True
