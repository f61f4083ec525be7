"""``moorage chat`` (``make chat``) against a running service: a piped prompt prints its answer and
quits once the turn is over, and ``--session ID --after 0`` replays the conversation from the log."""

from __future__ import annotations

import re

from moorage.testing.scripted_model import ScriptedModelServer
from support import moorage_chat, run_service


async def test_a_piped_conversation_prints_its_answers_and_replays_after_a_reconnect(
    model: ScriptedModelServer,
) -> None:
    with run_service(model.url) as svc:
        first = await moorage_chat(svc, "say first answer\nsay second answer\n")
        assert first.returncode == 0, first.stderr
        lines = first.stdout.splitlines()
        assert "first answer" in lines and "second answer" in lines  # the second queued, then ran
        found = re.search(r"\[session (\S+) new", first.stdout)
        assert found is not None, first.stdout
        again = await moorage_chat(svc, "", "--session", found.group(1), "--after", "0")
        assert again.returncode == 0, again.stderr
        shown = again.stdout.splitlines()
        for prompt in ("first answer", "second answer"):  # the whole conversation, each line once
            assert shown.count(f"> say {prompt}") == shown.count(prompt) == 1
            assert shown.index(f"> say {prompt}") < shown.index(prompt)
        assert shown.index("first answer") < shown.index("second answer")
