"""An environment's ``packages``: built once per distinct set into a read-only layer over the
toolbox, which every sandbox of the environment mounts (docs/architecture.md, "Environment
packages").

- **What is built.** ``pip`` requirements (PEP 508: a name, extras, version specifiers, markers;
  never a URL, a path or an option) and ``npm`` registry packages (a name, optionally ``@`` a
  version, range or tag), normalised and sorted, so two environments asking for the same set
  share one layer. Other managers are refused at the API (``packages_not_supported``).
- **Where.** ``<root>/<key>``, the key a hash of the recipe, what the layer sits on (the
  toolbox's key), the index and registry it came from, and the set (``layer_key``). A layer is
  built in ``.<key>.tmp`` and renamed: complete or absent; a flock makes two replicas on one host
  build it once.
- **How.** Outside every sandbox, by the toolbox's own ``pip`` (``pip_argv``): ``install
  --prefix`` over the toolbox, so what the toolbox already has is not installed again and its
  versions stay; ``--only-binary=:all:``, so no package's code runs during the build (an sdist's
  ``setup.py`` would run on the host); through the operator's index
  (``MOORAGE_PACKAGE_INDEX_URL``, else pip's own configuration). Then compiled for the path
  sandboxes see it at (``PACKAGES_PATH``), scripts pointed at the sandbox's ``python3``, and
  made read-only. npm installs into ``node/`` with ``--ignore-scripts`` (no install script runs on
  the host), through ``MOORAGE_PACKAGE_NPM_REGISTRY`` or npm's own configuration.
- **Use.** A sandbox mounts the layer read-only at ``PACKAGES_PATH``, ``bin/`` first on PATH;
  the agent's Python finds ``site-packages`` through ``PYTHONPATH``, which the runner gives the
  Claude Code CLI (and so every command the agent runs), never itself
  (``MOORAGE_AGENT_PYTHONPATH``): a package the environment pins cannot break the runner.
- **When.** Creating or updating an environment starts its build in the background; a session
  of that environment waits for it (its clients see a ``status`` ``building``); sessions of other
  environments never do. A failed build is remembered for ``RETRY_S``: sessions of the
  environment are refused at once with ``environment_build_failed`` and pip's own words, then
  the next one tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from packaging.requirements import InvalidRequirement, Requirement

from .bodies import BodyError, as_list, fail
from .errors import Code, SandboxError
from .metrics import Metrics
from .sandbox.base import PACKAGES_NODE, PACKAGES_PATH, PACKAGES_SITE
from .sandbox.toolbox_build import readonly, remove_built

log = structlog.get_logger(__name__)

RECIPE = b"moorage-packages 2"  # part of every key: bump it when ``build_layer`` changes what it makes
MAX_PACKAGES = 64
MAX_REQUIREMENT = 200
BUILT = ("npm", "pip")  # the managers layers are built for; the others are refused at the API
# A registry package (npm's name rules: lower case, optional @scope/), optionally @ a version,
# range or dist-tag; nothing that could be a URL, a path, git or an alias (no ':', '/', '#').
NPM_SPEC = re.compile(r"(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*(?:@[0-9A-Za-z.^~<>=*|+ -]{1,100})?")
RETRY_S = 300.0  # how long a failed build's error answers for its key before the next try
SIZE_FILE = ".size"  # a layer's size in bytes, written before it is made read-only


class BuildFailed(SandboxError):
    """An environment's packages could not be built; the message is pip's (its tail)."""

    code = Code.ENVIRONMENT_BUILD_FAILED


def pip_requirements(value: object, where: str) -> list[str]:
    """A ``packages.pip`` list checked and normalised (sorted, no duplicates; pure).

    Only what names packages on an index passes: ``name[extra]>=1,<2; markers``. A direct
    reference (``name @ https://…``, ``file:///…``), a path, a pip option (``--index-url …``,
    ``-r file``) or a line break is refused: the build runs on the host."""
    items = as_list(value, where)
    if len(items) > MAX_PACKAGES:
        raise fail(f"{where}: more than {MAX_PACKAGES} packages")
    out: set[str] = set()
    for n, raw in enumerate(items):
        at = f"{where}[{n}]"
        if not isinstance(raw, str) or not raw.strip():
            raise fail(f"{at} must be a requirement such as 'pandas' or 'tabulate==0.9.0'")
        text = raw.strip()
        if len(text) > MAX_REQUIREMENT or text.startswith("-") or any(c in text for c in "\r\n\0"):
            raise fail(f"{at} {raw[:80]!r} is not a requirement (no options, line breaks or long strings)")
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise fail(f"{at} {raw[:80]!r} is not a requirement: {exc}") from None
        if req.url is not None:
            raise fail(f"{at} {raw[:80]!r}: a direct reference (URL or path) is not allowed; name a package")
        out.add(str(req))
    return sorted(out)


def npm_packages(value: object, where: str) -> list[str]:
    """A ``packages.npm`` list checked and normalised (sorted, no duplicates; pure): a registry
    package name, optionally ``@`` a version, range or tag. Never a URL, git or file spec, alias
    (``npm:``) or option: the build runs on the host."""
    items = as_list(value, where)
    if len(items) > MAX_PACKAGES:
        raise fail(f"{where}: more than {MAX_PACKAGES} packages")
    out: set[str] = set()
    for n, raw in enumerate(items):
        text = raw.strip() if isinstance(raw, str) else ""
        if len(text) > MAX_REQUIREMENT or not NPM_SPEC.fullmatch(text):
            raise fail(
                f"{where}[{n}] {str(raw)[:80]!r} is not a registry package such as 'prettier' or "
                "'@scope/name@^1.2' (no URLs, git, file or alias specs, no options)"
            )
        out.add(text)
    return sorted(out)


def wanted(spec: Mapping[str, Any] | None) -> list[str]:
    """What an environment spec (``environments.Spec``) asks for, as one sorted list of
    ``pip:<requirement>`` and ``npm:<package>`` entries (what a layer's key names)."""
    if spec is None:
        return []
    packages = spec.get("config", {}).get("packages", {})
    return sorted(f"{manager}:{p}" for manager in BUILT for p in packages.get(manager) or [])


def of(manager: str, entries: Sequence[str]) -> list[str]:
    """The entries of one manager, without their prefix."""
    return [e.split(":", 1)[1] for e in entries if e.startswith(f"{manager}:")]


def layer_key(base: str, index_url: str, requirements: Sequence[str]) -> str:
    """What a layer's directory is named: a hash of everything that decides its content (pure)."""
    digest = hashlib.sha256()
    for part in (RECIPE, base.encode(), index_url.encode(), "\n".join(sorted(requirements)).encode()):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:16]


