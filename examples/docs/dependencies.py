"""docs/dependencies.md: FastAPI dependencies in jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI

from afterwork import Afterwork, JobContext

aw = Afterwork("memory://")  # your store: "sqlite:///./afterwork.db", "redis://…"


class Database:
    """A stand-in for your database: rows become visible on commit."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.open_sessions = 0


class Session:
    """A stand-in for a database session (SQLAlchemy's ``Session``, say)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.pending: list[str] = []
        database.open_sessions += 1

    def add(self, row: str) -> None:
        self.pending.append(row)

    def commit(self) -> None:
        self.database.rows.extend(self.pending)
        self.pending.clear()

    def rollback(self) -> None:
        self.pending.clear()

    def close(self) -> None:
        self.database.open_sessions -= 1


DATABASE = Database()


def get_database() -> Database:
    return DATABASE


def get_db(database: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    db = Session(database)
    try:
        yield db
        db.commit()
    except Exception:
        db.rollback()
        raise
    finally:
        db.close()


DB = Annotated[Session, Depends(get_db)]


@aw.task(retries=3)
async def audit(action: str, user_id: int, db: DB, ctx: JobContext) -> None:
    db.add(f"user {user_id}: {action} (job {ctx.id})")
    if action == "explode":
        raise ValueError("nothing is committed")


app = FastAPI(lifespan=aw.lifespan)


@app.post("/login")
async def login(user_id: int, db: DB) -> dict[str, str]:
    db.add(f"user {user_id} logged in")
    job = await audit.enqueue("login", user_id)  # no db: the job gets its own session
    return {"job": job.id}
