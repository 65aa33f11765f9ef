"""The clinic's background work, on afterwork: what used to be helpers, threads and loops.

* ``broadcast_queue_update``: pushes the queue to every screen. It used to be a sync helper
  that ran async code with its own event loop ("This event loop is already running"), then a
  ``BackgroundTasks`` call that lost the update silently when it failed. Now it is a task:
  tracked, retried, visible in the dashboard.
* ``notify_patient``: the e-mail to the patient, written to the outbox, retried, timed out.
"""

from __future__ import annotations

import logging
import os

from sqlalchemy import select

from afterwork import Afterwork, JobContext, Retry

from .db import database
from .models import OutboxMessage, QueueEntry
from .realtime import hub, queue_snapshot

logger = logging.getLogger(__name__)

# TODO(sqlite): ``Afterwork()`` (AFTERWORK_URL, else ./afterwork.db) once SQLite lands.
aw = Afterwork(os.environ.get("AFTERWORK_URL", "memory://"))


@aw.task(retries=3, backoff=Retry.exponential(base=0.2, cap=5.0), timeout=15.0)
async def broadcast_queue_update(reason: str) -> dict[str, int]:
    """Send the current queue to every connected screen.

    The queue is read when the job runs, so a retried broadcast still sends fresh data.
    """
    async with database.session() as db:
        update = await queue_snapshot(db, reason)
    screens = await hub.broadcast(update)
    logger.info("queue update (%s) sent to %d screens", reason, screens)
    return {"screens": screens, "entries": len(update.entries)}


@aw.task(
    retries=5,
    backoff=Retry.exponential(base=1.0, cap=60.0),
    timeout=10.0,
    dont_retry=(LookupError,),
)
async def notify_patient(entry_id: int, ctx: JobContext) -> dict[str, str]:
    """E-mail the patient which room to go to (the demo writes it to the outbox table)."""
    key = f"assigned:{ctx.idempotency_key}"  # the same on every attempt: no duplicate mail
    async with database.session() as db:
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
