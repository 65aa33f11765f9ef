"""What the API takes and returns (and what the queue screens receive)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from .models import QueueEntry, QueueStatus


class Login(BaseModel):
    """Staff credentials."""

    username: str
    password: str


class Token(BaseModel):
    """A bearer token: send it as ``Authorization: Bearer <access_token>``."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime


class AssignDoctor(BaseModel):
    """Send a waiting patient to a doctor's consultation queue."""

    patient_id: int
    doctor_id: int


class StatusChange(BaseModel):
    """A room device's report: the consultation started or ended."""

    status: Literal[QueueStatus.IN_CONSULTATION, QueueStatus.DONE]


class QueueItem(BaseModel):
    """One line of a queue screen."""

    entry_id: int
    ticket: str
    patient_id: int
    patient_name: str
    status: QueueStatus
    doctor_id: int | None
    doctor_name: str | None
    room: str | None

    @classmethod
    def of(cls, entry: QueueEntry) -> QueueItem:
        """The screen's view of a queue entry."""
        doctor = entry.doctor
        return cls(
            entry_id=entry.id,
            ticket=entry.ticket,
            patient_id=entry.patient_id,
            patient_name=entry.patient.name,
            status=entry.status,
            doctor_id=entry.doctor_id,
            doctor_name=doctor.name if doctor else None,
            room=doctor.room if doctor else None,
        )


class QueueUpdate(BaseModel):
    """What ``/ws/queue`` pushes: the whole open queue, after ``reason`` changed it."""

    type: Literal["queue"] = "queue"
    reason: str
    entries: list[QueueItem] = Field(default_factory=list)


class Assignment(BaseModel):
    """The assigned entry, and the jobs that tell the screens and the patient."""

    entry: QueueItem
    broadcast_job: str
    notification_job: str


class Accepted(BaseModel):
    """A message taken for processing by a background consumer."""

    accepted: Literal[True] = True
