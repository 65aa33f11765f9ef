from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from afterwork._lifecycle import (
    Claim,
    Lease,
    NewJob,
    create,
    created_job,
    created_jobs,
    evolve,
    job_from_values,
    make_claim,
    make_new_job,
)
from afterwork._records import copier, evolver, filler, lister, maker
from afterwork.job import Job, JobStatus


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    x: int
    y: int = 2
    tags: list[str] = dataclasses.field(default_factory=list)


def test_maker_builds_what_init_builds_with_defaults_and_fresh_factories() -> None:
    make = maker(Point, ("x",))
    first, second = make(1), make(x=1)
    assert first == Point(x=1) == second
    assert first.tags is not second.tags  # a factory is called per record
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.x = 3


def test_copier_is_replace() -> None:
    point = Point(x=1, y=5, tags=["a"])
    copy = copier(Point, ("y",))(point, 7)
    assert copy == dataclasses.replace(point, y=7) and copy.tags is point.tags


def test_unknown_fields_and_post_init_are_refused() -> None:
    with pytest.raises(TypeError):
        maker(Point, ("z",))

    @dataclasses.dataclass(frozen=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError):
        maker(Checked, ("x",))
    with pytest.raises(TypeError):
        maker(Point, ())  # x has no default


def test_make_new_job_is_the_dataclass_with_its_keywords() -> None:
    fields = {
        "id": "i", "task": "t", "queue": "q", "args": [1], "kwargs": {"a": 1}, "priority": 2,
        "max_attempts": 3, "key": "k", "delay": 1.5, "timeout": 4.0, "result_ttl": 5.0,
        "debounce": True,
    }  # fmt: skip
    assert make_new_job(**fields) == NewJob(**fields)  # type: ignore[arg-type]


def test_created_job_is_create_and_may_be_told() -> None:
    new = NewJob(id="i", task="t", args=[1], kwargs={"a": 1}, delay=2.0, headers={"h": "v"})
    job = create(new, 10.0).job
    assert job == Job(
        id="i", task="t", status=JobStatus.SCHEDULED, args=[1], kwargs={"a": 1},
        created_at=10.0, run_at=12.0, headers={"h": "v"},
    )  # fmt: skip
    assert job.args is not new.args and job.headers is not new.headers  # copies
    owner = object()
    told = created_job(new, 10.0, created_now=True, owner=owner)  # type: ignore[arg-type]
    assert told == job and told.created_now is True and told._owner is owner


def test_maker_and_copier_set_inherited_and_unslotted_fields_too() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Labelled(Point):
        label: str = "p"

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Plain:
        x: int
        y: int = 2

    made = maker(Labelled, ("x", "label"))(1, "q")  # x from the base's slots, label its own
    assert made == Labelled(x=1, label="q")
    assert copier(Labelled, ("y",))(made, 9) == Labelled(x=1, y=9, label="q")
    assert maker(Plain, ("x",))(4) == Plain(x=4)


def test_evolver_is_replace_for_the_class_and_its_subclasses() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Flagged(Point):
        flag: bool = False

    point = Point(x=1, y=5, tags=["a"])
    evolve_point = evolver(Point)
    copy = evolve_point(point, y=7)
    assert copy == dataclasses.replace(point, y=7) and copy.tags is point.tags
    assert evolve_point(point) == point and evolve_point(point) is not point
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.x = 3
    with pytest.raises(TypeError):
        evolve_point(point, z=1)
    flagged = Flagged(x=1, flag=True)  # a subclass has slots of its own: ``replace``
    assert evolve_point(flagged, y=9) == Flagged(x=1, y=9, flag=True)


def test_filler_builds_from_every_field_in_order() -> None:
    point = filler(Point)((1, 5, ["a"]))
    assert point == Point(x=1, y=5, tags=["a"])
    with pytest.raises(ValueError):
        filler(Point)((1, 5))


def test_the_jobs_fast_copies_are_the_dataclass_ones() -> None:
    job = create(NewJob(id="j1", task="t", kwargs={"a": 1}), 1.0).job
    changed: dict[str, Any] = {"attempts": 2, "started_at": 3.0, "status": JobStatus.RUNNING}
    assert evolve(job, **changed) == dataclasses.replace(job, **changed)
    with pytest.raises(TypeError):
        evolve(job, nope=1)
    values = tuple(getattr(job, f.name) for f in dataclasses.fields(Job))
    assert job_from_values(values) == job
    with pytest.raises(TypeError):
        job_from_values(values[:-1])
    assert make_claim(job, "tok") == Claim(job, "tok")
    assert make_claim(job, "tok").lease == Lease("j1", "tok")


def test_lister_builds_one_record_per_item_with_defaults_and_fresh_factories() -> None:
    make_all = lister(Point, {"x": "item * scale"}, ("scale",), {})
    first, second = make_all([1, 2], 10)
    assert (first, second) == (Point(x=10), Point(x=20))
    assert first.tags is not second.tags  # a factory is called per record
    assert make_all([], 1) == []
    with pytest.raises(TypeError):
        lister(Point, {"z": "item"}, (), {})

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Plain:
        x: int

    with pytest.raises(TypeError):  # no slots to set
        lister(Plain, {"x": "item"}, (), {})


@pytest.mark.parametrize("owner", [None, object()])
def test_created_jobs_is_created_job_for_each(owner: Any) -> None:
    news = [
        NewJob(id="a", task="t"),
        NewJob(
            id="b", task="u", queue="q", args=[1], kwargs={"k": [2]}, priority=-3,
            max_attempts=4, key="k", delay=5.0, timeout=3.0, result_ttl=0.0,
            headers={"h": "v"},
        ),
        NewJob(id="c", task="t", delay=-1.0),
    ]  # fmt: skip
    told = {} if owner is None else {"created_now": True, "owner": owner}
    made = created_jobs(news, 10.0, **told)
    each = [created_job(new, 10.0, **told) for new in news]
    assert made == each
    for job, one, new in zip(made, each, news, strict=True):
        assert (job.created_now, job._owner) == (one.created_now, one._owner)
        assert (job.status, job.run_at) == (one.status, one.run_at)
        assert job.args is not new.args and job.kwargs is not new.kwargs  # copies
        assert job.headers is not new.headers
