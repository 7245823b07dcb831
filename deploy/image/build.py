"""Build the FogVerse node image with podman, once per content: ``make image``.

    python deploy/image/build.py                        # base built here from Debian's packages
    python deploy/image/build.py --base python:3.11-slim   # a registry's base instead
    python deploy/image/build.py --broker               # also the demo's broker image

Prints the image's name (``localhost/fogverse-node:<content hash>``, also tagged ``:latest``)
on stdout. The tag is a hash of everything that goes into the image (the Containerfile, the
project's metadata and sources, the extras, the base image's id): when an image with that tag
exists, nothing is built. The steps, each skipped when already done:

1. podman, runc and debootstrap from Debian (``apt-get install``, as root);
2. the base (default): ``debootstrap --variant=minbase bookworm`` with python3 and its venv
   module, from the mirror apt already uses, imported as ``localhost/fogverse-base:bookworm``
   (no registry is needed, or reachable, on these machines);
3. FogVerse's wheel and every dependency's, built on the host (``pip wheel``), so the image
   build installs them with ``--no-index`` and needs no network or certificates;
4. ``podman build`` of deploy/image/Containerfile;
5. with ``--broker``, the demo's broker image (deploy/image/Containerfile.broker: the node
   image, Debian's Java runtime and the Kafka jars ``fogverse broker`` gathered on the host),
   whose name is printed on a second line.

Podman runs with deploy/podman/containers.conf (``CONTAINERS_CONF``) unless the environment
names another. Concurrent builds (two test processes) wait on one lock file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "BASE_IMAGE",
    "BROKER_IMAGE",
    "CONTAINERS_CONF",
    "DEFAULT_EXTRAS",
    "IMAGE",
    "build",
    "build_broker",
    "ensure_tools",
    "podman_env",
]

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "image" / "Containerfile"
BROKER_CONTAINERFILE = ROOT / "deploy" / "image" / "Containerfile.broker"
BROKER_IMAGE = "localhost/fogverse-broker"
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
IMAGE = "localhost/fogverse-node"
BASE_IMAGE = "localhost/fogverse-base:bookworm"
DEFAULT_EXTRAS = "metrics,onnx,demo,view,autoscale,docker,kubernetes"
# What the base needs beyond minbase: the interpreter and its venv module (ensurepip).
BASE_PACKAGES = ("python3", "python3-venv")
TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}
# The image's content: these paths (files, or every file under a folder) are hashed into its tag.
SOURCES = (
    "pyproject.toml",
    "README.md",
    "fogverse",
    "processors",
    "examples",
    "deploy/image/Containerfile",
)
# Not part of the image: what the examples write when run on the host.
EXCLUDED = ("__pycache__", "output")


def log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """``$FOGVERSE_CACHE_DIR/image`` (default ``~/.cache/fogverse/image``), as the broker's jars."""
    override = os.environ.get("FOGVERSE_CACHE_DIR")
    root = Path(override).expanduser() if override else Path.home() / ".cache" / "fogverse"
    return root / "image"


def podman_env() -> dict[str, str]:
    """The environment podman runs with: this project's containers.conf unless one is set."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(cmd))
    # Only the images' names go to stdout (callers read them): the tools' output goes to stderr.
    kwargs.setdefault("stdout", sys.stderr)
    return subprocess.run(cmd, check=True, text=True, env=podman_env(), **kwargs)  # type: ignore[call-overload]


def ensure_tools() -> None:
    """Install podman, runc and debootstrap from Debian if any is missing (needs root)."""
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not missing and Path("/usr/sbin/runc").exists():
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt-get (a test installing its own tools) may hold dpkg's lock: wait for it.
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-q"]
    with _lock("apt"):
        subprocess.run([*apt, "update"], check=True, env=env)
        subprocess.run([*apt, "install", "-y", *TOOLS.values()], check=True, env=env)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".{name}.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def image_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["podman", "image", "exists", name], env=podman_env(), check=False
        ).returncode
        == 0
    )


def image_id(name: str) -> str:
    out = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", name],
        env=podman_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def apt_mirror() -> str:
    """The Debian mirror apt already uses (the first ``URIs:`` of a bookworm source)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
            )
            suites = fields.get("Suites", "").split()
            if "bookworm" in suites and "URIs" in fields:
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == "bookworm":
                return parts[1]
    return "http://deb.debian.org/debian"


