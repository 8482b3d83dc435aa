"""Debian's archive through a private apt configuration: the mirror this machine's apt uses, lists
and cache under .cache/kernels/apt, nothing in /etc/apt changed, every list checked with Debian's
archive keyring. Kernel images are resolved and downloaded here; only vmlinuz, config and the
sock_diag modules the probes need are kept, in .cache/kernels/<suite>/.
"""

import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(REPO, ".cache", "kernels")

# (cache key, suites searched, image package): the newest matching package of those suites.
KERNELS = [
    ("bullseye", ("bullseye", "bullseye-security"), r"linux-image-5\.10\.\S+-cloud-amd64"),
    ("bookworm", ("bookworm", "bookworm-security"), r"linux-image-6\.1\.\S+-cloud-amd64"),
    ("trixie", ("trixie", "trixie-security"), r"linux-image-6\.12\.\S+-cloud-amd64"),
    # 6.19 and later images moved to linux-binary-* packages
    ("trixie-backports", ("trixie-backports",), r"linux-image-6\.1[6-8]\.\S+-cloud-amd64"),
]

# Modules Debian builds that the guest (no modprobe) insmods at boot, in load order, by their path
# under kernel/: the probes read request sockets through NETLINK_SOCK_DIAG, whose TCP handler they
# are (a host loads them on demand); the telemetry and auto scenarios delay and drop packets with
# netem; the auto scenarios reach hosts in a network namespace over a veth pair.
GUEST_MODULES = [
    "net/ipv4/inet_diag.ko",
    "net/ipv4/tcp_diag.ko",
    "net/sched/sch_netem.ko",
    "drivers/net/veth.ko",
]
GUEST_MODULE_FILES = [os.path.basename(path) for path in GUEST_MODULES]
KERNEL_FORMAT = 4  # bump when what is kept per kernel changes
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class MatrixError(Exception):
    pass


def log(message):
    print("[kernels] " + message, file=sys.stderr, flush=True)


def run(command, **kwargs):
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.run(command, universal_newlines=True, **kwargs, check=False)
    if proc.returncode != 0:
        raise MatrixError(
            "%s failed (%d):\n%s" % (" ".join(command[:3]), proc.returncode, (proc.stderr or proc.stdout or "")[-2000:])
        )
    return proc.stdout


def _sources_entries():
    """(uris, suites) of every enabled apt source of this machine, one-line and deb822 formats."""
    entries = []
    paths = [
        "/etc/apt/sources.list",
        *sorted(
            os.path.join("/etc/apt/sources.list.d", name)
            for name in os.listdir("/etc/apt/sources.list.d")
            if name.endswith((".list", ".sources"))
        ),
    ]
    for path in paths:
        try:
            text = open(path).read()
        except OSError:
            continue
        if path.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if fields.get("Enabled", "yes") != "no" and "deb" in fields.get("Types", "").split():
                    entries.append((fields.get("URIs", "").split(), fields.get("Suites", "").split()))
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append(([words[1]], [words[2]]))
    return entries


def debian_mirrors():
    """(archive URI, security URI or None): where this machine's apt gets its Debian release and
    that release's security updates. Every list is checked with Debian's archive keyring, so no
    other archive can slip in."""
    codename = re.search(r"^VERSION_CODENAME=(\S+)", open("/etc/os-release").read(), re.M).group(1)
    archive = security = None
    for uris, suites in _sources_entries():
        if codename in suites and archive is None:
            archive = uris[0]
        if codename + "-security" in suites and security is None:
            security = uris[0]
    if archive is None:
        raise MatrixError("this machine's apt sources (/etc/apt/sources.list*) have no Debian %s archive" % codename)
    return archive, security


class Apt:
    """apt-get and apt-cache with private lists, cache and sources under .cache/kernels/apt."""

    def __init__(self, root):
        self.root = root
        self.sources = os.path.join(root, "sources.list")
        self.options = []
        for key, value in (
            ("Dir::Etc::sourcelist", self.sources),
            ("Dir::Etc::sourceparts", os.path.join(root, "none")),
            ("Dir::State", os.path.join(root, "state")),
            ("Dir::State::status", os.path.join(root, "status")),
            ("Dir::Cache", os.path.join(root, "cache")),
            ("Debug::NoLocking", "1"),
            ("APT::Architecture", "amd64"),
            ("APT::Architectures", "amd64"),
            ("Acquire::Languages", "none"),
            ("APT::Sandbox::User", "root"),
        ):
            self.options += ["-o", "%s=%s" % (key, value)]

    def update(self, suites):
        archive, security = debian_mirrors()
        for sub in ("none", "state/lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        open(os.path.join(self.root, "status"), "a").close()
        with open(self.sources, "w") as handle:
            for suite in sorted(suites):
                uri = security if suite.endswith("-security") else archive
                if uri:
                    handle.write("deb [signed-by=%s] %s %s main\n" % (DEBIAN_KEYRING, uri, suite))
        run(["apt-get", "-q", *self.options, "update"])

    def cache(self, *args):
        return run(["apt-cache", *self.options, *list(args)])

    def download(self, packages, directory):
        run(["apt-get", "-q", *self.options, "download", *packages], cwd=directory)
        return [os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".deb")]


