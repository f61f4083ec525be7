"""``make bench``: Files API throughput — upload and download MB/s through the running service
with the official ``anthropic`` client, against a plain copy of the same bytes on this machine,
in one run; and, on PostgreSQL, the store alone: chunked rows (``Files``, what Moorage uses) against
PostgreSQL large objects (``lo_put`` / ``lo_get`` of the same 1 MiB pieces, each in its own
transaction like the rows), to back the storage choice with a number. The ``s3`` column is the
service with ``MOORAGE_FILE_STORE=s3://…`` (SQLite metadata, bytes in a bucket of moto's local S3
server, a Python server on a thread of this process: a floor for the client side, not a
measure of a real object store).

For each database (SQLite, the default; PostgreSQL when reachable at 127.0.0.1:5432, in a temp
database): a service starts (no warm sandboxes: files need none), then ``--runs`` times a file of
``--mib`` MiB of random bytes is uploaded (``files.upload``, the body streamed from memory) and
downloaded (``files.download`` streamed, bytes counted and checked). The yardstick is
``shutil.copyfile`` of the same bytes between two files in a temp directory (page cache, no
fsync), the floor any store-and-serve path sits above. Medians; written to
``bench/results_files.json``.

Run: ``.venv/bin/python bench/bench_files.py [--mib 32] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
from moorage.testing.scripted_model import ScriptedModelServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hostprobe import machine, write_report
from s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, moto_s3, new_bucket
from support import pg_available, pg_database, run_service

OPEN_TOKEN = "bench-open-mode-token"  # loopback, no MOORAGE_API_KEYS: tenant "default"
MIB = 1024 * 1024
KINDS = ("sqlite", "postgresql", "s3")


def mb_per_s(size: int, seconds: float) -> float:
    return round(size / 1e6 / seconds, 1)


def plain_copy(data: bytes, runs: int) -> list[float]:
    """MB/s of copying a file holding ``data`` to another file (the machine's floor)."""
    speeds = []
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        src.write_bytes(data)
        for _ in range(runs):
            t0 = time.perf_counter()
            shutil.copyfile(src, dst)
            speeds.append(mb_per_s(len(data), time.perf_counter() - t0))
            dst.unlink()
    return speeds


async def store_only(url: str, data: bytes, runs: int) -> dict[str, list[float]]:
    """MB/s of writing and reading ``data`` through ``Files`` (chunk rows) and through large objects."""
    from moorage_session_store import Database, Files
    from sqlalchemy import text

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 64 * 1024):  # what the HTTP side hands the store
            yield data[start : start + 64 * 1024]

    out: dict[str, list[float]] = {name: [] for name in ("rows_put", "rows_read", "lo_put", "lo_read")}
    db = await Database.connect(url)
    try:
        await db.migrate()
        files = Files(db)
        for _ in range(runs):
            t0 = time.perf_counter()
            made = await files.put("bench", filename="b", mime_type="x/y", chunks=pieces(), max_bytes=len(data))
            out["rows_put"].append(mb_per_s(len(data), time.perf_counter() - t0))
            t0 = time.perf_counter()
            read = sum([len(chunk) async for chunk in files.read("bench", made.id)])
            out["rows_read"].append(mb_per_s(read, time.perf_counter() - t0))
            await files.delete("bench", made.id)

            t0 = time.perf_counter()
            async with db.engine.begin() as conn:
                oid = (await conn.execute(text("SELECT lo_create(0)"))).scalar_one()
            for start in range(0, len(data), MIB):
                async with db.engine.begin() as conn:
                    put = text("SELECT lo_put(:oid, :offset, :data)")
                    await conn.execute(put, {"oid": oid, "offset": start, "data": data[start : start + MIB]})
            out["lo_put"].append(mb_per_s(len(data), time.perf_counter() - t0))
            t0 = time.perf_counter()
            read = 0
            for start in range(0, len(data), MIB):
                async with db.engine.connect() as conn:
                    get = text("SELECT lo_get(:oid, :offset, :size)")
                    read += len((await conn.execute(get, {"oid": oid, "offset": start, "size": MIB})).scalar_one())
            out["lo_read"].append(mb_per_s(read, time.perf_counter() - t0))
            async with db.engine.begin() as conn:
                await conn.execute(text("SELECT lo_unlink(:oid)"), {"oid": oid})
    finally:
        await db.close()
    return out