def build_base() -> str:
    """``localhost/fogverse-base:bookworm``: Debian's minbase with python3, never pulled."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        started = time.monotonic()
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "bookworm",
                str(rootfs),
                apt_mirror(),
            ],
            stdout=subprocess.DEVNULL,
        )
        # apt's downloaded packages and lists are of no use in the image.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tarball = Path(tmp) / "base.tar"
        _run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."])
        _run(["podman", "import", str(tarball), BASE_IMAGE], stdout=subprocess.DEVNULL)
        log(f"base {BASE_IMAGE} built in {time.monotonic() - started:.0f} s")
    return BASE_IMAGE


def _excluded(path: Path) -> bool:
    return any(part in EXCLUDED for part in path.relative_to(ROOT).parts)


def content_hash(base_id: str, extras: str) -> str:
    digest = hashlib.sha256(f"{base_id}\n{extras}\n".encode())
    for name in SOURCES:
        path = ROOT / name
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and not _excluded(f) and f.suffix != ".pyc":
                digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def build_wheels(dest: Path, extras: str) -> None:
    """FogVerse's wheel and its dependencies' (for this host's Python, which the image's
    matches: 3.11 on glibc), into ``dest``."""
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(dest),
            f"{ROOT}[{extras}]",
        ],
        cwd=str(ROOT),
    )


def build(base: str | None = None, extras: str = DEFAULT_EXTRAS, *, force: bool = False) -> str:
    """Build (unless it exists) and return the node image's name."""
    ensure_tools()
    if sys.version_info[:2] != (3, 11):
        raise SystemExit(
            f"the wheels are built for this Python ({sys.version.split()[0]}); the image's is 3.11"
        )
    with _lock("build"):
        base = base or build_base()
        if not image_exists(base):
            _run(["podman", "pull", base])
        tag = f"{IMAGE}:{content_hash(image_id(base), extras)}"
        if image_exists(tag) and not force:
            log(f"{tag} is up to date")
        else:
            started = time.monotonic()
            with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="context-") as context:
                build_wheels(Path(context) / "wheels", extras)
                shutil.copytree(
                    ROOT / "examples",
                    Path(context) / "examples",
                    ignore=shutil.ignore_patterns(*EXCLUDED, "*.pyc"),
                )
                _run(
                    [
                        "podman",
                        "build",
                        "--network=host",
                        # The bind-mounted wheels are not part of a layer's cache key: a
                        # cached layer would keep an older FogVerse.
                        "--no-cache",
                        "--build-arg",
                        f"BASE={base}",
                        "--build-arg",
                        f"EXTRAS={extras}",
                        "-f",
                        str(CONTAINERFILE),
                        "-t",
                        tag,
                        context,
                    ]
                )
            log(f"{tag} built in {time.monotonic() - started:.0f} s")
        _run(["podman", "tag", tag, f"{IMAGE}:latest"])
    return tag


def build_broker(node: str, *, force: bool = False) -> str:
    """Build (unless it exists) and return the broker image's name, on top of ``node``."""
    from fogverse.broker.launcher import DEFAULT_KAFKA_VERSION, resolve_jars

    version = DEFAULT_KAFKA_VERSION
    with _lock("build"):
        digest = hashlib.sha256(
            f"{image_id(node)}\n{version}\n".encode() + BROKER_CONTAINERFILE.read_bytes()
        )
        tag = f"{BROKER_IMAGE}:{digest.hexdigest()[:12]}"
        if image_exists(tag) and not force:
            log(f"{tag} is up to date")
        else:
            started = time.monotonic()
            jars = resolve_jars(version)
            with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="context-") as context:
                shutil.copytree(jars, Path(context) / f"kafka-{version}")
                _run(
                    [
                        "podman",
                        "build",
                        "--network=host",
                        "--build-arg",
                        f"NODE={node}",
                        "--build-arg",
                        f"KAFKA_VERSION={version}",
                        "-f",
                        str(BROKER_CONTAINERFILE),
                        "-t",
                        tag,
                        context,
                    ]
                )
            log(f"{tag} built in {time.monotonic() - started:.0f} s")
        _run(["podman", "tag", tag, f"{BROKER_IMAGE}:latest"])
    return tag


KEEP_BUILDS = 3
"""Images of a repository kept besides the one just built: each source change builds one of
about a gigabyte (the wheels' layer is never cached), and other checkouts on this machine may
still be about to run theirs."""


def drop_stale(repository: str, keep: str) -> None:
    """Remove ``repository``'s images older than its :data:`KEEP_BUILDS` newest (never
    ``keep``); one a container still uses stays, as ``podman rmi`` refuses it."""
    listed = subprocess.run(
        [
            "podman",
            "images",
            "--noheading",
            "--sort",
            "created",  # newest first
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "--filter",
            f"reference={repository}",
        ],
        env=podman_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    builds = [
        name
        for name in listed.stdout.split()
        if name.startswith(f"{repository}:") and not name.endswith((":latest", ":<none>"))
    ]
    for name in builds[KEEP_BUILDS:]:
        if name != keep:
            log(f"removing the stale image {name}")
            subprocess.run(
                ["podman", "rmi", name], env=podman_env(), capture_output=True, check=False
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="base image (default: one built here from Debian's packages)")
    p.add_argument("--extras", default=DEFAULT_EXTRAS, help="FogVerse extras to install")
    p.add_argument("--force", action="store_true", help="build even if the image exists")
    p.add_argument("--broker", action="store_true", help="also build the demo's broker image")
    args = p.parse_args(argv)
    node = build(args.base, args.extras, force=args.force)
    print(node, flush=True)
    if args.broker:
        broker = build_broker(node, force=args.force)
        print(broker, flush=True)
        drop_stale(BROKER_IMAGE, broker)  # first: a broker image is a child of a node image
    drop_stale(IMAGE, node)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