def pip_argv(python: str, prefix: Path, requirements: Sequence[str], index_url: str) -> list[str]:
    """The one command that installs ``requirements`` into ``prefix`` (pure)."""
    argv = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", "install", "--prefix", str(prefix)]
    argv += ["--only-binary=:all:", "--no-compile", "--no-warn-script-location", "--progress-bar", "off"]
    if index_url:
        argv += ["--index-url", index_url]
    return [*argv, "--", *requirements]


def npm_argv(npm: str, prefix: Path, packages: Sequence[str], registry: str) -> list[str]:
    """The one command that installs ``packages`` into ``prefix``: no package's lifecycle scripts
    run (``--ignore-scripts``: an ``install`` script would run on the host), nothing is audited or
    funded (no extra traffic) (pure)."""
    argv = [npm, "install", "--prefix", str(prefix), "--ignore-scripts", "--no-audit", "--no-fund"]
    argv += ["--no-update-notifier", "--omit=dev", "--no-package-lock", "--loglevel=error"]
    if registry:
        argv += ["--registry", registry]
    return [*argv, "--", *packages]


def script_for_sandbox(data: bytes) -> bytes | None:
    """A console script pip wrote (its shebang names the host interpreter) with a shebang that
    runs in the sandbox, or None: not a Python script."""
    first, sep, rest = data.partition(b"\n")
    if not first.startswith(b"#!") or b"python" not in first or b"\0" in data[:1024]:
        return None
    return b"#!/usr/bin/env python3" + sep + rest


