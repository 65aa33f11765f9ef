from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI

from afterwork import Afterwork

aw = Afterwork("memory://")


@aw.cron("0 9 * * *", tz="Europe/Paris")  # every day at 09:00, Paris time
async def daily_report() -> None: ...


@aw.cron("30 2 * * *", tz="America/New_York", misfire="skip")
@aw.task(retries=3, timeout=600)  # task options: put @aw.task under the schedule
async def nightly_cleanup() -> None: ...


@aw.every(timedelta(seconds=30), name="refresh-rates")
async def refresh_exchange_rates() -> None: ...


app = FastAPI(lifespan=aw.lifespan)  # every replica runs the scheduler; each tick runs once


@app.post("/admin/report")
async def run_report_now() -> dict[str, str]:
    job = await aw.trigger(daily_report.name)  # "run now": an ordinary job, not a tick
    return {"job": job.id}
