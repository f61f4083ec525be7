"""An environment's ``packages`` (issue 17 item 2, packages.py), with the official ``anthropic``
client against the service as a process; the real CLI runs the Bash tool, only the model is
scripted, and the index is a directory of wheels made here (``file://``: no network needed).

An environment asking for a package gets it built once, over the toolbox, into a read-only layer
that its sessions' ``python3`` imports and whose console scripts are on PATH; a second environment
with the same set shares the layer; a package that shadows one of the runner's own dependencies
reaches the agent's commands, never the runner. A package that cannot be built is a clear error
on the environment (``environment_build_failed`` with pip's words), while sessions of other
environments start and work."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import pytest
from ma_client import KEYS, TOOLSET, client, code, said, turn
from moorage.testing.scripted_model import ScriptedModelServer
from support import Service, docker_sandbox_image, docker_settings, events, metric_value, run_service, wait_until

PKG = "moorage-demo-pkg"
MODULE = """
def hello():
    return "hello from the layer"

def main():
    print("demo-hello says hi")
"""
# A package the runner imports (claude_agent_sdk needs anyio): if the layer reached the runner's
# own sys.path, this would replace it and no session of the environment could start.
SHADOW = 'raise ImportError("the environment\'s anyio")\n'


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(index: Path, name: str, version: str, files: dict[str, str], requires: list[str]) -> None:
    """A pure-Python wheel of ``files`` in ``index`` laid out as a simple index pip reads over file://."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents = {path: body.encode() for path, body in files.items()}
    contents[f"{info}/METADATA"] = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    ).encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: moorage-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    contents[f"{info}/entry_points.txt"] = f"[console_scripts]\ndemo-hello = {dist}:main\n".encode()
    record = [_record_line(path, data) for path, data in contents.items()] + [f"{info}/RECORD,,"]
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    project = index / name
    project.mkdir(parents=True, exist_ok=True)
    wheel = f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(project / wheel, "w") as zf:
        for path, data in contents.items():
            zf.writestr(path, data)
    (project / "index.html").write_text(f'<html><body><a href="{wheel}">{wheel}</a></body></html>\n')


@pytest.fixture
def index(tmp_path: Path) -> Path:
    simple = tmp_path / "simple"
    files = {"moorage_demo_pkg/__init__.py": MODULE, "anyio/__init__.py": SHADOW}
    write_wheel(simple, PKG, "1.0", files, requires=["numpy"])  # numpy: the toolbox has it
    return simple


def packages(*pip: str) -> Any:
    return {"type": "cloud", "packages": {"type": "packages", "pip": list(pip)}}


def probe(toolbox: str) -> str:
    """The agent's commands: the layer's module and script, the toolbox's numpy (under
    ``toolbox``: not installed again), the layer's shadowing anyio, and a write into the layer."""
    return (
        "bash python3 -c 'import moorage_demo_pkg, numpy; print(moorage_demo_pkg.hello(), moorage_demo_pkg.__file__,"
        f' numpy.__file__.startswith("{toolbox}/"))\'; demo-hello;'
        " python3 -c 'import anyio' 2>&1 | tail -1;"
        " touch /opt/moorage/packages/site-packages/x 2>&1 | grep -o 'Read-only file system'"
    )