def _tail(text: str, limit: int = 2000) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines)[-limit:]


def _size(root: Path) -> int:
    total = 0
    for top, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(top) / name).lstat().st_size
    return total


def _run(argv: list[str], what: str, timeout_s: float, env: dict[str, str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise BuildFailed(f"{what} did not finish within {timeout_s:g}s") from None
    except FileNotFoundError:
        raise BuildFailed(f"{what} is not installed on the service's host") from None
    if done.returncode != 0:
        raise BuildFailed(f"{what} failed:\n{_tail(done.stderr or done.stdout)}")


def _pip_part(python: str, tmp: Path, requirements: list[str], index_url: str, timeout_s: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    site = tmp / PACKAGES_SITE
    (tmp / "bin").mkdir(parents=True, exist_ok=True)
    if not requirements:
        site.mkdir(parents=True)
        return
    _run(pip_argv(python, tmp, requirements, index_url), "pip install", timeout_s, env)
    sites = sorted(tmp.glob("lib/python3*/site-packages"))
    if sites:
        sites[-1].rename(site)
    else:  # everything asked for is in the toolbox already
        site.mkdir(parents=True)
    shutil.rmtree(tmp / "lib", ignore_errors=True)
    for script in (tmp / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            new = script_for_sandbox(script.read_bytes())
            if new is not None:
                script.write_bytes(new)
    # Compiled now, named for where sandboxes see them (they cannot write .pyc files).
    compiled = [python, "-m", "compileall", "-q", "-j", "0", "-s", str(tmp), "-p", PACKAGES_PATH, str(site)]
    subprocess.run(compiled, capture_output=True, check=False, timeout=timeout_s, env=env)


def build_layer(
    python: str, final: Path, wanted_: Sequence[str], index_url: str, timeout_s: float, npm_registry: str = ""
) -> Path:
    """The layer at ``final`` for ``wanted_`` (``wanted``'s entries): found, or built once
    (blocking; run it in a thread). Raises ``BuildFailed`` with pip's or npm's words."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another replica on this host builds the same key
        if final.is_dir():
            return final
        tmp = final.with_name(f".{final.name}.tmp")
        if tmp.exists():  # an interrupted build
            remove_built(tmp)
        try:
            _pip_part(python, tmp, of("pip", wanted_), index_url, timeout_s)
            if npm := of("npm", wanted_):
                npm_bin = shutil.which("npm") or "npm"
                argv = npm_argv(npm_bin, tmp / PACKAGES_NODE, npm, npm_registry)
                _run(argv, "npm install", timeout_s, dict(os.environ))
            (tmp / SIZE_FILE).write_text(str(_size(tmp)))
            readonly(tmp)
            tmp.rename(final)
        except BaseException:
            remove_built(tmp)
            raise
    return final


def cache_bytes(root: Path) -> int:
    """The bytes every built layer under ``root`` holds (each recorded its own size)."""
    total = 0
    for size in root.glob(f"*/{SIZE_FILE}"):
        with contextlib.suppress(OSError, ValueError):
            total += int(size.read_text())
    return total


@dataclass(frozen=True)
class Builder:
    """What builds layers on this host: the interpreter whose pip installs them (the toolbox's,
    else the base Python), what its key says they sit on, and the operator's index."""

    python: str
    base: str
    index_url: str = ""
    timeout_s: float = 600.0
    npm_registry: str = ""


def builder(toolbox: Path | None, index_url: str, timeout_s: float, npm_registry: str = "") -> Builder:
    """Layers over ``toolbox`` (toolbox.resolve()d), built by its pip; without one, over the base
    Python (which then needs pip of its own)."""
    if toolbox is not None:
        return Builder(str(toolbox / "bin" / "python3"), f"toolbox {toolbox.name}", index_url, timeout_s, npm_registry)
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return Builder(base, f"python {base} {sys.version.split()[0]}", index_url, timeout_s, npm_registry)


class PackageLayers:
    """The layers of this host's environments: built once each, in the background or on demand."""

    def __init__(self, root: Path, builder: Builder, metrics: Metrics | None = None) -> None:
        self.root = root
        self.builder = builder
        self.metrics = metrics
        self._building: dict[str, asyncio.Task[Path]] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # key -> (when, pip's words)

    def key(self, requirements: Sequence[str]) -> str:
        indexes = f"{self.builder.index_url}\n{self.builder.npm_registry}"
        return layer_key(self.builder.base, indexes, requirements)

    def built(self, spec: Mapping[str, Any] | None) -> bool:
        """Whether the environment's layer is on disk (or it needs none)."""
        requirements = wanted(spec)
        return not requirements or (self.root / self.key(requirements)).is_dir()

    def failure(self, spec: Mapping[str, Any] | None) -> str | None:
        """Why the environment's layer could not be built, if it failed within ``RETRY_S``."""
        requirements = wanted(spec)
        if not requirements:
            return None
        failed = self._failed.get(self.key(requirements))
        if failed is None or time.monotonic() - failed[0] > RETRY_S:
            return None
        return failed[1]

    def prepare(self, spec: Mapping[str, Any] | None) -> None:
        """Start building the environment's layer, if it has packages and it is not built."""
        if requirements := wanted(spec):
            task = self._task(requirements)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # reported by _build

    async def ensure(self, spec: Mapping[str, Any] | None) -> Path | None:
        """The environment's layer (built now if it must be); None: it has no packages."""
        requirements = wanted(spec)
        if not requirements:
            return None
        return await asyncio.shield(self._task(requirements))

    def _task(self, requirements: list[str]) -> asyncio.Task[Path]:
        key = self.key(requirements)
        task = self._building.get(key)
        if task is None:
            task = self._building[key] = asyncio.create_task(self._build(key, requirements), name=f"packages-{key}")
        return task

    async def _build(self, key: str, requirements: list[str]) -> Path:
        final = self.root / key
        try:
            if final.is_dir():
                return final
            self._failed.pop(key, None)
            t0 = time.monotonic()
            log.info("packages_build_started", key=key, packages=requirements)
            b = self.builder
            try:
                path = await asyncio.to_thread(
                    build_layer, b.python, final, requirements, b.index_url, b.timeout_s, b.npm_registry
                )
            except BuildFailed as exc:
                self._failed[key] = (time.monotonic(), exc.message)
                log.warning("packages_build_failed", key=key, packages=requirements, error=exc.message[-500:])
                if self.metrics is not None:
                    self.metrics.package_builds.labels("failed").inc()
                raise
            seconds = time.monotonic() - t0
            log.info("packages_built", key=key, seconds=round(seconds, 2), path=str(path))
            if self.metrics is not None:
                self.metrics.package_builds.labels("ok").inc()
                self.metrics.package_build_seconds.observe(seconds)
                self.metrics.package_cache_bytes.set(await asyncio.to_thread(cache_bytes, self.root))
            return path
        finally:
            self._building.pop(key, None)

    async def close(self) -> None:
        for task in list(self._building.values()):
            task.cancel()
        await asyncio.gather(*self._building.values(), return_exceptions=True)


def sandbox_layer_problem(backend: str, entries: Sequence[str] = ()) -> str | None:
    """Why sandboxes of ``backend`` cannot use a layer of ``entries`` (``wanted``'s), or None (pure).
    Kubernetes pods cannot mount the service's disk; the Docker image has no Node.js to run npm
    packages with (local sandboxes use the host's, under /usr)."""
    if backend not in ("local", "docker"):
        return (
            f"this server's {backend} sandboxes cannot mount environment packages (they are built on the "
            "service's host); bake them into the sandbox image (container/toolbox.txt) instead"
        )
    if backend == "docker" and of("npm", entries):
        return "this server's docker sandboxes have no Node.js to run npm packages; bake them into the sandbox image"
    return None


def packages_not_supported(backend: str, entries: Sequence[str] = ()) -> BodyError | None:
    """The refusal of an environment with packages on a server whose sandboxes cannot use them."""
    why = sandbox_layer_problem(backend, entries)
    return BodyError(f"config.packages: {why}", code=Code.PACKAGES_NOT_SUPPORTED) if why else None
