"""The ecosystem's own gates, as a contributor runs them (README, Development): ansible-lint with the
production profile, ansible-doc for every plugin, antsibull-docs lint, the HTML docs site, and the
changelog that antsibull-changelog generates."""

import glob
import html
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS_ROOT = os.path.join(REPO, ".cache", "collections")
COLLECTION_DIR = os.path.join(COLLECTIONS_ROOT, "ansible_collections", "netbpf", "tcp_rto")
TOOLS_BIN = os.path.dirname(sys.executable)
COLLECTION = "netbpf.tcp_rto"


def tool(*command, cwd=REPO):
    """Run a tool of the test environment on the collection; its output, stdout and stderr together."""
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT,
        PATH=TOOLS_BIN + os.pathsep + os.environ["PATH"],
        NO_COLOR="1",
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run(
        [os.path.join(TOOLS_BIN, command[0]), *command[1:]],
        cwd=cwd,
        env=env,
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    return proc.returncode, proc.stdout


def collection_plugins():
    """(type, name) of every documented plugin and role, from the files of the collection."""
    found = []
    for plugin_type, directory in (("module", "plugins/modules"), ("filter", "plugins/filter")):
        for path in sorted(glob.glob(os.path.join(REPO, directory, "*.py"))):
            found.append((plugin_type, os.path.splitext(os.path.basename(path))[0]))
    for path in sorted(glob.glob(os.path.join(REPO, "roles", "*", "meta", "argument_specs.yml"))):
        found.append(("role", path.split(os.sep)[-3]))
    return found


def test_ansible_lint_production_profile():
    returncode, output = tool("ansible-lint", "--profile", "production", "--strict")
    assert returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output


@pytest.mark.parametrize("plugin_type", ["module", "filter", "role"])
def test_ansible_doc_lists_every_plugin(plugin_type):
    """A plugin whose documentation does not load drops out of the list (with only a warning)."""
    returncode, output = tool("ansible-doc", "-t", plugin_type, "--list", "--json", COLLECTION)
    assert returncode == 0, output
    listed = sorted(json.loads(output[output.index("{") :]))
    expected = sorted("%s.%s" % (COLLECTION, name) for kind, name in collection_plugins() if kind == plugin_type)
    assert listed == expected


@pytest.mark.parametrize(("plugin_type", "name"), collection_plugins(), ids=lambda value: value)
def test_ansible_doc_renders(plugin_type, name):
    fqcn = "%s.%s" % (COLLECTION, name)
    returncode, output = tool("ansible-doc", "-t", plugin_type, fqcn)
    assert returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output
    returncode, output = tool("ansible-doc", "-t", plugin_type, "--json", fqcn)
    assert returncode == 0, output
    doc = json.loads(output)[fqcn]
    if plugin_type == "role":
        entry_points = doc["entry_points"]
        assert entry_points["main"]["short_description"] and entry_points["main"]["options"]
    else:
        assert doc["doc"]["short_description"] and doc["doc"]["options"]
        assert doc["examples"].strip() and doc["return"]


def test_antsibull_docs_lint():
    returncode, output = tool("antsibull-docs", "lint-collection-docs", "--plugin-docs", ".", cwd=COLLECTION_DIR)
    assert returncode == 0, output
    assert output.strip() == ""


@pytest.fixture(scope="module")
def docs_site(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("docs-site"))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "docs", "site", "build.py"), output_dir],
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    assert proc.returncode == 0, proc.stdout
    return os.path.join(output_dir, "html")


def page_text(html_dir, page):
    """The words of a built page, without markup."""
    with open(os.path.join(html_dir, page), encoding="utf-8") as handle:
        markup = handle.read()
    markup = re.sub(r"<(script|style)\b.*?</\1>", " ", markup, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("index.html", ["netbpf.tcp_rto", "Modules, filter and role", "Playbooks", "Guides", "Changelog"]),
        (
            "reference/tcp_initial_rto_module.html",
            ["netbpf.tcp_rto.tcp_initial_rto module", "rto_ms", "lock_timeout", "syn_give_up_s", "Examples"],
        ),
        ("reference/tcp_initial_rto_info_module.html", ["tcp_initial_rto_info module", "unsupported_reasons"]),
        ("reference/report_table_filter.html", ["report_table filter", "markdown"]),
        ("reference/tcp_rto_role.html", ["tcp_rto role", "Entry point rollback", "tcp_rto_health_command"]),
        (
            "playbooks.html",
            ["netbpf.tcp_rto.rollout", "tcp_rto_batches", "netbpf.tcp_rto.rollback", "tcp_rto_report_dir"],
        ),
        ("changelog.html", ["v0.1.0", "Release Summary", "New Modules", "New Roles", "New Playbooks"]),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_docs_site_page(docs_site, page, expected):
    text = page_text(docs_site, page)
    missing = [words for words in expected if words not in text]
    assert not missing, "%s lacks %s" % (page, missing)


def guide_titles():
    titles = []
    for path in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))):
        with open(path, encoding="utf-8") as handle:
            title = handle.readline()
        assert title.startswith("# "), "%s must start with its title: # Title" % path
        titles.append((os.path.splitext(os.path.basename(path))[0], title[2:].replace("`", "").strip()))
    return titles


@pytest.mark.parametrize(("guide", "title"), guide_titles(), ids=lambda value: value)
def test_docs_site_has_every_guide(docs_site, guide, title):
    """Each docs/*.md is a page of the site with its title, in the navigation of the start page."""
    assert title in page_text(docs_site, os.path.join("guides", guide + ".html"))
    with open(os.path.join(docs_site, "index.html"), encoding="utf-8") as handle:
        assert 'href="guides/%s.html"' % guide in handle.read()


def test_changelog_fragments_and_changelog_yaml_lint():
    returncode, output = tool("antsibull-changelog", "lint")
    assert returncode == 0 and output.strip() == "", output
    returncode, output = tool("antsibull-changelog", "lint-changelog-yaml", "--strict", "changelogs/changelog.yaml")
    assert returncode == 0 and output.strip() == "", output


def test_changelog_is_generated_from_changelog_yaml(tmp_path):
    """CHANGELOG.md is what antsibull-changelog makes of changelogs/changelog.yaml, no hand edits."""
    shutil.copytree(os.path.join(REPO, "changelogs"), str(tmp_path / "changelogs"))
    for name in ("galaxy.yml", "CHANGELOG.md"):
        shutil.copy(os.path.join(REPO, name), str(tmp_path))
    returncode, output = tool("antsibull-changelog", "generate", cwd=str(tmp_path))
    assert returncode == 0, output
    for name in ("CHANGELOG.md", "changelogs/changelog.yaml"):
        with open(os.path.join(REPO, name), encoding="utf-8") as committed:
            with open(str(tmp_path / name), encoding="utf-8") as regenerated:
                assert regenerated.read() == committed.read(), (
                    "%s differs from what antsibull-changelog generates" % name
                )