def the_layer_reaches_the_agent(svc: Service, cache: Path, toolbox: str) -> tuple[anthropic.Anthropic, str]:
    """An environment of the package, a session of it, the probe: (the client, the agent's id)."""
    api = client(svc)
    agent = api.beta.agents.create(name="Analyst", model="claude-opus-5", tools=[TOOLSET])
    env = api.beta.environments.create(name=f"pkgs-{time.monotonic_ns()}", config=packages(f"{PKG}==1.0"))
    assert env.config.type == "cloud" and env.config.packages.pip == [f"{PKG}==1.0"]
    session = api.beta.sessions.create(agent=agent.id, environment_id=env.id)
    words = said(turn(api, session.id, probe(toolbox)))
    assert words.splitlines() == [
        "tool said: hello from the layer /opt/moorage/packages/site-packages/moorage_demo_pkg/__init__.py True",
        "demo-hello says hi",
        "ImportError: the environment's anyio",  # the agent's python sees the layer first...
        "Read-only file system",
    ], words  # ...and the runner, which imports the real anyio, started the session
    (layer,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    # Built over the toolbox: what it has (numpy) was not installed again.
    assert (layer / "site-packages" / "moorage_demo_pkg").is_dir()
    assert not (layer / "site-packages" / "numpy").exists()
    assert metric_value(svc, "moorage_package_builds_total", outcome="ok") == 1
    assert metric_value(svc, "moorage_package_cache_bytes") > 0
    return api, agent.id


def test_an_environments_pip_packages_are_built_once_over_the_toolbox_and_reach_the_agent(
    model: ScriptedModelServer, index: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "layers"
    with run_service(
        model.url,
        MOORAGE_API_KEYS=KEYS,
        MOORAGE_PACKAGE_INDEX_URL=index.as_uri(),
        MOORAGE_PACKAGE_CACHE_DIR=str(cache),
    ) as svc:
        assert events(svc, "sandbox_toolbox"), "no toolbox: run `make toolbox`"
        api, agent_id = the_layer_reaches_the_agent(svc, cache, "/opt/moorage/toolbox")

        # Another environment with the same set shares the layer: no second build.
        twin = api.beta.environments.create(name=f"twin-{time.monotonic_ns()}", config=packages(f"{PKG} == 1.0"))
        again = api.beta.sessions.create(agent=agent_id, environment_id=twin.id)
        assert said(turn(api, again.id, "bash demo-hello")) == "tool said: demo-hello says hi"
        assert metric_value(svc, "moorage_package_builds_total", outcome="ok") == 1
        assert len(events(svc, "packages_build_started")) == 1


def test_pip_packages_reach_the_agent_on_the_docker_backend_too(
    model: ScriptedModelServer, index: Path, tmp_path: Path
) -> None:
    """The same layer, bind-mounted read-only into the container over the image's venv (the same
    lock as the host's toolbox); the container's runner is untouched by it."""
    image, why_not = docker_sandbox_image()
    if image is None:
        pytest.skip(why_not)
    cache = tmp_path / "layers"
    settings = {"MOORAGE_PACKAGE_INDEX_URL": index.as_uri(), "MOORAGE_PACKAGE_CACHE_DIR": str(cache)}
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, **docker_settings(image), **settings) as svc:
        the_layer_reaches_the_agent(svc, cache, "/opt/moorage/venv")


def test_a_package_that_cannot_be_built_is_an_error_on_its_environment_only(
    model: ScriptedModelServer, index: Path, tmp_path: Path
) -> None:
    with run_service(
        model.url,
        MOORAGE_API_KEYS=KEYS,
        MOORAGE_PACKAGE_INDEX_URL=index.as_uri(),
        MOORAGE_PACKAGE_CACHE_DIR=str(tmp_path / "layers"),
    ) as svc:
        api = client(svc)
        agent = api.beta.agents.create(name="Analyst", model="claude-opus-5", tools=[TOOLSET])
        broken = api.beta.environments.create(name=f"broken-{time.monotonic_ns()}", config=packages("moorage-missing"))
        wait_until(
            lambda: metric_value(svc, "moorage_package_builds_total", outcome="failed") == 1, 60, "the build to fail"
        )
        with pytest.raises(anthropic.BadRequestError) as caught:
            api.beta.sessions.create(agent=agent.id, environment_id=broken.id)
        assert code(caught.value) == "environment_build_failed"
        message = str(caught.value.body["error"]["message"])  # type: ignore[index]
        assert broken.id in message and "moorage-missing" in message, message  # pip's own words

        # Sessions of other environments are not held up by it.
        plain = api.beta.environments.create(name=f"plain-{time.monotonic_ns()}")
        session = api.beta.sessions.create(agent=agent.id, environment_id=plain.id)
        assert said(turn(api, session.id, "bash echo fine")) == "tool said: fine"

        # Packages this server does not build are refused when the environment is made.
        with pytest.raises(anthropic.BadRequestError) as refused:
            api.beta.environments.create(
                name=f"apt-{time.monotonic_ns()}", config={"type": "cloud", "packages": {"apt": ["jq"]}}
            )
        assert code(refused.value) == "packages_not_supported"


JS_PKG = "moorage-demo-js"


def manifest_of(marker: Path) -> dict[str, Any]:
    script = f"node -e \"require('fs').writeFileSync('{marker}', 'ran')\""
    return {
        "name": JS_PKG,
        "version": "1.0.0",
        "main": "index.js",
        "bin": {"demo-js": "cli.js"},
        "scripts": {"postinstall": script},
    }


def npm_tarball(marker: Path) -> bytes:
    """A registry tarball whose ``postinstall`` would leave ``marker`` on the host if it ran."""
    files = {
        "package/package.json": json.dumps(manifest_of(marker)),
        "package/index.js": 'module.exports = () => "hello from npm";\n',
        "package/cli.js": "#!/usr/bin/env node\nconsole.log('demo-js says hi');\n",
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text_ in files.items():
            data = text_.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name.endswith("cli.js") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def npm_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A registry serving one package (its packument and tarball) on 127.0.0.1; and the marker
    its install script would write."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("no node/npm on this host (apt-get install nodejs npm)")
    marker = tmp_path / "postinstall-ran"
    tgz = npm_tarball(marker)
    manifest = manifest_of(marker)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()

    class Registry(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            base = f"http://127.0.0.1:{port}"
            if self.path.rstrip("/") == f"/{JS_PKG}":
                dist = {"tarball": f"{base}/{JS_PKG}/-/{JS_PKG}-1.0.0.tgz", "integrity": integrity}
                dist["shasum"] = hashlib.sha1(tgz).hexdigest()
                version: dict[str, Any] = {"name": JS_PKG, "version": "1.0.0", "bin": {"demo-js": "cli.js"}}
                version["dist"] = dist
                version |= {"scripts": manifest["scripts"], "hasInstallScript": True}  # as the registry says
                body = json.dumps({"name": JS_PKG, "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version}})
                self._send(body.encode(), "application/json")
            elif self.path == f"/{JS_PKG}/-/{JS_PKG}-1.0.0.tgz":
                self._send(tgz, "application/octet-stream")
            else:
                self.send_error(404)

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/", marker
    finally:
        server.shutdown()
        server.server_close()


def test_an_environments_npm_packages_reach_the_agent_and_their_scripts_never_run(
    model: ScriptedModelServer, npm_registry: tuple[str, Path], tmp_path: Path
) -> None:
    registry, marker = npm_registry
    with run_service(
        model.url,
        MOORAGE_API_KEYS=KEYS,
        MOORAGE_PACKAGE_NPM_REGISTRY=registry,
        MOORAGE_PACKAGE_CACHE_DIR=str(tmp_path / "layers"),
    ) as svc:
        api = client(svc)
        agent = api.beta.agents.create(name="Scripter", model="claude-opus-5", tools=[TOOLSET])
        config: Any = {"type": "cloud", "packages": {"type": "packages", "npm": [f"{JS_PKG}@1.0.0"]}}
        env = api.beta.environments.create(name=f"npm-{time.monotonic_ns()}", config=config)
        session = api.beta.sessions.create(agent=agent.id, environment_id=env.id)
        probe = f"bash node -e 'console.log(require(\"{JS_PKG}\")())'; demo-js"
        words = said(turn(api, session.id, probe))
        assert words.splitlines() == ["tool said: hello from npm", "demo-js says hi"], words
        assert not marker.exists()  # --ignore-scripts: the package's postinstall never ran on the host
