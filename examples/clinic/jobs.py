"""The clinic's background work, on afterwork: what used to be helpers, threads and loops.

* ``broadcast_queue_update``: pushes the queue to every screen, in this process and, through
  ``aw.publish``, in every other web process (whichever process runs it). It used to be a
  sync helper that ran async code with its own event loop ("This event loop is already
  running"), then a ``BackgroundTasks`` call that lost the update silently when it failed.
  Now it is a task: tracked, retried, visible in the dashboard.
* ``notify_patient``: the e-mail to the patient, written to the outbox, retried, timed out.
  The route that assigns the patient enqueues it inside its own transaction
  (``options(connection=db)``): the assignment and its e-mail job commit together.
* ``status_updater``: consumes the room devices' messages from the in-process bus.
* ``purge_expired_sessions``: deletes expired logins.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from afterwork import Afterwork, JobContext, Retry, ServiceContext

from . import auth
from .db import DbSession, database, store_url
from .models import OutboxMessage, QueueEntry, QueueStatus, ticket
from .realtime import SCREEN_CHANNEL, Bus, StatusMessage, hub, queue_snapshot, screen_message

logger = logging.getLogger(__name__)

#: The jobs live in the clinic's own database (``CLINIC_DATABASE_URL``; by default the
#: SQLite file ``./clinic.db``): a route enqueues inside its own transaction.
aw = Afterwork(store_url())


@aw.task(retries=3, backoff=Retry.exponential(base=0.2, cap=5.0), timeout=15.0)
async def broadcast_queue_update(reason: str, db: DbSession) -> dict[str, int]:
    """Send the current queue to every connected screen.

    ``db`` is the routes' own ``Depends(get_db)``: a fresh session per attempt, closed after.
    The queue is read when the job runs, so a retried broadcast still sends fresh data.
    """
    snapshot = await queue_snapshot(db, reason)
    await db.close()  # done reading: don't hold a connection while the screens receive
    screens = await hub.broadcast(snapshot)  # this process's screens
    await aw.publish(SCREEN_CHANNEL, screen_message(snapshot))  # every other process's
    logger.info("queue update (%s) sent to %d screens here, and published", reason, screens)
    return {"screens": screens, "entries": len(snapshot.entries)}


@aw.task(
    retries=5,
    backoff=Retry.exponential(base=1.0, cap=60.0),
    timeout=10.0,
    dont_retry=(LookupError,),
)
async def notify_patient(entry_id: int, ctx: JobContext, db: DbSession) -> dict[str, str]:
    """E-mail the patient which room to go to (the demo writes it to the outbox table)."""
    key = f"assigned:{ctx.idempotency_key}"  # the same on every attempt: no duplicate mail
    entry = await db.get(QueueEntry, entry_id)
    if entry is None or entry.doctor is None:
        raise LookupError(f"queue entry {entry_id} has no doctor assigned")
    if await db.scalar(select(OutboxMessage.id).where(OutboxMessage.key == key)) is None:
        db.add(
            OutboxMessage(
                key=key,
                recipient=entry.patient.email,
                subject=f"Your ticket {entry.ticket}: please go to room {entry.doctor.room}",
                body=(
                    f"Hello {entry.patient.name}, {entry.doctor.name} will see you "
                    f"in room {entry.doctor.room}."
                ),
            )
        )
        await db.commit()
    return {"to": entry.patient.email, "key": key}


#: Which statuses a room device may move a visit from.
STATUS_FROM = {
    QueueStatus.IN_CONSULTATION: (QueueStatus.ASSIGNED,),
    QueueStatus.DONE: (QueueStatus.ASSIGNED, QueueStatus.IN_CONSULTATION),
}


async def apply_status(message: StatusMessage) -> bool:
    """Apply a room device's report; tell the screens. ``False``: it did not apply."""
    async with database.session() as db:
        changed = await db.scalar(
            update(QueueEntry)
            .where(
                QueueEntry.id == message.entry_id,
                QueueEntry.status.in_(STATUS_FROM[message.status]),
            )
            .values(status=message.status)
            .returning(QueueEntry.id)
        )
        await db.commit()
    if changed is None:
        logger.warning("ignored %s for queue entry %d", message.status, message.entry_id)
        return False
    await broadcast_queue_update.enqueue(f"ticket {ticket(message.entry_id)} {message.status}")
    return True


@aw.service(restart="on-failure", backoff=Retry.exponential(base=0.5, cap=30.0))
async def status_updater(ctx: ServiceContext, bus: Bus) -> None:
    """Apply the bus's messages, one at a time, for as long as the app runs.

    It used to be ``asyncio.create_task`` in the lifespan: a crash killed it silently. Now
    afterwork logs the crash with its traceback and starts it again after a backoff.
    """
    while not ctx.stopping:
        message = await bus.receive()
        try:
            await apply_status(message)
        finally:
            bus.done()


@aw.cron("0 3 * * *", tz="UTC", name="purge-expired-sessions")  # nightly; "run now": dashboard
@aw.task(retries=2)
async def purge_expired_sessions(db: DbSession) -> int:
    """Delete the logins past their expiry; return how many."""
    purged = await auth.purge_expired(db)
    logger.info("purged %d expired sessions", purged)
    return purged
