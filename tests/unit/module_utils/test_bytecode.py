"""bytecode.py: a module run imports the collection's module_utils from Ansible's zip, taking each
one's code from the .pyc beside persistence's copy only when that was compiled from the same
source, is a regular file of this user that no one else can write, and is whole. Each case runs in
a fresh interpreter whose only copy of the collection is the zip, as on a managed host. Python 3.6
has no hash-based .pyc: there nothing is cached, and the imports work as before."""

import importlib.util
import os
import subprocess
import sys
import zipfile

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bytecode, host_paths

HASH_BASED = hasattr(importlib.util, "source_hash")  # Python 3.7 on
needs_hash_based = pytest.mark.skipif(not HASH_BASED, reason="no hash-based .pyc before Python 3.7")
PACKAGE_DIR = host_paths.MODULE_UTILS.replace(".", "/")
SOURCE = b"TAKEN_FROM = 'zip'\n"
MODULE = "cache_probe"


@pytest.fixture
def payload(tmp_path):
    """A zip like Ansible's payload: the collection's packages, bytecode.py and a module to import."""
    path = str(tmp_path / "payload.zip")
    with zipfile.ZipFile(path, "w") as archive:
        parts = PACKAGE_DIR.split("/")
        for depth in range(1, len(parts) + 1):
            archive.writestr("/".join(parts[:depth]) + "/__init__.py", b"")
        with open(bytecode.__file__, "rb") as handle:
            archive.writestr(PACKAGE_DIR + "/bytecode.py", handle.read())
        archive.writestr(PACKAGE_DIR + "/%s.py" % MODULE, SOURCE)
    return path


@pytest.fixture
def code_dir(tmp_path):
    path = str(tmp_path / "copies")
    os.makedirs(os.path.join(path, "__pycache__"))
    return path


def write_compiled(code_dir, header_source=SOURCE, body=b"TAKEN_FROM = 'compiled'\n", mode=0o644):
    """A .pyc whose header names header_source and whose code is body's: what runs tells which was taken."""
    path = bytecode.cached(code_dir, MODULE)
    with open(path, "wb") as handle:
        handle.write(bytecode.compiled(header_source, "copy")[:16] + bytecode.compiled(body, "copy")[16:])
    os.chmod(path, mode)
    return path


def taken_from(payload, code_dir, then="", before=""):
    """What the imported module says it was taken from; then: more lines to run after the import,
    before: lines to run before use_copies."""
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from %s import bytecode\n"
        "%s"
        "bytecode.use_copies(%r)\n"
        "from %s import %s as probe\n"
        "print(probe.TAKEN_FROM)\n"
    ) % (payload, host_paths.MODULE_UTILS, before, code_dir, host_paths.MODULE_UTILS, MODULE) + then
    run = subprocess.run([sys.executable, "-I", "-c", script], stdout=subprocess.PIPE, check=True)
    return run.stdout.decode().strip()


@needs_hash_based
def test_the_code_compiled_from_the_same_source_is_taken(payload, code_dir):
    write_compiled(code_dir)
    assert taken_from(payload, code_dir) == "compiled"


@needs_hash_based
def test_a_finder_put_first_stays_first(payload, code_dir):
    """ansible-test's import check puts its own finder first and fails a module that moves it."""
    write_compiled(code_dir)
    before = "class First:\n    def find_spec(self, *args): return None\nsys.meta_path.insert(0, First())\n"
    then = "print(type(sys.meta_path[0]).__name__)\n"
    assert taken_from(payload, code_dir, then, before).split("\n") == ["compiled", "First"]


def test_without_compiled_code_the_source_is_compiled(payload, code_dir):
    assert taken_from(payload, code_dir) == "zip"


@needs_hash_based
def test_a_module_compiled_for_its_import_is_not_compiled_again_for_its_pyc(payload, code_dir):
    """The first persistent run imports from source, then writes the .pyc of the same code."""
    then = (
        "import builtins, os\n"
        "def refuse(*args, **kwargs): raise AssertionError('compiled again')\n"
        "builtins.compile = refuse\n"
        "pyc = bytecode.compiled(%r, os.path.join(%r, %r))\n"
        "print(bytecode.compiled_from(pyc, %r))\n"
        "print(probe.TAKEN_FROM.__class__.__name__, probe.__spec__.loader.get_source(probe.__name__) == %r)\n"
    ) % (SOURCE, code_dir, MODULE + ".py", SOURCE, SOURCE.decode())
    assert taken_from(payload, code_dir, then).split("\n") == ["zip", "True", "str True"]


@needs_hash_based
def test_code_compiled_from_another_source_is_not_taken(payload, code_dir):
    write_compiled(code_dir, header_source=b"TAKEN_FROM = 'an older version'\n")
    assert taken_from(payload, code_dir) == "zip"


@needs_hash_based
def test_code_others_can_write_is_not_taken(payload, code_dir):
    write_compiled(code_dir, mode=0o664)
    assert taken_from(payload, code_dir) == "zip"


@needs_hash_based
def test_a_symlink_is_not_followed(payload, code_dir, tmp_path):
    elsewhere = str(tmp_path / "elsewhere")
    os.makedirs(os.path.join(elsewhere, "__pycache__"))
    os.symlink(write_compiled(elsewhere), bytecode.cached(code_dir, MODULE))
    assert taken_from(payload, code_dir) == "zip"


@needs_hash_based
def test_truncated_code_is_compiled_again(payload, code_dir):
    path = write_compiled(code_dir)
    with open(path, "rb") as handle:
        content = handle.read()
    with open(path, "wb") as handle:
        handle.write(content[: len(content) - 8])
    assert taken_from(payload, code_dir) == "zip"


@needs_hash_based
def test_whole_files_are_not_compared():
    """The same code can marshal to other bytes: whether a .pyc fits a source is its header's say."""
    compiled = bytecode.compiled(SOURCE, "copy")
    assert bytecode.compiled_from(compiled, SOURCE)
    assert bytecode.compiled_from(compiled[:16] + b"other bytes", SOURCE)
    assert not bytecode.compiled_from(compiled, SOURCE + b"# edited\n")
    assert not bytecode.compiled_from(None, SOURCE)


def test_where_the_compiled_code_lives(code_dir):
    expected = os.path.join(code_dir, "__pycache__", "%s.%s.pyc" % (MODULE, sys.implementation.cache_tag))
    assert bytecode.cached(code_dir, MODULE) == (expected if HASH_BASED else None)
