"""The code-execution toolbox in every sandbox (issue 17), with the official ``anthropic`` client
against the service as a process; the real CLI runs the Bash tool, only the model is scripted.

An uploaded CSV is read by the agent's ``python3`` with pandas, charted with matplotlib (the
``Agg`` backend: no display) into /mnt/session/outputs, and the PNG comes back as a session
file, byte-identical to the one in the sandbox. Failing code's traceback (with the library's
source lines) reaches the client as the tool's error result, and the turn, and the session, go
on. The same on the local backend (the toolbox venv ``make toolbox`` builds, mounted read-only)
and on the Docker backend (the image's venv, from the same lock)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

import anthropic
import pytest
from ma_client import KEYS, TOOLSET, client, said, turn
from moorage.testing.scripted_model import ScriptedModelServer
from support import (
    docker_sandbox_image,
    docker_settings,
    events,
    free_port,
    refused_start,
    run_service,
    wait_until,
)

CSV = b"city,temp\nOslo,3\nLisbon,17\nCairo,28\n"
# The agent's program, as a model would write it: a heredoc to python3.
CHART = """python3 - <<'PY'
import hashlib, sys
import matplotlib, pandas as pd
df = pd.read_csv("{csv}")
ax = df.plot(x="city", y="temp", kind="bar", legend=False)
ax.figure.savefig("/mnt/session/outputs/temps.png")
png = open("/mnt/session/outputs/temps.png", "rb").read()
print(sys.prefix, matplotlib.get_backend().lower(), len(df), df.temp.mean(), hashlib.sha256(png).hexdigest())
PY"""
FAILING = "python3 -c 'import pandas; pandas.read_csv(\"/workspace/missing.csv\")'"


def toolbox_env() -> dict[str, str]:
    """MOORAGE_SANDBOX_TOOLBOX as the test run was given it; unset, the service's default
    (``auto``: the toolbox `make toolbox` linked from the venv this test runs on)."""
    given = os.environ.get("MOORAGE_SANDBOX_TOOLBOX")
    return {} if given is None else {"MOORAGE_SANDBOX_TOOLBOX": given}


def chart_and_traceback(api: anthropic.Anthropic, prefix: str) -> None:
    """The whole story on one service; ``prefix``: where the sandbox's python3 must come from."""
    agent = api.beta.agents.create(name="Analyst", model="claude-opus-5", tools=[TOOLSET])
    env = api.beta.environments.create(name=f"toolbox-{time.monotonic_ns()}")
    upload = api.beta.files.upload(file=("temps.csv", CSV, "text/csv"))
    session = api.beta.sessions.create(
        agent=agent.id, environment_id=env.id, resources=[{"type": "file", "file_id": upload.id}]
    )

    words = said(turn(api, session.id, "bash " + CHART.format(csv=f"/mnt/session/uploads/{upload.id}")))
    assert words.startswith("tool said: "), words
    # The program's own line is the last (matplotlib may say first that it builds its font cache,
    # on a machine slow enough: that is its behaviour, not a failure).
    fields = words.removeprefix("tool said: ").strip().splitlines()[-1].split()
    assert len(fields) == 5, words
    where, backend, rows, mean, digest = fields
    assert (where, backend, rows, float(mean)) == (prefix, "agg", "3", 16.0)

    def listed() -> bool:
        return bool(list(api.beta.files.list(scope_id=session.id)))

    wait_until(listed, 10, "the chart to be listed")
    (chart,) = list(api.beta.files.list(scope_id=session.id))
    assert (chart.filename, chart.mime_type) == ("temps.png", "image/png")
    png = api.beta.files.download(chart.id).read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and hashlib.sha256(png).hexdigest() == digest

    failed = turn(api, session.id, "bash " + FAILING)
    (result,) = [e for e in failed if e.type == "agent.tool_result"]
    assert result.is_error is True
    traceback = "".join(b.text for b in result.content or [] if b.type == "text")
    assert "Traceback (most recent call last)" in traceback and "FileNotFoundError" in traceback, traceback
    # Frames in the library show their source lines: its compiled files name where it really is.
    assert re.search(r'site-packages/pandas/\S+", line \d+, in read_csv\n +\S', traceback), traceback
    words = said(failed)
    assert words.startswith("tool said: ") and "FileNotFoundError" in words  # the model heard it
    assert failed[-1].stop_reason.type == "end_turn"
    # The session goes on, with the rest of the stack.
    assert said(turn(api, session.id, "bash python3 -c 'import sympy; print(sympy.factor(\"x**2-1\"))'")) == (
        "tool said: (x - 1)*(x + 1)"
    )


def test_pandas_and_matplotlib_over_an_uploaded_csv_on_the_local_backend(model: ScriptedModelServer) -> None:
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, **toolbox_env()) as svc:
        found = events(svc, "sandbox_toolbox")
        assert found, "no toolbox: run `make toolbox` (or set MOORAGE_SANDBOX_TOOLBOX)\n" + "\n".join(
            line for line in svc.logs().splitlines() if "toolbox" in line
        )
        assert found[0]["mounted_at"] == "/opt/moorage/toolbox"
        chart_and_traceback(client(svc), found[0]["mounted_at"])


def test_pandas_and_matplotlib_over_an_uploaded_csv_on_the_docker_backend(model: ScriptedModelServer) -> None:
    image, why_not = docker_sandbox_image()
    if image is None:
        pytest.skip(why_not)
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, **docker_settings(image)) as svc:
        chart_and_traceback(client(svc), "/opt/moorage/venv")


async def test_a_toolbox_path_that_is_no_toolbox_refuses_the_start(model: ScriptedModelServer) -> None:
    """Not broken sessions later: the service exits 2 at start and says what is wrong."""
    with tempfile.TemporaryDirectory(prefix="moorage-test-") as state:
        resolved = Path(state).resolve()  # noqa: ASYNC240 (a string operation on a temp dir)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MOORAGE_HOST": "127.0.0.1",
            "MOORAGE_PORT": str(free_port()),  # were it to start after all
            "MOORAGE_STATE_DIR": state,
            "ANTHROPIC_BASE_URL": model.url,
            "MOORAGE_SANDBOX_TOOLBOX": state,  # a directory, not a venv
        }
        done = await refused_start(env)
    assert done.returncode == 2, done.stderr
    assert f"moorage: cannot start: MOORAGE_SANDBOX_TOOLBOX: {resolved} is not a venv" in done.stderr


def test_the_toolbox_is_read_only_in_the_sandbox(model: ScriptedModelServer) -> None:
    """The agent cannot change what every other session runs: pip cannot install into it."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, **toolbox_env()) as svc:
        assert events(svc, "sandbox_toolbox"), "no toolbox: run `make toolbox`"
        api = client(svc)
        agent = api.beta.agents.create(name="Writer", model="claude-opus-5", tools=[TOOLSET])
        env = api.beta.environments.create(name=f"toolbox-ro-{time.monotonic_ns()}")
        session = api.beta.sessions.create(agent=agent.id, environment_id=env.id)
        probe = (
            'bash d=$(python3 -c "import numpy, os; print(os.path.dirname(numpy.__file__))");'
            ' touch "$d/x" 2>&1 | grep -o "Read-only file system"; which python3 pip | xargs dirname | uniq -c'
        )
        words = said(turn(api, session.id, probe))
        prefix = events(svc, "sandbox_toolbox")[0]["mounted_at"]
        assert words == f"tool said: Read-only file system\n      2 {prefix}/bin", words
