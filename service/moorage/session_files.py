"""A live session's files, the I/O half: its resources put into the sandbox, its outputs
taken out of it (the rules are pure: ``resources.py``, ``session_paths.py``, ``outputs.py``).

In: a resource's bytes stream from the file store into ``put_file`` frames (``FILE_CHUNK_BYTES``
raw each), which the runner writes next to the target and renames into place on ``last``,
answering ``file_put``. At start (``session_start.mount_resources``) that happens before
``start``, for every resource the record has; while the session runs (``mount``), through the
session's outbox, one resource at a time, waiting for the outbox to drain between chunks so a
large file never sits in memory. A resource that cannot be put (its file is gone, the runner
says no) is a notice (``resource_not_mounted``), not the session's end.

Out: after each turn's result, ``collect_outputs``; the runner's ``output`` frames are checked
by ``OutputCollector`` and each file streams into ``FileStore.put`` (scoped to the session)
through a small queue: the session's pump waits while the store is behind (backpressure, like
``events.room()``). Each stored output is one durable ``output_file`` frame; one over the cap
is one ``output_too_large`` notice. A file that changed since it was reported is stored again,
as a new file (the old one stays).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

from moorage_session_store import FileTooLarge

from .channel import FILE_CHUNK_BYTES, CollectOutputs, FilePut, Output, OutputsDone, PutFile
from .errors import STORE_ERRORS, Code, MoorageError
from .files import UploadLimit, quota_refusal, upload_limit
from .outputs import Chunk, OutputCollector, OutputLimits, TooLarge, mime_type
from .seams import FileStore

if TYPE_CHECKING:
    from .sessions import Session

QUEUE_CHUNKS = 4  # chunks of an output between the pump and the store
OUTBOX_CHUNKS = 4  # put_file frames queued for the runner before a live mount waits
# What a store write or a mount may fail with (a refusal of ours, or the database's).
FAILURES: tuple[type[BaseException], ...] = (MoorageError, *STORE_ERRORS)


async def put_frames(files: FileStore, tenant: str, file_id: str, path: str) -> AsyncGenerator[PutFile, None]:
    """The file ``file_id`` as ``put_file`` frames for ``path`` (the last one may be empty)."""
    pending = b""
    async for piece in files.read(tenant, file_id):
        pending += piece
        while len(pending) > FILE_CHUNK_BYTES:
            yield PutFile(path, base64.b64encode(pending[:FILE_CHUNK_BYTES]).decode(), False)
            pending = pending[FILE_CHUNK_BYTES:]
    yield PutFile(path, base64.b64encode(pending).decode(), True)


def not_mounted(resource: dict[str, object], why: str) -> MoorageError:
    return MoorageError(
        f"file {resource.get('file_id')} could not be put at {resource.get('mount_path')}: {why}",
        code=Code.RESOURCE_NOT_MOUNTED,
    )


class OutputUpload:
    """One output on its way into the file store."""

    def __init__(self, session: Session, files: FileStore, name: str, limit: UploadLimit) -> None:
        self.name = name
        self.limit = limit
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)
        self.task = asyncio.create_task(
            files.put(
                session.tenant,
                filename=name,
                mime_type=mime_type(name),
                chunks=self._chunks(),
                max_bytes=limit.max_bytes,
                scope_session_id=session.id,
            )
        )

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (data := await self.queue.get()) is not None:
            yield data

    async def offer(self, data: bytes | None) -> None:
        """Queue ``data`` (None: the end), waiting while the store is behind; a store that
        failed takes nothing more (``SessionFiles._stored`` reports it)."""
        put = asyncio.ensure_future(self.queue.put(data))
        await asyncio.wait({put, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()


class SessionFiles:
    """One session's resources and outputs (held by ``Session.files``)."""

    def __init__(self, session: Session, files: FileStore | None) -> None:
        self.session = session
        self.store = files
        settings = session.settings
        self.collector = OutputCollector(OutputLimits(settings.output_max_bytes, settings.output_turn_max_bytes))
        self._waiting: dict[str, asyncio.Future[FilePut]] = {}
        self._mounting = asyncio.Lock()  # one live mount at a time
        self._upload: OutputUpload | None = None
        self._dropping = False  # the open output is not stored (the tenant is over its quota)

    # -- in --------------------------------------------------------------------

    async def mount(self, resource: dict[str, object]) -> None:
        """Put ``resource`` into the running sandbox now (a resource added to a live session).
        Bounded by the start timeout; a failure is a notice, never an exception."""
        session = self.session
        if self.store is None:
            return
        path = str(resource["mount_path"])
        try:
            async with asyncio.timeout(session.settings.sandbox_start_timeout_s), self._mounting:
                answer = asyncio.get_running_loop().create_future()
                self._waiting[path] = answer
                try:
                    frames = put_frames(self.store, session.tenant, str(resource["file_id"]), path)
                    async with contextlib.aclosing(frames):
                        async for frame in frames:
                            await session.send_runner(frame, room=OUTBOX_CHUNKS)
                    put = await answer
                finally:
                    self._waiting.pop(path, None)
        except TimeoutError:
            session.notice(not_mounted(resource, "the sandbox did not answer in time"))
            return
        except FAILURES as exc:
            why = exc.message if isinstance(exc, MoorageError) else type(exc).__name__
            session.notice(not_mounted(resource, why))
            return
        if not put.ok:
            session.notice(not_mounted(resource, put.message[:300] or "refused"))
        else:
            session.log.info("resource_mounted", file_id=resource.get("file_id"), live=True)

    def answered(self, frame: FilePut) -> None:
        """A ``file_put`` the channel let through (it was asked for)."""
        waiter = self._waiting.get(frame.path)
        if waiter is not None and not waiter.done():
            waiter.set_result(frame)

    # -- out -------------------------------------------------------------------

    def collect(self) -> CollectOutputs:
        settings = self.session.settings
        return CollectOutputs(settings.output_max_bytes, settings.output_turn_max_bytes)

    async def output(self, frame: Output) -> None:
        """One ``output`` frame (raises ``ChannelViolation`` for a runner that lies)."""
        step = self.collector.feed(frame)
        session = self.session
        if isinstance(step, TooLarge):
            cap = session.settings.output_max_bytes
            session.metrics.outputs.labels("too_large").inc()
            session.emit(
                MoorageError(
                    f"output {step.name} ({step.size} bytes) is over the {cap}-byte cap "
                    "(or what this turn may still keep) and was not kept",
                    code=Code.OUTPUT_TOO_LARGE,
                ).frame()
            )
            return
        if self.store is None:
            return
        await self._chunk(step)

    async def _limit(self) -> tuple[UploadLimit | None, int]:
        """What the next output may store — the per-file cap, or less under the tenant's storage
        quota (outputs count toward it like uploads); None: the tenant is at or over it — and
        what the tenant stores."""
        settings, session = self.session.settings, self.session
        quota = settings.tenant_storage_bytes
        used = await session.records.tenant_storage_bytes(session.tenant) if quota > 0 else 0
        return upload_limit(settings.output_max_bytes, quota, used), used

    async def _chunk(self, step: Chunk) -> None:
        assert self.store is not None
        session = self.session
        if step.first:
            try:
                limit, used = await self._limit()
            except STORE_ERRORS as exc:
                limit, used = None, -1
                self._not_stored(step.name, exc)
            if limit is not None:
                self._upload = OutputUpload(session, self.store, step.name, limit)
            elif used >= 0:  # at or over the quota: told, not stored
                session.metrics.outputs.labels("not_stored").inc()
                session.emit(quota_refusal(session.settings.tenant_storage_bytes, used).frame())
            self._dropping = limit is None
        if self._dropping:
            self._dropping = not step.last
            return
        upload = self._upload
        assert upload is not None
        if step.data:
            await upload.offer(step.data)
        if step.last:
            self._upload = None
            await upload.offer(None)
            await self._stored(upload, step.size)

    def _not_stored(self, name: str, exc: BaseException) -> None:
        session = self.session
        session.log.warning("output_not_stored", error=type(exc).__name__)
        session.metrics.outputs.labels("not_stored").inc()
        session.emit(
            MoorageError(
                f"output {name} could not be stored ({type(exc).__name__}); it stays in the sandbox",
                code=Code.OUTPUT_NOT_STORED,
            ).frame()
        )

    async def _stored(self, upload: OutputUpload, size: int) -> None:
        session = self.session
        try:
            record = await upload.task
        except FileTooLarge:  # only under the quota: the per-file cap was checked already
            session.metrics.outputs.labels("not_stored").inc()
            cap = session.settings.tenant_storage_bytes
            session.emit(upload.limit.refusal(session.settings.output_max_bytes, cap).frame())
            return
        except FAILURES as exc:
            self._not_stored(upload.name, exc)
            return
        session.metrics.outputs.labels("stored").inc()
        session.log.info("output_stored", file_id=record.id, size=size)
        session.emit(
            {
                "type": "output_file",
                "name": upload.name,
                "size": record.size_bytes,
                "file_id": record.id,
                "mime_type": record.mime_type,
            }
        )

    def done(self, frame: OutputsDone) -> None:
        self.collector.done(frame)

    async def close(self) -> None:
        """The session ended: an output half stored is dropped (its store deletes it)."""
        if self._upload is not None:
            self._upload.task.cancel()
            await asyncio.wait({self._upload.task})
            self._upload = None
