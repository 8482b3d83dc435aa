"""Builds the collection's HTML docs site: .cache/docs-site/html/index.html (or under the
directory given as argument). Run with the test environment's Python: .venv/bin/python docs/site/build.py

- antsibull-docs writes the reference as RST: the modules, the filter, and the role from
  roles/tcp_rto/meta/argument_specs.yml.
- The guides stay Markdown in docs/*.md, their single source (read as they are on GitHub and
  Galaxy too); Sphinx renders them with myst-parser. They are not antsibull-docs "extra docs"
  (docs/docsite/extra-docs.yml): those must be RST files in the collection, copies that would
  drift from docs/*.md. Every docs/*.md becomes a page; docs/site/index.rst orders them.
- The playbooks page is written from playbooks/*.yml: their header comment, the variables they
  read, and their source.
- Sphinx runs with warnings as errors, so a broken reference or markup fails the build.
"""

import os
import re
import shutil
import subprocess
import sys
import zlib

SITE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(SITE_DIR))
COLLECTIONS_ROOT = os.path.join(REPO, ".cache", "collections")
DEFAULT_OUTPUT = os.path.join(REPO, ".cache", "docs-site")
TOOLS_BIN = os.path.dirname(sys.executable)
PLAYBOOK_VARIABLE = re.compile(r"(?<![\w.])(tcp_rto_\w+) \| default\(([^)]*)\)")
# Labels of Ansible's own documentation that the generated reference links to. A local intersphinx
# inventory (conf.py) resolves them offline to the pages on docs.ansible.com; the published
# inventory would be a download. A label missing here fails the build as an undefined label.
ANSIBLE_DOCS_LABELS = {
    "action_plugins": ("plugins/action.html#action-plugins", "Action plugins"),
    "ansible_configuration_settings": (
        "reference_appendices/config.html#ansible-configuration-settings",
        "Configuration settings",
    ),
    "common_return_values": ("reference_appendices/common_return_values.html#common-return-values", "Return Values"),
}


def run(command):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT, PATH=TOOLS_BIN + os.pathsep + os.environ["PATH"])
    subprocess.run(command, check=True, env=env, cwd=REPO)


def write_reference(source_dir):
    reference_dir = os.path.join(source_dir, "reference")
    os.makedirs(reference_dir, mode=0o755)
    run(
        [
            os.path.join(TOOLS_BIN, "antsibull-docs"),
            "collection",
            "--use-current",
            "--squash-hierarchy",
            "--fail-on-error",
            "--no-add-antsibull-docs-version",
            "--dest-dir",
            reference_dir,
            "netbpf.tcp_rto",
        ]
    )


def write_ansible_docs_inventory(source_dir):
    entries = "".join(
        "%s std:label -1 %s %s\n" % (label, uri, title) for label, (uri, title) in sorted(ANSIBLE_DOCS_LABELS.items())
    )
    with open(os.path.join(source_dir, "ansible_docs.inv"), "wb") as inventory:
        inventory.write(b"# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n")
        inventory.write(b"# The remainder of this file is compressed using zlib.\n")
        inventory.write(zlib.compress(entries.encode()))


# A guide's link to a repository file outside docs/ ("[bench/](../bench/)") works on a forge, not in
# the site, which holds docs/ only: the site shows the link text alone.
LINK_OUT_OF_DOCS = re.compile(r"\[([^\]]+)\]\(\.\./[^)]*\)")


def copy_guides(source_dir):
    guides_dir = os.path.join(source_dir, "guides")
    docs_dir = os.path.join(REPO, "docs")
    shutil.copytree(docs_dir, guides_dir, ignore=shutil.ignore_patterns("site"))
    for name in os.listdir(guides_dir):
        if name.endswith(".md"):
            path = os.path.join(guides_dir, name)
            with open(path, encoding="utf-8") as guide:
                text = guide.read()
            with open(path, "w", encoding="utf-8") as guide:
                guide.write(LINK_OUT_OF_DOCS.sub(r"\1", text))
    shutil.copy(os.path.join(REPO, "CHANGELOG.md"), os.path.join(source_dir, "changelog.md"))


def header_comment(text):
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            lines.append(line.lstrip("#").strip())
        elif line.strip() not in ("", "---") or lines:
            break
    return " ".join(lines)


def playbook_section(path):
    name = os.path.splitext(os.path.basename(path))[0]
    with open(path, encoding="utf-8") as playbook:
        text = playbook.read()
    variables = {}
    for variable, default in PLAYBOOK_VARIABLE.findall(text):
        variables.setdefault(variable, default)
    lines = [
        "## netbpf.tcp_rto.%s" % name,
        "",
        header_comment(text),
        "",
        "```console",
        "ansible-playbook -i inventory netbpf.tcp_rto.%s" % name,
        "```",
        "",
    ]
    if variables:
        lines += ["| variable | default |", "|---|---|"]
        lines += ["| `%s` | `%s` |" % (variable, variables[variable]) for variable in sorted(variables)]
        lines.append("")
    if "netbpf.tcp_rto.tcp_rto" in text:
        lines += [
            "It runs the role, so every variable of the role applies: "
            "{ref}`netbpf.tcp_rto.tcp_rto <ansible_collections.netbpf.tcp_rto.tcp_rto_role>`.",
            "",
        ]
    lines += ["```{code-block} yaml", ":caption: playbooks/%s.yml" % name, "", text.rstrip("\n"), "```", ""]
    return lines


def write_playbooks_page(source_dir):
    playbooks_dir = os.path.join(REPO, "playbooks")
    lines = [
        "# Playbooks",
        "",
        "Run them by their names with `ansible-playbook`; the [fleet guide](guides/fleet.md) explains "
        "when to use which, and how batches, health gates and rollback work together.",
        "",
    ]
    for name in sorted(os.listdir(playbooks_dir)):
        if name.endswith(".yml"):
            lines += playbook_section(os.path.join(playbooks_dir, name))
    with open(os.path.join(source_dir, "playbooks.md"), "w", encoding="utf-8") as page:
        page.write("\n".join(lines))


def build(output_dir):
    source_dir = os.path.join(output_dir, "src")
    html_dir = os.path.join(output_dir, "html")
    for stale in (source_dir, html_dir):
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(source_dir, mode=0o755)
    write_reference(source_dir)
    write_ansible_docs_inventory(source_dir)
    copy_guides(source_dir)
    write_playbooks_page(source_dir)
    shutil.copy(os.path.join(SITE_DIR, "index.rst"), source_dir)
    run(
        [
            os.path.join(TOOLS_BIN, "sphinx-build"),
            "-b",
            "html",
            "-W",
            "--keep-going",
            "-q",
            "-c",
            SITE_DIR,
            source_dir,
            html_dir,
        ]
    )
    return html_dir


if __name__ == "__main__":
    print(os.path.join(build(os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT), "index.html"))
