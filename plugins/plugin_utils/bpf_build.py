# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: the shipped BPF object, and the one clang command that builds an object from C
source (files/bpf/build for the shipped object, the action plugin for `src: x.c`).

The object lives here, under plugins/, so that the action plugin needs nothing outside plugins/
at run time; files/bpf/ holds its source. Deterministic output: fixed flags, no -g (no BTF, no
debug sections), the source named by a relative path (it lands in the object's FILE symbol),
-mcpu pinned (clang's default changes between releases; v2 runs on 4.14+), no .llvm_addrsig."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
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


def compile_command(source):
    """The clang command line for source, to run in source's directory."""
    return [
        os.environ.get("CLANG", "clang"),
        "-O2",
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


def compile_object(source, output):
    """Compile source into output. -> (exit code, clang's output as text)."""
    source = os.path.abspath(source)
    proc = subprocess.run(
        [*compile_command(source), "-o", os.path.abspath(output)],
        cwd=os.path.dirname(source),
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: bpf_build.py OUTPUT.o SOURCE.c\n")
        return 2
    code, text = compile_object(argv[1], argv[0])
    sys.stderr.write(text)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
