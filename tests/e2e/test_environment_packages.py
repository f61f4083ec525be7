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
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from ma_client import KEYS, TOOLSET, client, close_all, code, say, text, until
from moorage.testing.scripted_model import ScriptedModelServer
from support import events, metric_value, run_service, wait_until

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


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    close_all()


def turn(api: anthropic.Anthropic, session_id: str, words: str) -> list[Any]:
    with api.beta.sessions.events.stream(session_id) as stream:
        api.beta.sessions.events.send(session_id, events=[say(words)])
        return until(stream, "session.status_idle", timeout=120)


def said(turn_events: list[Any]) -> str:
    return [text(e) for e in turn_events if e.type == "agent.message"][-1]


def packages(*pip: str) -> Any:
    return {"type": "cloud", "packages": {"type": "packages", "pip": list(pip)}}


PROBE = (
    "bash python3 -c 'import moorage_demo_pkg, numpy; print(moorage_demo_pkg.hello(), moorage_demo_pkg.__file__,"
    ' numpy.__file__.startswith("/opt/moorage/toolbox/"))\'; demo-hello;'
    " python3 -c 'import anyio' 2>&1 | tail -1;"
    " touch /opt/moorage/packages/site-packages/x 2>&1 | grep -o 'Read-only file system'"
)


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
        api = client(svc)
        agent = api.beta.agents.create(name="Analyst", model="claude-opus-5", tools=[TOOLSET])
        env = api.beta.environments.create(name=f"pkgs-{time.monotonic_ns()}", config=packages(f"{PKG}==1.0"))
        assert env.config.type == "cloud" and env.config.packages.pip == [f"{PKG}==1.0"]
        session = api.beta.sessions.create(agent=agent.id, environment_id=env.id)
        words = said(turn(api, session.id, PROBE))
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

        # Another environment with the same set shares the layer: no second build.
        twin = api.beta.environments.create(name=f"twin-{time.monotonic_ns()}", config=packages(f"{PKG} == 1.0"))
        again = api.beta.sessions.create(agent=agent.id, environment_id=twin.id)
        assert said(turn(api, again.id, "bash demo-hello")) == "tool said: demo-hello says hi"
        assert metric_value(svc, "moorage_package_builds_total", outcome="ok") == 1
        assert len(events(svc, "packages_build_started")) == 1


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
                name=f"npm-{time.monotonic_ns()}", config={"type": "cloud", "packages": {"npm": ["left-pad"]}}
            )
        assert code(refused.value) == "packages_not_supported"
