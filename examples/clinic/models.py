"""The clinic's tables: staff and their sessions, doctors, patients, the queue, the outbox."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import Base, utcnow


class Role(enum.StrEnum):
    """What a staff member may do: admins also see the afterwork dashboard."""

    STAFF = "staff"
    ADMIN = "admin"


class QueueStatus(enum.StrEnum):
    """Where a patient is in the consultation queue."""

    WAITING = "waiting"
    ASSIGNED = "assigned"
    IN_CONSULTATION = "in_consultation"
    DONE = "done"


#: Statuses that keep a patient on the queue screens.
OPEN_STATUSES = (QueueStatus.WAITING, QueueStatus.ASSIGNED, QueueStatus.IN_CONSULTATION)


class Staff(Base):
    """Someone who logs in: receptionists, nurses, admins."""

    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[Role] = mapped_column(default=Role.STAFF)


class StaffSession(Base):
    """A login: the SHA-256 of its bearer token (never the token) and when it expires."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)

    staff: Mapped[Staff] = relationship(lazy="joined")


class Doctor(Base):
    """A doctor who sees patients in a consultation room."""

    __tablename__ = "doctors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    specialty: Mapped[str] = mapped_column(String(100))
    room: Mapped[str] = mapped_column(String(20))


class Patient(Base):
    """A patient of the clinic."""

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), unique=True)


class QueueEntry(Base):
    """One visit: a checked-in patient waiting, assigned to a doctor, seen, done."""

    __tablename__ = "queue_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("doctors.id"), index=True)
    status: Mapped[QueueStatus] = mapped_column(default=QueueStatus.WAITING, index=True)
    checked_in_at: Mapped[datetime] = mapped_column(default=utcnow)
    assigned_at: Mapped[datetime | None] = mapped_column(default=None)

    patient: Mapped[Patient] = relationship(lazy="joined")
    doctor: Mapped[Doctor | None] = relationship(lazy="joined")

    @property
    def ticket(self) -> str:
        """What the waiting-room screen shows beside the patient's name."""
        return ticket(self.id)


def ticket(entry_id: int) -> str:
    """A visit's ticket number: ``A007``."""
    return f"A{entry_id:03d}"


class OutboxMessage(Base):
    """An e-mail to send. The demo only writes it here; a mailer would relay it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    """Idempotency key: a retried job never writes the same message twice."""
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(4000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


async def open_entries(db: AsyncSession, *, doctor_id: int | None = None) -> list[QueueEntry]:
    """The queue as the screens show it: open visits, assigned ones by doctor, oldest first."""
    query = select(QueueEntry).where(QueueEntry.status.in_(OPEN_STATUSES))
    if doctor_id is not None:
        query = query.where(
            QueueEntry.doctor_id == doctor_id, QueueEntry.status != QueueStatus.WAITING
        )
    query = query.order_by(QueueEntry.assigned_at.asc().nulls_last(), QueueEntry.id)
    return list((await db.scalars(query)).all())
