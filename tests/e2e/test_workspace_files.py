"""Files the agent made anywhere in its workspace, listed and downloaded over HTTP (issue 17 item 3,
workspace_files.py), against the service as a process with the real CLI in a real sandbox: from
the live workspace while the session runs, from its saved snapshot once it is suspended. A
symlink the agent planted at a host file is listed as a symlink and never read; another tenant
sees nothing."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ma_client import ACME, GLOBEX, KEYS, TOOLSET, client, text, turn
from moorage.testing.scripted_model import ScriptedModelServer
from support import Service, events, run_service, wait_until

MAKE = (
    "bash mkdir -p out/deep && printf 'city,temp\\nOslo,3\\n' > out/deep/report.csv"
    " && ln -s /etc/passwd leak && echo made"
)


@dataclass
class Got:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


def get(svc: Service, path: str, token: str = ACME) -> Got:
    request = urllib.request.Request(svc.url + path, headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return Got(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as err:
        return Got(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def by_path(listed: Got) -> dict[str, dict[str, Any]]:
    assert listed.status_code == 200, listed.text
    return {e["path"]: e for e in listed.json()["data"]}


def test_workspace_files_are_listed_and_downloaded_live_and_after_suspension(model: ScriptedModelServer) -> None:
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_IDLE_TIMEOUT_S="3") as svc:
        api = client(svc)
        agent = api.beta.agents.create(name="Writer", model="claude-opus-5", tools=[TOOLSET])
        env = api.beta.environments.create(name=f"ws-{time.monotonic_ns()}")
        session = api.beta.sessions.create(agent=agent.id, environment_id=env.id)
        said = [text(e) for e in turn(api, session.id, MAKE) if e.type == "agent.message"]
        assert said[-1] == "tool said: made", said
        base = f"/v1/sessions/{session.id}/workspace"

        listed = get(svc, base)
        assert listed.json()["source"] == "live"
        entries = by_path(listed)
        assert entries["out/deep/report.csv"]["type"] == "file" and entries["out/deep/report.csv"]["size"] == 17
        assert entries["out/deep"]["type"] == "directory"
        assert entries["leak"] == {**entries["leak"], "type": "symlink", "target": "/etc/passwd"}
        got = get(svc, base + "/out/deep/report.csv")
        assert got.status_code == 200 and got.content == b"city,temp\nOslo,3\n"
        assert got.headers["content-type"] == "application/octet-stream"
        assert "attachment" in got.headers["content-disposition"]
        # The planted symlink is never followed: the host's /etc/passwd does not come back.
        leak = get(svc, base + "/leak")
        assert leak.status_code == 404 and leak.json()["error"]["details"]["error_code"] == "workspace_file_not_found"
        assert b"root:" not in leak.content
        assert get(svc, base + "/out/%2E%2E/%2E%2E/etc/passwd").status_code == 400
        assert get(svc, base + "/out").status_code == 404  # a directory
        # Another tenant: as if the session did not exist.
        other = get(svc, base, GLOBEX)
        assert other.status_code == 404 and other.json()["error"]["details"]["error_code"] == "session_not_found"

        wait_until(lambda: bool(events(svc, "session_suspended", session.id)), 30, "the session to be suspended")
        suspended = get(svc, base)
        assert suspended.json()["source"] == "snapshot"
        assert by_path(suspended).keys() == entries.keys()
        assert get(svc, base + "/out/deep/report.csv").content == b"city,temp\nOslo,3\n"


def test_a_session_with_nothing_saved_lists_nothing(model: ScriptedModelServer) -> None:
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_WARM_AGENTS="0") as svc:
        api = client(svc)
        agent = api.beta.agents.create(name="Idle", model="claude-opus-5", tools=[TOOLSET])
        env = api.beta.environments.create(name=f"ws-none-{time.monotonic_ns()}")
        session = api.beta.sessions.create(agent=agent.id, environment_id=env.id)
        listed = get(svc, f"/v1/sessions/{session.id}/workspace")
        # Its sandbox may be up already (an empty live workspace) or not (nothing saved): empty either way.
        assert listed.status_code == 200 and listed.json()["source"] in ("none", "live"), listed.text
        assert listed.json()["data"] == []
        missing = get(svc, f"/v1/sessions/{session.id}/workspace/nothing.txt")
        assert missing.status_code == 404
