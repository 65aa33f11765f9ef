"""A registered task added with ``jobs.add_task`` is durable once the response is sent.

The plain callables' records are written behind (``_engine/writebehind.py``); a registered
task's job never is: it is stored before the response. Here a server process is killed
with SIGKILL right after each response, before it could flush or shut down anything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from afterwork import Afterwork

ROOT = Path(__file__).resolve().parents[2]

SERVER = """
import asyncio, sys
import httpx
from fastapi import FastAPI
from afterwork import Afterwork
from afterwork.fastapi import Jobs

aw = Afterwork(sys.argv[1])

@aw.task(name="welcome")
async def welcome(user: str) -> None: ...

def note(user: str) -> None: ...

app = FastAPI(lifespan=aw.lifespan)

@app.post("/signup/{user}")
async def signup(user: str, jobs: Jobs) -> dict[str, str]:
    jobs.add_task(note, user)  # a plain function: written behind
    return {"id": jobs.add_task(welcome, user).id}

async def main() -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for n in range(int(sys.argv[2])):
                response = await client.post(f"/signup/u{n}")
                response.raise_for_status()
                # With how many write transactions ran inline, on the loop's thread so far
                # (the enqueue's usual way on SQLite: _sqlite_db.py): durable all the same.
                print(response.json()["id"], aw.backend._db.inline_writes, flush=True)
            await asyncio.Event().wait()  # killed here

asyncio.run(main())
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def test_a_registered_task_survives_sigkill_right_after_the_response(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text(SERVER)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    requests = 30
    process = subprocess.Popen(
        [sys.executable, "server.py", url, str(requests)],
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    ids: list[str] = []
    inline = 0
    try:
        assert process.stdout is not None
        while len(ids) < requests:
            line = process.stdout.readline()
            assert line, "the server exited before answering every request"
            job_id, inline_writes = line.split()
            ids.append(job_id)
            inline = int(inline_writes)
        process.send_signal(signal.SIGKILL)  # right after the last response: no shutdown
    finally:
        process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert inline >= 1, "no enqueue ran inline: this test no longer covers that path"

    async def found() -> list[str]:
        async with Afterwork(url) as aw:
            return [job_id for job_id in ids if await aw.get_job(job_id) is None]

    assert asyncio.run(found()) == []
