"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Playwright's own browser download is never used: it launches ``/usr/bin/chromium``.
Without Chromium the test skips locally and FAILS in CI (``CI=true``):
``scripts/install-system-deps`` installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from afterwork import Afterwork, Job, JobStatus, ServiceContext

from ..waiting import eventually
from .conftest import AUTH, CSRF, SESSION_COOKIE, TOKEN, make_app, serve

if TYPE_CHECKING:
    from playwright.async_api import Browser, Dialog, Page

pytestmark = pytest.mark.anyio

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PAYLOAD = f"{SCRIPT} {IMG} {{{{7*7}}}}"
# The README's screenshot is refreshed only on request, so test runs leave the tree clean:
# AFTERWORK_UPDATE_SCREENSHOT=1 make test
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the browser test: scripts/install-system-deps)")
    pytest.skip(reason)


def test_a_missing_browser_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        _missing("chromium is not installed")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _missing("chromium is not installed")


@pytest.fixture
def chromium() -> str:
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(executable):
        _missing("chromium is not installed")
    return executable


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def aw() -> AsyncIterator[Afterwork]:
    instance = Afterwork("memory://")

    @instance.task(name="resize")
    async def resize(image: str, width: int) -> dict[str, Any]:
        return {"image": image, "width": width}

    @instance.task(name=f"evil {SCRIPT}")
    async def evil(text: str, extra: dict[str, str]) -> str:
        raise ValueError(f"bad input: {text} {extra}")

    @instance.task(name="echo")
    async def echo(text: str) -> dict[str, str]:
        return {"echo": text, IMG: SCRIPT}

    @instance.task(name="later", queue="parked")  # no worker serves this queue
    async def later(n: int) -> int:
        return n

    yield instance
    await instance.aclose()


async def injected(page: Page) -> dict[str, int]:
    """Elements the payloads would create if they were ever parsed as HTML."""
    counts: dict[str, int] = await page.evaluate(
        """() => ({
            scripts: document.querySelectorAll('script').length,
            images: document.querySelectorAll('img, iframe, object, embed').length,
            handlers: [...document.querySelectorAll('*')]
                .filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
        })"""
    )
    return counts


async def test_dashboard_lists_jobs_live_and_renders_hostile_data_as_text(
    aw: Afterwork, browser: Browser, tmp_path: Path
) -> None:
    async with serve(make_app(aw)) as url:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        await context.add_cookies([{"name": SESSION_COOKIE, "value": TOKEN, "url": url}])
        page = await context.new_page()
        dialogs: list[str] = []
        errors: list[str] = []

        async def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        async def enqueue(task: str, **body: Any) -> str:
            async with httpx.AsyncClient(base_url=f"{url}/afterwork") as client:
                response = await client.post(
                    f"/tasks/{task}/enqueue", json=body, headers={**AUTH, **CSRF}
                )
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        with anyio.fail_after(60):
            response = await page.goto(f"{url}/afterwork/")
            assert response is not None and response.status == 200
            await page.wait_for_selector("#live[data-state=open]")
            assert await injected(page) == {"scripts": 1, "images": 0, "handlers": 0}

            # Jobs enqueued after the page loaded show up live, through the event stream.
            good = await enqueue("resize", args=["cat.png", 640])
            await page.wait_for_selector(f'tr[data-job="{good}"] td.status-succeeded')
            await enqueue("later", args=[1])
            bad = await enqueue(
                f"evil {SCRIPT}",
                args=[PAYLOAD],
                kwargs={"extra": {IMG: SCRIPT}},
            )
            echo = await enqueue("echo", args=[PAYLOAD], options={"key": IMG})
            await page.wait_for_selector(f'tr[data-job="{bad}"] td.status-failed')
            await page.wait_for_selector(f'tr[data-job="{echo}"] td.status-succeeded')
            row = await page.text_content(f'tr[data-job="{bad}"]')
            assert row is not None and SCRIPT in row  # the task name, as text
            await page.wait_for_selector("#queues td:text('parked')")
            # The lifespan's worker, from its presence record.
            (worker,) = await aw.workers()
            await page.wait_for_selector(f'#workers tr[data-worker="{worker.id}"]')
            cells = await page.locator(
                f'#workers tr[data-worker="{worker.id}"] td'
            ).all_text_contents()
            assert cells[1:4] == [worker.host, str(worker.pid), "default"]
            assert cells[4].endswith(f" / {worker.concurrency}")
            shot = (
                DOCS_SCREENSHOT
                if os.environ.get("AFTERWORK_UPDATE_SCREENSHOT")
                else tmp_path / "dashboard.png"
            )
            await page.screenshot(path=str(shot), full_page=True, animations="disabled")
            assert shot.stat().st_size > 10_000  # a real page, not a blank one

            # The failed job's page: arguments, error and traceback, all as text.
            await page.click(f'tr[data-job="{bad}"] a')
            await page.wait_for_selector("#job-error-section:not([hidden])")
            message = await page.text_content("#job-error-message")
            assert message is not None and SCRIPT in message and IMG in message
            assert "{{7*7}}" in message  # no template ever evaluated it
            args = await page.text_content("#job-args")
            assert args is not None and SCRIPT in args
            traceback = await page.text_content("#job-traceback")
            assert traceback is not None and "ValueError" in traceback
            # Its attempt timeline: one attempt, failed, its error as text.
            await page.wait_for_selector("#job-attempts-section:not([hidden])")
            attempts = await page.locator("#job-attempts tbody tr").all_text_contents()
            assert len(attempts) == 1
            assert attempts[0].startswith("1") and "failed" in attempts[0]
            assert SCRIPT in attempts[0] and "ValueError" in attempts[0]
            assert await injected(page) == {"scripts": 1, "images": 0, "handlers": 0}

            # The succeeded job's page: the result (keys and values) as text.
            await page.goto(f"{url}/afterwork/#/jobs/{echo}")
            await page.wait_for_selector("#job-result:has-text('echo')")
            result = await page.text_content("#job-result")
            assert result is not None and SCRIPT in result and "onerror" in result
            assert await injected(page) == {"scripts": 1, "images": 0, "handlers": 0}

            # Cancel and retry from the job page of a job no worker takes.
            parked = await enqueue("later", args=[2])
            await page.goto(f"{url}/afterwork/#/jobs/{parked}")
            await page.wait_for_selector("#job-fields td.status-queued")
            await page.click("#cancel")
            await page.wait_for_selector("#job-fields td.status-cancelled")
            await page.click("#retry")
            await page.wait_for_selector("#job-fields td.status-queued")
            assert await page.is_disabled("#retry")

        await context.close()
    assert dialogs == []
    assert errors == []


