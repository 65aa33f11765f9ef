"""Arguments are validated at enqueue, stored as JSON, and rebuilt as declared types."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from afterwork import Afterwork, EnqueueError, JobContext, JobStatus, PayloadTooLarge

pytestmark = pytest.mark.anyio


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    number: int


@dataclasses.dataclass
class Point:
    x: float
    y: float


@pytest.fixture
async def aw():
    instance = Afterwork("memory://", seed=1)
    async with instance:
        yield instance


async def stored_count(aw: Afterwork) -> int:
    return len(await aw.list_jobs(limit=1000))


async def test_rich_types_round_trip(aw: Afterwork) -> None:
    seen: list[Any] = []

    @aw.task
    def rich(
        when: datetime,
        day: date,
        ident: uuid.UUID,
        color: Color,
        address: Address,
        point: Point,
        span: timedelta,
        tags: set[str],
        amount: Decimal,
    ) -> None:
        seen.extend([when, day, ident, color, address, point, span, tags, amount])

    values = [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        date(2026, 1, 2),
        uuid.uuid4(),
        Color.BLUE,
        Address(street="Main", number=5),
        Point(1.5, -2.0),
        timedelta(minutes=5),
        {"a", "b"},
        Decimal("12.50"),
    ]
    job = await rich.enqueue(*values)
    assert isinstance(job.args[0], str)  # stored as JSON
    await aw.drain()
    done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED, done
    assert seen == values
    assert [type(v) for v in seen] == [type(v) for v in values]


@pytest.mark.parametrize(
    ("args", "kwargs", "param"),
    [
        (("x",), {}, "n"),  # not an int
        ((1,), {"name": 5}, "name"),  # pydantic does not turn ints into str
        ((1,), {"when": "yesterday"}, "when"),
    ],
)
async def test_bad_argument_names_the_parameter_and_stores_nothing(
    aw: Afterwork, args: tuple[Any, ...], kwargs: dict[str, Any], param: str
) -> None:
    @aw.task
    async def typed(n: int, name: str = "x", when: datetime | None = None) -> None: ...

    with pytest.raises(EnqueueError) as info:
        await typed.enqueue(*args, **kwargs)
    assert info.value.param == param
    assert repr(param) in str(info.value)
    assert await stored_count(aw) == 0


async def test_wrong_arity_is_an_enqueue_error(aw: Afterwork) -> None:
    @aw.task
    async def two(a: int, b: int) -> None: ...

    with pytest.raises(EnqueueError, match="missing a required argument"):
        await two.enqueue(1)
    with pytest.raises(EnqueueError, match="unexpected keyword"):
        await two.enqueue(1, 2, c=3)
    assert await stored_count(aw) == 0


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        b"bytes",
        Decimal("1.5"),
        object(),
        float("nan"),
        float("inf"),
        {1: "non-str key"},
        (1, 2),
        "\ud800",
        datetime(2026, 1, 1),
    ],
    ids=["set", "bytes", "decimal", "object", "nan", "inf", "int-key", "tuple", "surrogate", "dt"],
)
async def test_untyped_parameters_take_plain_json_only(aw: Afterwork, value: Any) -> None:
    @aw.task
    async def loose(payload) -> None: ...

    with pytest.raises(EnqueueError):
        await loose.enqueue(value)
    assert await stored_count(aw) == 0


async def test_deep_nesting_is_rejected_cleanly(aw: Afterwork) -> None:
    @aw.task
    async def loose(payload: Any) -> None: ...

    deep: Any = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(EnqueueError, match="nested deeper"):
        await loose.enqueue(deep)
    assert await stored_count(aw) == 0


async def test_plain_json_round_trips_exactly(aw: Afterwork) -> None:
    received: list[Any] = []

    @aw.task
    async def loose(payload: Any) -> None:
        received.append(payload)

    value = {"a": [1, 2.5, None, True, "é✓"], "b": {"c": []}}
    await loose.enqueue(value)
    await aw.drain()
    assert received == [value]


async def test_payload_size_limit(aw: Afterwork) -> None:
    small = Afterwork("memory://", max_payload=1024)

    @small.task
    async def blob(data: str) -> None: ...

    overhead = len('[["' + '"],{}]')
    await blob.enqueue("x" * (1024 - overhead))  # exactly at the limit
    with pytest.raises(PayloadTooLarge):
        await blob.enqueue("x" * (1024 - overhead + 1))
    assert len(await small.list_jobs()) == 1
    await small.aclose()


async def test_context_and_defaults_are_not_arguments(aw: Afterwork) -> None:
    got: list[Any] = []

    @aw.task
    async def job(ctx: JobContext, a: int, *, b: str = "dflt") -> None:
        got.append((ctx.id, a, b))

    stored = await job.enqueue(a=1)
    assert (stored.args, stored.kwargs) == ([1], {})  # normalised by the signature
    await aw.drain()
    assert got == [(stored.id, 1, "dflt")]
    assert "ctx" not in job.codec.json_schema()["properties"]
    assert job.codec.json_schema()["required"] == ["a"]


async def test_varargs_and_varkw(aw: Afterwork) -> None:
    got: list[Any] = []

    @aw.task
    async def many(first: int, *rest: int, **named: str) -> None:
        got.append((first, rest, named))

    await many.enqueue(1, 2, 3, x="y")
    await aw.drain()
    assert got == [(1, (2, 3), {"x": "y"})]
    with pytest.raises(EnqueueError) as info:
        await many.enqueue(1, "two")
    assert info.value.param == "rest"


def test_context_with_varargs_is_refused_at_declaration() -> None:
    aw = Afterwork("memory://")
    with pytest.raises(TypeError, match="keyword-only"):

        @aw.task
        async def bad(ctx: JobContext, *rest: int) -> None: ...


def test_task_registration_rules() -> None:
    aw = Afterwork("memory://")

    @aw.task(name="custom")
    def f() -> int:
        return 7

    assert f.name == "custom" and aw.get_task("custom") is f
    assert f() == 7  # calling the task calls the function
    with pytest.raises(ValueError, match="already registered"):
        aw.register(lambda: None, name="custom")
    with pytest.raises(TypeError, match="already a task"):
        aw.register(f)
    with pytest.raises(ValueError, match="retries"):
        aw.task(retries=-1)
    with pytest.raises(ValueError, match="queue"):
        aw.task(queue="_private")
    with pytest.raises(ValueError, match="timeout"):
        aw.task(timeout=0)
    from afterwork import TaskNotFound

    with pytest.raises(TaskNotFound):
        aw.get_task("missing")


async def test_enqueue_options_are_checked(aw: Afterwork) -> None:
    @aw.task
    async def t() -> None: ...

    for bad in ({"delay": -1}, {"key": ""}, {"priority": "high"}, {"queue": "_x"}, {"nope": 1}):
        with pytest.raises(EnqueueError):
            t.options(**bad)
    call = t.options(priority=3).options(queue="other")
    job = await call.enqueue()
    assert (job.priority, job.queue) == (3, "other")


async def test_task_of_another_instance_is_refused(aw: Afterwork) -> None:
    other = Afterwork("memory://")

    @other.task
    async def foreign() -> None: ...

    with pytest.raises(EnqueueError, match="another Afterwork"):
        aw.build_job(foreign, (), {}, {})


@pytest.mark.parametrize("name", ["a\x00b", "tab\there", "\ud800", "x" * 501, "\x1b[31mred"])
def test_task_names_no_store_can_hold_are_refused(name: str) -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ValueError, match="task name"):
        aw.register(lambda: None, name=name)
    assert aw.tasks == {}


@pytest.mark.parametrize("options", [{"priority": 1001}, {"queue": "a\x00"}, {"queue": "\udc80"}])
def test_task_options_outside_the_limits_are_refused(options: dict[str, Any]) -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ValueError):
        aw.task(**options)


def test_a_task_without_options_builds_its_later_jobs_from_a_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import afterwork.app

    aw = Afterwork("memory://")

    @aw.task(queue="q", priority=3, retries=2, timeout=5.0, result_ttl=60.0)
    async def work(n: int = 0) -> None: ...

    first = aw.build_job(work, (1,), {}, {})
    # Later jobs skip the checks the first passed (the limits' keys, the options).
    monkeypatch.setattr(afterwork.app, "keyed", None)
    monkeypatch.setattr(afterwork.app, "check_options", None)
    later = aw.build_job(work, (2,), {}, {})
    empty = aw.build_job(work, (), {}, {})
    assert later.id > first.id
    assert dataclasses.replace(later, id=first.id, args=[1]) == first
    assert (empty.args, empty.kwargs) == ([], {})
    with pytest.raises(EnqueueError, match="'n'"):  # the arguments are still checked
        aw.build_job(work, ("x",), {}, {})


def test_a_plan_holds_while_the_task_keeps_its_options() -> None:
    aw = Afterwork("memory://")

    @aw.task(queue="q")
    async def work() -> None: ...

    assert aw.build_job(work, (), {}, {}).queue == "q"
    work.opts = dataclasses.replace(work.opts, queue="other", priority=7)
    job = aw.build_job(work, (), {}, {})
    assert (job.queue, job.priority) == ("other", 7)
    assert aw.build_job(work, (), {}, {"queue": "x"}).queue == "x"  # options: no plan


def test_tasks_with_per_call_checks_have_no_plan() -> None:
    aw = Afterwork("memory://", max_payload=40)

    @aw.task(debounce=1.0)
    async def debounced() -> None: ...

    @aw.task(concurrency=1, concurrency_key="customer")
    async def limited(customer: int) -> None: ...

    @aw.task
    async def plain(text: str) -> None: ...

    for _ in range(2):  # a second call too: it must check again
        with pytest.raises(EnqueueError, match="debounced"):
            aw.build_job(debounced, (), {}, {})
        assert aw.build_job(limited, (7,), {}, {}).kwargs == {"customer": 7}
        assert aw.build_job(plain, ("x",), {}, {}).args == ["x"]
        with pytest.raises(PayloadTooLarge):  # the plan's jobs too
            aw.build_job(plain, ("x" * 50,), {}, {})
    assert set(aw._job_plans) == {plain}
