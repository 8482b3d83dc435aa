# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's module_utils compiled once on a host, not at every module run.

Ansible sends a module with its module_utils in a zip, from which Python compiles every import
anew, each twice (zipimport compiles a module to tell its file name): for this collection's 400 KB
of code, most of what a run that changes nothing cost a host beyond ansible.builtin.ping
(docs/performance.md). Persistence copies the same files to the host for the boot-time restore;
beside each copy it writes the code compiled by the interpreter of the run, as a hash-checked .pyc
(PEP 552: the file carries the hash of the source it was compiled from, and Python's own import of
the copies, at boot, checks it). A module run calls use_copies() before it imports the collection's
module_utils: each is still read from the zip, and its code taken from such a .pyc when that was
compiled from the very same source, else compiled, once.

Plain stdlib; without hash-based .pyc files (Python 3.6) nothing is cached.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib.util
import marshal
import os
import stat
import sys
import zipimport
from importlib.machinery import PathFinder

_PACKAGE = __name__.rpartition(".")[0]  # the collection's module_utils
_HASH_CHECKED = 0b11  # PEP 552 flags: hash-based, checked against the source on import
_HEADER_SIZE = 16


def cached(code_dir, module):
    """Where the code of code_dir/module.py compiled by this interpreter lives (Python's own
    place for it); None when this interpreter caches none."""
    tag = sys.implementation.cache_tag
    if tag is None or not hasattr(importlib.util, "source_hash"):
        return None
    return os.path.join(code_dir, "__pycache__", "%s.%s.pyc" % (module, tag))


def _header(source):
    return importlib.util.MAGIC_NUMBER + _HASH_CHECKED.to_bytes(4, "little") + importlib.util.source_hash(source)


# {(filename, header): code} compiled by this process: a run that imports a module_utils module
# from source and then writes its .pyc (the first persistent run) compiles it once.
_compiled_here = {}


def _compile(source, filename):
    key = (filename, _header(source))
    if key not in _compiled_here:
        _compiled_here[key] = compile(source, filename, "exec", dont_inherit=True)
    return _compiled_here[key]


def compiled(source, filename):
    """The hash-checked .pyc of source (bytes) by this interpreter; filename is what tracebacks show."""
    return _header(source) + marshal.dumps(_compile(source, filename))


def compiled_from(pyc, source):
    """Whether the .pyc content pyc (or None) holds code compiled from source by this interpreter.
    (Comparing whole files would not do: the same code can marshal to other bytes.)"""
    return pyc is not None and pyc[:_HEADER_SIZE] == _header(source)


def _read_own(path):
    """The content of path when it is a regular file of this user that no one else can write,
    else None: code from it runs with this user's rights."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid() or status.st_mode & 0o022:
            return None
        return handle.read()


class _CodeFromCopies:
    """Loader of one module_utils module: the source from Ansible's zip, the code from the .pyc
    beside persistence's copy when compiled from that source, else compiled under the copy's name
    (as the .pyc would have it: tracebacks name the file the host keeps, not a run's temporary
    zip). Whatever else a loader is asked (get_source for tracebacks, get_data) goes to the zip's
    loader."""

    def __init__(self, loader, source, copy_path, pyc_path):
        self._loader = loader
        self._source = source
        self._copy_path = copy_path
        self._pyc_path = pyc_path

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source = self._source
        pyc = _read_own(self._pyc_path)
        code = None
        if compiled_from(pyc, source):
            try:
                code = marshal.loads(pyc[_HEADER_SIZE:])
            except (EOFError, ValueError, TypeError):
                code = None
        if code is None:
            code = _compile(source, self._copy_path)
        exec(code, module.__dict__)  # pylint: disable=exec-used


class _CopiesFinder:
    """Finds the collection's module_utils modules in Ansible's zip and loads them with
    _CodeFromCopies. Only from a zip: from a directory Python caches the code itself. It makes the
    spec itself, as Python's path finder would ask zipimport for the module's file name, which
    zipimport finds by compiling the module."""

    def __init__(self, code_dir):
        self.code_dir = code_dir

    def find_spec(self, fullname, path=None, target=None):
        package, _dot, module = fullname.rpartition(".")
        if package != _PACKAGE:  # checked first: every import that reaches the path finder asks this finder
            return None
        pyc_path = cached(self.code_dir, module)
        if pyc_path is None:
            return None
        for entry in path or ():
            if os.path.isdir(entry):
                return None
            importer = sys.path_importer_cache.get(entry)
            try:
                if not isinstance(importer, zipimport.zipimporter):
                    importer = zipimport.zipimporter(entry)
                origin = os.path.join(entry, module + ".py")
                source = importer.get_data(origin)
            except (zipimport.ZipImportError, OSError):
                continue
            loader = _CodeFromCopies(importer, source, os.path.join(self.code_dir, module + ".py"), pyc_path)
            return importlib.util.spec_from_file_location(
                fullname, origin, loader=loader, submodule_search_locations=None
            )
        return None


def use_copies(code_dir):
    """From now on, load this collection's module_utils with the code compiled beside their
    copies in code_dir when it was compiled from the same source (see the module's docstring)."""
    if any(isinstance(finder, _CopiesFinder) for finder in sys.meta_path):
        return
    # Just before Python's path finder, whose work it takes over for the collection's imports; not
    # first: whoever put a finder first keeps it there (ansible-test's import check requires it).
    position = sys.meta_path.index(PathFinder) if PathFinder in sys.meta_path else len(sys.meta_path)
    sys.meta_path.insert(position, _CopiesFinder(code_dir))