async def test_dashboard_shows_schedules_with_run_now_and_service_health(
    browser: Browser,
) -> None:
    aw = Afterwork("memory://")

    @aw.cron("0 3 * * *", name=f"nightly {SCRIPT}", tz="Europe/Paris")
    async def nightly() -> str:
        return "purged"

    @aw.service(name="pump")
    async def pump(ctx: ServiceContext) -> None:
        await ctx.wait_stopping()

    @aw.service(name="leader", singleton=True)
    async def leader(ctx: ServiceContext) -> None:
        await ctx.wait_stopping()

    async with serve(make_app(aw)) as url:
        context = await browser.new_context()
        await context.add_cookies([{"name": SESSION_COOKIE, "value": TOKEN, "url": url}])
        page = await context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        await page.goto(f"{url}/afterwork/")
        await page.wait_for_selector("#schedules-section:not([hidden])")
        row = page.locator("#schedules tbody tr")
        await row.filter(has_text="0 3 * * * (Europe/Paris)").wait_for()
        assert SCRIPT in (await row.first.text_content() or "")  # the name, as text
        await page.wait_for_selector("#services td:text('running')")
        # Each running instance with host and pid; the singleton's is its lease holder.
        here = f"{socket.gethostname()}:{os.getpid()} (this process)"
        services = page.locator("#services tbody tr")
        pump_row = services.filter(has_text="pump")
        await pump_row.filter(has_text="every process").filter(has_text=here).wait_for()
        leader_row = services.filter(has_text="leader").filter(has_text="singleton")
        await leader_row.filter(has_text=f"held by {here}").wait_for()
        await row.first.locator("button").click()
        # "Run now" enqueued the schedule's task; the live job list shows it finish.
        job = await eventually(lambda: _first_job(aw))
        await page.wait_for_selector(f'tr[data-job="{job.id}"] td.status-succeeded')
        assert dialogs == []
        assert (await injected(page))["images"] == 0
        await context.close()
    await aw.aclose()


async def _first_job(aw: Afterwork) -> Job | None:
    jobs = await aw.list_jobs()
    return jobs[0] if jobs else None


async def test_dashboard_pauses_and_resumes_a_queue(browser: Browser, aw: Afterwork) -> None:
    later = aw.get_task("later")
    await later.enqueue(1)
    async with serve(make_app(aw)) as url:
        context = await browser.new_context()
        await context.add_cookies([{"name": SESSION_COOKIE, "value": TOKEN, "url": url}])
        page = await context.new_page()
        await page.goto(f"{url}/afterwork/")
        row = page.locator("#queues tbody tr", has_text="parked")
        await row.locator("button.queue-pause").click()
        await page.locator("#queues tbody tr", has_text="parked (paused)").wait_for()
        assert await aw.paused_queues() == {"parked"}
        await (
            page.locator("#queues tbody tr", has_text="parked")
            .locator("button.queue-resume")
            .click()
        )
        await page.locator("#queues button.queue-pause").wait_for()
        assert await eventually(lambda: _none_paused(aw))
        await context.close()


async def _none_paused(aw: Afterwork) -> bool:
    return await aw.paused_queues() == frozenset()


