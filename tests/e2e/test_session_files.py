"""Files into and out of a session's sandbox, with the unmodified official ``anthropic`` 2.10.0
client against the service as a process (local sandboxes; the real CLI runs the Bash tool, only
the model is scripted): an uploaded file given as a resource at create is read by the agent, at
its default path and at a ``mount_path``, read-only, and again after the session was suspended
and rehydrated; a resource added to a live session is there for its next turn; the resources
API lists, retrieves and deletes; bad paths, another tenant's file and two resources on one path
are refused; what the agent writes to /mnt/session/outputs becomes a session-scoped file, listed
with ``files.list(scope_id=…)`` and downloaded byte-identical, announced on the WebSocket with an
``output_file`` frame; an output over the cap gets an ``output_too_large`` notice and is not kept."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types.beta.sessions.beta_managed_agents_file_resource import BetaManagedAgentsFileResource
from ma_client import ACME, GLOBEX, KEYS, TOOLSET, client, code, say, text, until
from moorage.testing.scripted_model import ScriptedModelServer
from support import (
    Client,
    Service,
    docker_sandbox_image,
    docker_settings,
    result_of,
    run_service,
    wait_suspended,
    wait_until,
)

OUTPUT_CAP = 256 * 1024


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(
        model.url,
        MOORAGE_API_KEYS=KEYS,
        MOORAGE_IDLE_TIMEOUT_S="2",  # a session nobody is attached to is suspended soon
        MOORAGE_OUTPUT_MAX_BYTES=str(OUTPUT_CAP),
        MOORAGE_MAX_TURNS="5",
    ) as service:
        yield service


def setup(api: anthropic.Anthropic, name: str) -> tuple[str, str]:
    agent = api.beta.agents.create(name=name, model="claude-opus-5", tools=[TOOLSET])
    env = api.beta.environments.create(name=f"{name}-{time.monotonic_ns()}")
    return agent.id, env.id


def file_resources(items: Iterable[object]) -> list[BetaManagedAgentsFileResource]:
    """Resources as the file resources they are (the client's type is a union of three)."""
    listed = list(items)
    assert all(isinstance(item, BetaManagedAgentsFileResource) for item in listed), listed
    return [item for item in listed if isinstance(item, BetaManagedAgentsFileResource)]


def turn(api: anthropic.Anthropic, session_id: str, words: str) -> str:
    """Send ``words``; the text of the turn's last agent message."""
    with api.beta.sessions.events.stream(session_id) as stream:
        api.beta.sessions.events.send(session_id, events=[say(words)])
        events = until(stream, "session.status_idle", timeout=120)
    return [text(e) for e in events if e.type == "agent.message"][-1]


def test_uploads_are_mounted_read_only_and_again_after_rehydration(svc: Service) -> None:
    api = client(svc)
    agent_id, env_id = setup(api, "Uploads")
    data = api.beta.files.upload(file=("data.csv", b"city,temp\nOslo,3\n", "text/csv"))
    notes = api.beta.files.upload(file=("notes.txt", b"remember the milk", "text/plain"))
    session = api.beta.sessions.create(
        agent=agent_id,
        environment_id=env_id,
        resources=[
            {"type": "file", "file_id": data.id, "mount_path": "/workspace/in/data.csv"},
            {"type": "file", "file_id": notes.id},
        ],
    )
    resources = file_resources(session.resources)
    assert len(resources) == 2
    assert [(r.file_id, r.mount_path) for r in resources] == [
        (data.id, "/workspace/in/data.csv"),
        (notes.id, f"/mnt/session/uploads/{notes.id}"),
    ]
    assert all(r.id.startswith("sesrsc_") and r.type == "file" for r in resources)
    said = turn(api, session.id, "bash cat /workspace/in/data.csv")
    assert said == "tool said: city,temp\nOslo,3"
    said = turn(
        api, session.id, f"bash stat -c %a /mnt/session/uploads/{notes.id} && cat /mnt/session/uploads/{notes.id}"
    )
    assert said == "tool said: 444\nremember the milk"
    listed = file_resources(api.beta.sessions.resources.list(session.id))
    assert [r.id for r in listed] == [r.id for r in resources]
    again = file_resources([api.beta.sessions.resources.retrieve(resources[1].id, session_id=session.id)])
    assert again[0].file_id == notes.id

    # Suspended (idle, nobody attached), then rehydrated by the next message: uploads/ is a
    # tmpfs that went with the sandbox, so the file is there again only because it was put back.
    asyncio.run(wait_suspended(svc, session.id))
    said = turn(api, session.id, f"bash cat /mnt/session/uploads/{notes.id}")
    assert said == "tool said: remember the milk"
    # The HTTP view says the session was rescheduled (a fresh sandbox), then ran its turn.
    kinds = [e.type for e in api.beta.sessions.events.list(session.id) if e.type.startswith("session.status")]
    assert kinds[-4:] == [
        "session.status_idle",
        "session.status_rescheduled",
        "session.status_running",
        "session.status_idle",
    ], kinds


def test_a_resource_added_to_a_live_session_is_there_for_its_next_turn(svc: Service) -> None:
    api = client(svc)
    agent_id, env_id = setup(api, "Live")
    session = api.beta.sessions.create(agent=agent_id, environment_id=env_id)
    assert session.resources == []
    assert turn(api, session.id, "say ready") == "ready"  # its sandbox runs
    upload = api.beta.files.upload(file=("late.txt", b"added later", "text/plain"))
    added = api.beta.sessions.resources.add(
        session.id, type="file", file_id=upload.id, mount_path="/workspace/late.txt"
    )
    assert added.mount_path == "/workspace/late.txt" and added.file_id == upload.id
    assert turn(api, session.id, "bash cat /workspace/late.txt") == "tool said: added later"
    assert [r.id for r in file_resources(api.beta.sessions.retrieve(session.id).resources)] == [added.id]

    deleted = api.beta.sessions.resources.delete(added.id, session_id=session.id)
    assert (deleted.id, deleted.type) == (added.id, "session_resource_deleted")
    assert list(api.beta.sessions.resources.list(session.id)) == []
    with pytest.raises(anthropic.NotFoundError) as gone:
        api.beta.sessions.resources.retrieve(added.id, session_id=session.id)
    assert code(gone.value) == "resource_not_found"


def test_bad_resources_are_refused_with_stable_codes(svc: Service) -> None:
    api = client(svc)
    agent_id, env_id = setup(api, "Refusals")
    mine = api.beta.files.upload(file=("a.txt", b"a", "text/plain"))
    theirs = client(svc, GLOBEX).beta.files.upload(file=("b.txt", b"b", "text/plain"))
    session = api.beta.sessions.create(agent=agent_id, environment_id=env_id)
    refusals: list[tuple[dict[str, Any], type[anthropic.APIStatusError], str, str]] = [
        ({"file_id": mine.id, "mount_path": "/opt/moorage/moorage_runner/runner.py"}, anthropic.BadRequestError,
         "invalid_request", "under /workspace/"),
        ({"file_id": mine.id, "mount_path": "/mnt/session/outputs/x"}, anthropic.BadRequestError,
         "invalid_request", "under /workspace/"),
        ({"file_id": mine.id, "mount_path": "/workspace/../etc/passwd"}, anthropic.BadRequestError,
         "invalid_request", "normalized"),
        ({"file_id": mine.id, "mount_path": "relative.txt"}, anthropic.BadRequestError, "invalid_request", "absolute"),
        ({"file_id": theirs.id}, anthropic.NotFoundError, "file_not_found", theirs.id),  # another tenant's
        ({"file_id": "file_nope"}, anthropic.NotFoundError, "file_not_found", "file_nope"),
    ]  # fmt: skip
    for body, error, stable, words in refusals:
        with pytest.raises(error) as refused:
            api.beta.sessions.resources.add(session.id, type="file", **body)
        assert code(refused.value) == stable and words in refused.value.message, body
    api.beta.sessions.resources.add(session.id, type="file", file_id=mine.id, mount_path="/workspace/a.txt")
    with pytest.raises(anthropic.BadRequestError, match=r"two resources on /workspace/a\.txt"):
        api.beta.sessions.resources.add(session.id, type="file", file_id=mine.id, mount_path="/workspace/a.txt")
    with pytest.raises(anthropic.NotFoundError):
        api.beta.sessions.create(
            agent=agent_id, environment_id=env_id, resources=[{"type": "file", "file_id": theirs.id}]
        )
    with pytest.raises(anthropic.NotFoundError):  # another tenant's session
        client(svc, GLOBEX).beta.sessions.resources.list(session.id)
    assert len(list(api.beta.sessions.resources.list(session.id))) == 1  # the service kept working


async def test_outputs_become_session_files_and_the_websocket_hears_of_each(svc: Service) -> None:
    api = client(svc)
    agent_id, env_id = await asyncio.to_thread(setup, api, "Outputs")
    session = await asyncio.to_thread(api.beta.sessions.create, agent=agent_id, environment_id=env_id)
    ws = await Client.connect(svc, session.id, token=ACME)
    blob = os.urandom(100_000)
    hexed = blob.hex()
    write = (
        "bash mkdir -p /mnt/session/outputs/charts && printf 'a,b\\n1,2\\n' > /mnt/session/outputs/report.csv"
        f" && echo {hexed[:2000]} > /mnt/session/outputs/charts/part.txt"
        f" && head -c {OUTPUT_CAP + 1} /dev/zero > /mnt/session/outputs/huge.bin"
    )
    frames = await ws.turn(write, timeout=120)
    assert result_of(frames)["subtype"] == "success"
    # Reported in name order: charts/part.txt, huge.bin (too large: a notice), report.csv.
    seen = await ws.until("output_file", timeout=30)
    seen += await ws.until("output_file", timeout=30)
    outputs = {f["name"]: f for f in seen if f["type"] == "output_file"}
    assert set(outputs) == {"report.csv", "charts/part.txt"}
    assert outputs["report.csv"]["size"] == 8 and outputs["report.csv"]["mime_type"] == "text/csv"
    notices = [f for f in seen if f.get("code") == "output_too_large"]
    assert len(notices) == 1 and "huge.bin" in notices[0]["message"] and notices[0]["fatal"] is False

    listed = await asyncio.to_thread(lambda: list(api.beta.files.list(scope_id=session.id)))
    assert {f.filename for f in listed} == {"report.csv", "charts/part.txt"}, "huge.bin was not kept"
    report = next(f for f in listed if f.filename == "report.csv")
    assert report.id == outputs["report.csv"]["file_id"] and report.scope is not None
    assert (report.scope.type, report.scope.id) == ("session", session.id)
    got = await asyncio.to_thread(lambda: api.beta.files.download(report.id).read())
    assert got == b"a,b\n1,2\n"
    part = await asyncio.to_thread(lambda: api.beta.files.download(outputs["charts/part.txt"]["file_id"]).read())
    assert part == (hexed[:2000] + "\n").encode()

    # Unchanged files are not stored again; a changed one is stored as a new file.
    frames = await ws.turn("bash printf 'a,b\\n3,4\\n' > /mnt/session/outputs/report.csv", timeout=120)
    assert result_of(frames)["subtype"] == "success"
    again = [f for f in await ws.until("output_file", timeout=30) if f["type"] == "output_file"]
    assert [f["name"] for f in again] == ["report.csv"] and again[0]["file_id"] != report.id
    await ws.close()

    def three() -> bool:
        return len(list(api.beta.files.list(scope_id=session.id))) == 3

    await asyncio.to_thread(wait_until, three, 10, "the changed report to be listed")


def test_an_output_past_the_tenants_storage_quota_is_noticed_and_not_kept(model: ScriptedModelServer) -> None:
    """Outputs count toward MOORAGE_TENANT_STORAGE_BYTES like uploads: one that would take the
    tenant past it is a ``storage_quota_exceeded`` notice (not fatal), and nothing is stored."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_TENANT_STORAGE_BYTES=str(400_000)) as small:
        api = client(small)
        agent_id, env_id = setup(api, "Quota")
        session = api.beta.sessions.create(agent=agent_id, environment_id=env_id)

        async def run() -> list[dict[str, Any]]:
            ws = await Client.connect(small, session.id, token=ACME)
            frames = await ws.turn("bash head -c 500000 /dev/zero > /mnt/session/outputs/big.bin", timeout=120)
            assert result_of(frames)["subtype"] == "success"
            notice = await ws.until("error", timeout=30)
            await ws.close()
            return notice

        notice = asyncio.run(run())[-1]
        assert notice["code"] == "storage_quota_exceeded" and notice["fatal"] is False
        assert list(api.beta.files.list(scope_id=session.id)) == []


def test_files_in_and_out_on_the_docker_backend(model: ScriptedModelServer) -> None:
    """The same channel frames on a Docker sandbox: /mnt/session is the container's own tmpfs
    (the sandbox user's), a resource is read by the agent, an output is stored and downloaded."""
    image, why_not = docker_sandbox_image()
    if image is None:
        pytest.skip(why_not)
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, **docker_settings(image)) as docker:
        api = client(docker)
        agent_id, env_id = setup(api, "Docker")
        upload = api.beta.files.upload(file=("in.txt", b"from the host", "text/plain"))
        session = api.beta.sessions.create(
            agent=agent_id, environment_id=env_id, resources=[{"type": "file", "file_id": upload.id}]
        )
        said = turn(api, session.id, f"bash cat /mnt/session/uploads/{upload.id} > /mnt/session/outputs/copy.txt")
        assert said.startswith("tool said")

        def stored() -> bool:
            return bool(list(api.beta.files.list(scope_id=session.id)))

        wait_until(stored, 10, "the output to be listed")
        (copy,) = list(api.beta.files.list(scope_id=session.id))
        assert copy.filename == "copy.txt" and api.beta.files.download(copy.id).read() == b"from the host"