def through_service(url: str, data: bytes, runs: int) -> dict[str, list[float]]:
    digest = hashlib.sha256(data).hexdigest()
    up, down = [], []
    with anthropic.Anthropic(base_url=url, api_key=OPEN_TOKEN, max_retries=0) as client:
        files = client.beta.files
        files.upload(file=("warm.bin", b"w" * 1024, "application/octet-stream"))  # first-use costs
        for _ in range(runs):
            t0 = time.perf_counter()
            made = files.upload(file=("bench.bin", io.BytesIO(data), "application/octet-stream"))
            up.append(mb_per_s(len(data), time.perf_counter() - t0))
            check = hashlib.sha256()
            t0 = time.perf_counter()
            with files.with_streaming_response.download(made.id) as answer:
                for piece in answer.iter_bytes(MIB):
                    check.update(piece)
            down.append(mb_per_s(len(data), time.perf_counter() - t0))
            if check.hexdigest() != digest:
                raise RuntimeError("the downloaded bytes differ from the uploaded ones")
            files.delete(made.id)
    return {"upload_mb_per_s": up, "download_mb_per_s": down}


@contextlib.contextmanager
def database(kind: str) -> Iterator[dict[str, str]]:
    """The service's settings for ``kind``: SQLite, PostgreSQL, or SQLite with an S3 bucket."""
    if kind == "sqlite":
        yield {}
        return
    if kind == "s3":
        with moto_s3() as endpoint:

            async def made() -> str:
                blobs = await new_bucket(endpoint, prefix="bench")
                await blobs.close()
                return f"s3://{blobs.location.bucket}/bench"

            yield {
                "MOORAGE_FILE_STORE": asyncio.run(made()),
                "MOORAGE_S3_ENDPOINT_URL": endpoint,
                "MOORAGE_S3_REGION": REGION,
                "MOORAGE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "MOORAGE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            }
        return
    with pg_database("bench_files") as name:
        yield {"MOORAGE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results_files.json"))
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    data = os.urandom(args.mib * MIB)
    results: dict[str, Any] = {"plain_copy_mb_per_s": plain_copy(data, args.runs)}
    model = ScriptedModelServer().start()
    try:
        for kind in KINDS:
            if kind == "postgresql" and not pg_available():
                results[kind] = {"skipped": "PostgreSQL unreachable at 127.0.0.1:5432"}
                continue
            env = {"MOORAGE_WARM_SANDBOXES": "0", "MOORAGE_FILE_MAX_BYTES": str(2 * len(data))}
            with database(kind) as db_env, run_service(model.url, **env, **db_env) as service:
                results[kind] = through_service(service.url, data, args.runs)
                shutil.rmtree(service.state_dir, ignore_errors=True)
            if kind == "postgresql":
                with database(kind) as db_env:
                    results["postgresql_store"] = asyncio.run(
                        store_only(db_env["MOORAGE_DATABASE_URL"], data, args.runs)
                    )
    finally:
        model.stop()

    copy = statistics.median(results["plain_copy_mb_per_s"])
    summary: dict[str, Any] = {"plain_copy_mb_per_s": copy}
    print(f"{args.mib} MiB, median of {args.runs}   (MB/s; ratio to a plain file copy)")
    print(f"{'plain copy (shutil.copyfile)':<34}{copy:>10.1f}")
    for kind in KINDS:
        res = results[kind]
        if "skipped" in res:
            print(f"{kind:<34}{'skipped':>10}")
            continue
        for what in ("upload_mb_per_s", "download_mb_per_s"):
            median = statistics.median(res[what])
            summary[f"{kind}_{what}"] = median
            label = f"{kind} {what.split('_')[0]} (service)"
            print(f"{label:<34}{median:>10.1f}{median / copy:>10.3f}x")
    if "postgresql_store" in results:
        store = {name: statistics.median(v) for name, v in results["postgresql_store"].items()}
        summary["postgresql_store"] = store
        print("postgresql, the store alone (MB/s)   write      read")
        print(f"{'  chunk rows (Files)':<34}{store['rows_put']:>10.1f}{store['rows_read']:>10.1f}")
        print(f"{'  large objects (lo_put/lo_get)':<34}{store['lo_put']:>10.1f}{store['lo_read']:>10.1f}")
    report = {
        "schema": 1,
        "machine": machine(load_at_start),
        "config": {"mib": args.mib, "runs": args.runs},
        "summary": summary,
        "results": results,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
