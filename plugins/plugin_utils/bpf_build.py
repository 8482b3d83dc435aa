# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: the shipped BPF object, and the one clang command that builds an object from C
source (files/bpf/build for the shipped object, the action plugin for `src: x.c`).

The object lives here, under plugins/, so that the action plugin needs nothing outside plugins/
at run time; files/bpf/ holds its source. Deterministic output without build paths: fixed flags,
the source named by a relative path (it lands in the object's FILE symbol and, with the source
lines, in .BTF.ext), the compilation directory given as "." (DWARF and BTF would name the build
directory), -mcpu pinned (clang's default changes between releases; v2 runs on 4.14+), no
.llvm_addrsig. -g makes clang emit BTF (.BTF, .BTF.ext) next to DWARF; llvm-strip -g then drops
the DWARF (.debug_*), which no loader reads, and keeps the BTF."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import subprocess
import sys

OBJECT_NAME = "tcp_initial_rto.bpf.o"
SHIPPED_OBJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), OBJECT_NAME)
DEFAULT_MULTIARCH = "x86_64-linux-gnu"


def _multiarch():
    """The directory of asm/types.h, which linux/bpf.h includes."""
    try:
        found = subprocess.run(["gcc", "-print-multiarch"], check=False, stdout=subprocess.PIPE).stdout
    except OSError:
        return DEFAULT_MULTIARCH
    return found.decode().strip() or DEFAULT_MULTIARCH


def _clang():
    return os.environ.get("CLANG", "clang")


def compile_command(source):
    """The clang command line for source, to run in source's directory."""
    return [
        _clang(),
        "-O2",
        "-g",
        "-fdebug-compilation-dir=.",
        "-target",
        "bpf",
        "-mcpu=v2",
        "-fno-addrsig",
        "-Wall",
        "-Werror",
        "-I/usr/include/" + _multiarch(),
        "-c",
        os.path.basename(source),
    ]


def strip_tool():
    """llvm-strip of clang's own LLVM (clang finds it next to itself or in PATH), or None."""
    try:
        found = (
            subprocess.run([_clang(), "-print-prog-name=llvm-strip"], check=False, stdout=subprocess.PIPE)
            .stdout.decode()
            .strip()
        )
    except OSError:
        return None
    return shutil.which(found or "llvm-strip")


def _run(command, cwd):
    proc = subprocess.run(command, cwd=cwd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def compile_object(source, output):
    """Compile source into output, DWARF stripped. -> (exit code, the tools' output as text)."""
    source, output = os.path.abspath(source), os.path.abspath(output)
    code, text = _run([*compile_command(source), "-o", output], os.path.dirname(source))
    if code != 0:
        return code, text
    strip = strip_tool()
    if strip is None:
        return 1, text + (
            "llvm-strip not found (it comes with LLVM: Debian/Ubuntu package llvm); it removes the "
            "DWARF from %s and keeps the BTF\n" % output
        )
    code, stripped = _run([strip, "--strip-debug", output], os.path.dirname(output))
    return code, text + stripped


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: bpf_build.py OUTPUT.o SOURCE.c\n")
        return 2
    code, text = compile_object(argv[1], argv[0])
    sys.stderr.write(text)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
