"""docs/transactions.md: jobs enqueued inside the app's own SQLAlchemy transaction.

The paths are relative: the docs test runs this module in a temporary directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import String, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from afterwork import Afterwork, Job

# One SQLite file holds the app's tables and afterwork's jobs.
engine = create_async_engine("sqlite+aiosqlite:///./app.db")
Session = async_sessionmaker(engine, expire_on_commit=False)
aw = Afterwork("sqlite:///./app.db")

sent: list[int] = []


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))


@aw.task(retries=3)
async def send_receipt(order_id: int) -> None:
    sent.append(order_id)


async def get_db() -> AsyncIterator[AsyncSession]:
    async with Session() as session:
        yield session


Db = Annotated[AsyncSession, Depends(get_db)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with aw.lifespan(app):
        yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.post("/orders")
async def create_order(email: str, db: Db) -> dict[str, int | str]:
    order = Order(email=email)
    db.add(order)
    await db.flush()  # the order's id, in this transaction
    job = await send_receipt.options(connection=db).enqueue(order.id)
    await db.commit()  # the order and its receipt job, together
    return {"order": order.id, "job": job.id}


async def import_orders(emails: list[str]) -> list[Job]:
    async with Session() as db, db.begin():  # commits at the end of the block
        orders = [Order(email=email) for email in emails]
        db.add_all(orders)
        await db.flush()
        jobs = [aw.build_job(send_receipt, (order.id,), {}, {}) for order in orders]
        return await aw.enqueue_many(jobs, connection=db)


async def add_order_core(email: str) -> Job:
    async with engine.begin() as conn:  # a Core connection works too
        order_id = await conn.scalar(insert(Order).values(email=email).returning(Order.id))
        assert order_id is not None
        return await send_receipt.options(connection=conn).enqueue(order_id)
