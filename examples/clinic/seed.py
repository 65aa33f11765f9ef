"""Demo data: staff, doctors, patients in the waiting room. Safe to run again and again.

``python -m examples.clinic.seed`` (what ``make demo`` runs first) adds whatever is
missing, keyed on usernames, doctor names and patient e-mails, so nothing is duplicated;
a demo patient with no open visit is checked in again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .auth import hash_password
from .db import database
from .models import OPEN_STATUSES, Doctor, Patient, QueueEntry, Role, Staff

logger = logging.getLogger(__name__)

#: username, password, full name, role. Demo credentials: printed by ``make demo``.
STAFF = [
    ("admin", "admin-demo", "Grace Admin", Role.ADMIN),
    ("reception", "reception-demo", "Rita Reception", Role.STAFF),
]
DOCTORS = [
    ("Dr. Ana Ruiz", "general practice", "101"),
    ("Dr. Ben Okafor", "paediatrics", "102"),
    ("Dr. Chen Wei", "dermatology", "103"),
]
PATIENTS = [
    ("Ada Lovelace", "ada@example.com"),
    ("Alan Turing", "alan@example.com"),
    ("Grace Hopper", "grace@example.com"),
    ("Edsger Dijkstra", "edsger@example.com"),
    ("Barbara Liskov", "barbara@example.com"),
    ("Donald Knuth", "donald@example.com"),
]


@dataclass(frozen=True, slots=True)
class SeedReport:
    """What a seeding run added."""

    staff: int
    doctors: int
    patients: int
    checked_in: int


async def seed(db: AsyncSession) -> SeedReport:
    """Add the demo data that is missing; return what was added."""
    staff = doctors = patients = checked_in = 0
    for username, password, full_name, role in STAFF:
        if await db.scalar(select(Staff.id).where(Staff.username == username)) is None:
            db.add(
                Staff(
                    username=username,
                    full_name=full_name,
                    password_hash=hash_password(password),
                    role=role,
                )
            )
            staff += 1
    for name, specialty, room in DOCTORS:
        if await db.scalar(select(Doctor.id).where(Doctor.name == name)) is None:
            db.add(Doctor(name=name, specialty=specialty, room=room))
            doctors += 1
    for name, email in PATIENTS:
        patient = await db.scalar(select(Patient).where(Patient.email == email))
        if patient is None:
            patient = Patient(name=name, email=email)
            db.add(patient)
            await db.flush()
            patients += 1
        open_visits = await db.scalar(
            select(func.count())
            .select_from(QueueEntry)
            .where(QueueEntry.patient_id == patient.id, QueueEntry.status.in_(OPEN_STATUSES))
        )
        if not open_visits:
            db.add(QueueEntry(patient_id=patient.id))
            checked_in += 1
    await db.commit()
    return SeedReport(staff, doctors, patients, checked_in)


async def main() -> SeedReport:
    """Seed the database at ``CLINIC_DATABASE_URL`` (default ``./clinic.db``)."""
    await database.open()
    try:
        async with database.session() as db:
            return await seed(db)
    finally:
        await database.aclose()


if __name__ == "__main__":
    report = asyncio.run(main())
    print(
        f"seeded: {report.staff} staff, {report.doctors} doctors, {report.patients} patients "
        f"added; {report.checked_in} patients checked in"
    )
