"""What a session tells its clients after a turn, from outside the
conversation: limits that bit inside the sandbox (OOM kills, refused forks)
and a workspace that filled up or grew past what a suspension can save.

Each is said once when it happens (non-fatal ``error`` frames), not after
every turn; ``AfterTurn`` remembers what it already reported.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Code, MoorageError
from .sandbox.base import Sandbox
from .settings import Settings
from .workspaces import workspace_full, workspace_size


@dataclass
class AfterTurn:
    settings: Settings
    _limit_seen: dict[str, int] = field(default_factory=dict)
    _too_large: bool = False
    full: bool = False

    def limits_bit(self, sandbox: Sandbox | None) -> dict[str, int]:
        """Limit events since the last look (the sandbox's cgroup counters)."""
        if sandbox is None:
            return {}
        events = sandbox.limit_events()
        seen = self._limit_seen
        new = {k: v - seen.get(k, 0) for k, v in events.items() if v > seen.get(k, 0)}
        self._limit_seen = events
        return new

    def out_of_memory(self) -> MoorageError:
        return MoorageError(
            f"a process in the sandbox ran out of memory (limit {self.settings.sandbox_memory_bytes} bytes) "
            "and was killed",
            code=Code.SANDBOX_OUT_OF_MEMORY,
        )

    def limit_errors(self, sandbox: Sandbox | None) -> list[MoorageError]:
        """A process in the sandbox hit a limit during the turn (not fatal)."""
        bit = self.limits_bit(sandbox)
        errors = []
        if bit.get("oom_kills"):
            errors.append(self.out_of_memory())
        if bit.get("pids_refusals"):
            errors.append(
                MoorageError(
                    f"the sandbox reached its limit of {self.settings.sandbox_pids} processes and threads: "
                    f"{bit['pids_refusals']} forks were refused",
                    code=Code.SANDBOX_PIDS_EXHAUSTED,
                )
            )
        return errors

    async def workspace_errors(self, workspace: Path | None) -> list[MoorageError]:
        """The workspace just filled up, or just grew past what a suspension
        saves: told at write time, not at suspend. ``full`` says whether it is
        full now (a cleared notice must not be replayed to new clients)."""
        if workspace is None:
            return []
        limit = self.settings.workspace_max_bytes
        errors = []
        full = await asyncio.to_thread(workspace_full, workspace)
        if full and not self.full:
            errors.append(
                MoorageError(
                    f"the workspace is full ({limit} bytes, MOORAGE_WORKSPACE_MAX_BYTES): "
                    "writes to it fail with 'No space left on device' until files are removed",
                    code=Code.WORKSPACE_FULL,
                )
            )
        self.full = full
        size = await asyncio.to_thread(workspace_size, workspace)
        over = size > limit
        if over and not self._too_large:
            errors.append(
                MoorageError(
                    f"the workspace holds {size} bytes, over the {limit}-byte limit: "
                    "it will not be saved when the session is suspended unless it shrinks",
                    code=Code.WORKSPACE_TOO_LARGE,
                )
            )
        self._too_large = over
        return errors