async def test_dashboard_cancels_the_jobs_a_filter_matches_after_confirming(
    browser: Browser, aw: Afterwork
) -> None:
    later = aw.get_task("later")
    ids = {(await later.enqueue(n)).id for n in range(3)}
    async with serve(make_app(aw)) as url:
        context = await browser.new_context()
        await context.add_cookies([{"name": SESSION_COOKIE, "value": TOKEN, "url": url}])
        page = await context.new_page()
        dialogs: list[str] = []

        async def answer(dialog: Any) -> None:
            dialogs.append(dialog.message)
            await (dialog.dismiss() if len(dialogs) == 1 else dialog.accept())

        page.on("dialog", answer)
        await page.goto(f"{url}/afterwork/")
        await page.fill("#filters input[name=queue]", "parked")
        await page.click("#filters button[type=submit]")
        await page.click("#bulk-cancel")
        await eventually(lambda: _true(len(dialogs) == 1))
        assert dialogs == ["cancel 3 job(s) matching the filter?"]
        assert {j.status for j in await aw.list_jobs()} == {JobStatus.QUEUED}  # declined
        await page.click("#bulk-cancel")
        await page.locator("#notice", has_text="cancel: 3 of 3 job(s)").wait_for()
        assert {j.id for j in await aw.list_jobs(status=JobStatus.CANCELLED)} == ids
        await context.close()


async def _true(value: bool) -> bool | None:
    return value or None


async def test_dashboard_charts_history_and_fits_a_phone(browser: Browser, tmp_path: Path) -> None:
    from afterwork.backends.base import HistoryRow, HistoryStore
    from afterwork.history import History

    aw = Afterwork("memory://")
    history = History(aw)

    @aw.task(name="resize")
    async def resize(n: int) -> int:
        return n

    @aw.task(name="flop")
    async def flop() -> None:
        raise ValueError("no")

    update = bool(os.environ.get("AFTERWORK_UPDATE_SCREENSHOT"))
    shots = DOCS_SCREENSHOT.parent / "img" if update else tmp_path
    shots.mkdir(exist_ok=True)
    errors: list[str] = []
    try:
        async with serve(make_app(aw)) as url:
            with anyio.fail_after(60):
                jobs = [await resize.enqueue(n) for n in range(5)] + [await flop.enqueue()]
                for job in jobs:
                    await aw.wait_for_job(job.id, timeout=20)
                await history.flush()
                # An hour of another task's history, to draw more than one bar.
                now = aw.backend.now()
                minute = now - now % 60.0
                store = aw.backend
                assert isinstance(store, HistoryStore)
                await store.record_history(
                    [
                        HistoryRow(
                            minute=minute - 60.0 * ago, task="report", queue="default",
                            succeeded=20 + (ago * 7) % 30, failed=ago % 9 // 8,
                            retried=(ago % 13) // 10, run_sum=1.0, run_buckets={30 + ago % 5: 9},
                            wait_sum=1.0, wait_buckets={20 + (ago * 5) % 17: 9},
                        )
                        for ago in range(1, 59)
                    ]
                )  # fmt: skip

                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                await context.add_cookies([{"name": SESSION_COOKIE, "value": TOKEN, "url": url}])
                page = await context.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{url}/afterwork/")
                await page.wait_for_selector("#chart-throughput rect.bar")
                await page.wait_for_selector("#chart-failures rect.bar")
                await page.wait_for_selector('#task-stats tr[data-task="flop"]')
                rows = {
                    cells[0]: cells
                    for cells in [
                        await row.locator("td").all_text_contents()
                        for row in await page.locator("#task-stats tbody tr").all()
                    ]
                }
                assert rows["resize"][1:4] == ["default", "5", "0.0 %"]
                assert rows["flop"][1:4] == ["default", "1", "100.0 %"]
                assert rows["report"][2] == str(58 * 9)
                bars = await page.locator("#chart-throughput rect.bar").count()
                assert bars == 59  # one per minute that saw a success, none for the others
                assert rows["resize"][4].endswith("ms")  # run p95
                caption = await page.text_content("#chart-throughput-max")
                assert caption is not None and caption.startswith("max ")
                assert await page.is_hidden("#history-none")
                await page.screenshot(
                    path=str(shots / "dashboard-overview.png"), animations="disabled"
                )

                await page.click('#range button[data-range="86400"]')
                await page.wait_for_selector('#range button[data-range="86400"][aria-pressed=true]')
                await page.wait_for_selector("#chart-throughput rect.bar")
                await context.close()

                phone = await browser.new_context(
                    viewport={"width": 390, "height": 844}, device_scale_factor=2
                )
                await phone.add_cookies([{"name": SESSION_COOKIE, "value": TOKEN, "url": url}])
                page = await phone.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                await page.goto(f"{url}/afterwork/")
                await page.wait_for_selector("#chart-wait rect.bar")
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390  # nothing wider than the screen: tables scroll inside
                box = await page.locator("#chart-throughput").bounding_box()
                assert box is not None and 300 <= box["width"] <= 390
                await page.screenshot(
                    path=str(shots / "dashboard-phone.png"), full_page=True, animations="disabled"
                )
                await phone.close()
    finally:
        await aw.aclose()
    assert errors == []
    assert (shots / "dashboard-phone.png").stat().st_size > 10_000
