"""A full disk under the data dir: accepting fails with a clear 503 (nothing is half
accepted), every message accepted before is kept and delivered, and berth recovers by
itself when space returns. Runs berth's data dir on a small tmpfs of its own (root)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import BerthServer, create, send, wait_status

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the disk-full test mounts a tmpfs and needs root (CI runs as root)")
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> Path:
    """Write into `path` until the disk is full; return the filler file."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(chunk)
            f.flush()
    return filler


async def test_a_full_disk_refuses_with_503_keeps_everything_accepted_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    server = BerthServer(small_disk / "berth")
    server.log = tmp_path / "serve.log"  # berth's own log off the small disk
    server.start()
    try:
        async with server.client() as c:
            await create(c, "a")
            r = await send(c, "a", "before")
            assert r.status_code == 200 and "result" in r.json()
            assert (await c.post("/v1/workspaces/a/pause")).status_code == 200
            filler = fill(small_disk)
            accepted: list[str] = []
            refusal = None
            big = "x" * 4000  # each message grows the log: the disk runs out within a few
            for _ in range(3000):
                r = await send(c, "a", big, f"m-{uuid.uuid4()}", wait=0)
                if r.status_code == 202:
                    accepted.append(r.json()["delivery_id"])
                    continue
                refusal = r
                break
            assert refusal is not None, "the disk never filled up"
            assert refusal.status_code == 503, refusal.text
            assert refusal.headers["retry-after"] == "5"
            err = refusal.json()["error"]
            assert err["data"]["reason"] == "store_unavailable" and "full" in err["message"]
            # reads still answer while the disk is full
            assert (await c.get("/v1/workspaces/a")).status_code == 200
            filler.unlink()  # space returns
            r = await send(c, "a", "after", wait=0)
            assert r.status_code == 202, r.text  # recovered by itself
            accepted.append(r.json()["delivery_id"])
            assert (await c.post("/v1/workspaces/a/resume")).status_code == 200
            await wait_status(c, "a", "online")
            for did in accepted:
                for _ in range(600):
                    d = (await c.get(f"/v1/deliveries/{did}")).json()
                    if d["status"] == "done":
                        break
                    await asyncio.sleep(0.05)
                assert d["status"] == "done", d
    finally:
        server.stop()
        server.kill9()