def _version_cmp(left, right):
    if left == right:
        return 0
    return 1 if subprocess.call(["dpkg", "--compare-versions", left, "gt", right]) == 0 else -1


def resolve_kernels(apt, kernels):
    """{key: (package, version, suite)}: the newest image of each entry of kernels."""
    names = apt.cache("pkgnames", "linux-image-").split()
    wanted = sorted(name for name in names if any(re.match(pattern + "$", name) for _k, _s, pattern in kernels))
    if not wanted:
        raise MatrixError("no kernel image package found in the archive")
    found = {}
    for line in apt.cache("madison", *wanted).splitlines():
        # linux-image-... | 5.10.262-1 | http://mirror/debian-security bullseye-security/main amd64 Packages
        parts = [part.strip() for part in line.split("|")]
        if len(parts) != 3:
            continue
        package, version, source = parts
        suite = source.split()[1].split("/")[0]
        for key, suites, pattern in kernels:
            if suite in suites and re.match(pattern + "$", package):
                best = found.get(key)
                if best is None or _version_cmp(version, best[1]) > 0:
                    found[key] = (package, version, suite)
    missing = [key for key, _s, _p in kernels if key not in found]
    if missing:
        raise MatrixError("no kernel image for %s in the archive" % ", ".join(missing))
    return found


def extract_kernel(deb, dest):
    """vmlinuz, config and the GUEST_MODULES out of a kernel .deb into dest/ (modules decompressed,
    by their file name); -> the kernel release. Stops reading the archive once all are out."""
    wanted = ["vmlinuz", "config", *GUEST_MODULE_FILES]
    pattern = re.compile(
        r"^\./(?:boot/(vmlinuz|config)-(.+)"
        r"|(?:usr/)?lib/modules/[^/]+/kernel/(%s)(\.xz)?)$" % "|".join(re.escape(path) for path in GUEST_MODULES)
    )
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
    release, got = None, set()
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                match = pattern.match(member.name)
                if not match or not member.isfile():
                    continue
                name = match.group(1) or os.path.basename(match.group(3))
                release = match.group(2) or release
                data = archive.extractfile(member).read()
                with open(os.path.join(dest, name), "wb") as out:
                    out.write(lzma.decompress(data) if match.group(4) else data)
                got.add(name)
                if got == set(wanted):
                    break
    finally:
        proc.kill()
        proc.wait()
    if got != set(wanted):
        raise MatrixError("%s lacks %s" % (deb, ", ".join(sorted(set(wanted) - got))))
    return release


def cached_kernel(key):
    """The cached kernel of a KERNELS key (its kernel.json), or None."""
    try:
        meta = json.load(open(os.path.join(CACHE, key, "kernel.json")))
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == KERNEL_FORMAT else None


def fetch_kernels(apt, refresh, keys):
    """{key: kernel dict} from the cache, downloading what is missing (with refresh: what is not
    the newest in the archive)."""
    result = {key: cached_kernel(key) for key in keys}
    todo = [key for key in keys if refresh or result[key] is None]
    if not todo:
        return result
    log("resolving kernel images in Debian's archive: %s" % ", ".join(todo))
    chosen = resolve_kernels(apt, [entry for entry in KERNELS if entry[0] in todo])
    needed = [
        key
        for key in todo
        if result[key] is None or (result[key]["package"], result[key]["version"]) != chosen[key][:2]
    ]
    if not needed:
        return result
    log("downloading %s" % ", ".join("%s=%s" % chosen[key][:2] for key in needed))
    work = tempfile.mkdtemp(dir=CACHE)
    try:
        debs = apt.download(["%s=%s" % chosen[key][:2] for key in needed], work)
        for key in needed:
            package, version, suite = chosen[key]
            deb = next(path for path in debs if os.path.basename(path).startswith(package + "_"))
            dest = os.path.join(CACHE, key)
            shutil.rmtree(dest, ignore_errors=True)
            os.makedirs(dest)
            release = extract_kernel(deb, dest)
            hz = int(re.search(r"^CONFIG_HZ=(\d+)$", open(os.path.join(dest, "config")).read(), re.M).group(1))
            result[key] = dict(
                format=KERNEL_FORMAT,
                key=key,
                package=package,
                version=version,
                suite=suite,
                release=release,
                hz=hz,
                modules=GUEST_MODULE_FILES,
            )
            with open(os.path.join(dest, "kernel.json"), "w") as handle:
                json.dump(result[key], handle, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
