"""Fuzzing the calls that enqueue a job: ``.delay()``, ``.apply_async()`` and ``.map()``.

Every generated call must end one of two ways (docs/jobs.md, "What a job may carry"): it raises
a ``TypeError`` or ``ValueError`` whose message names the function and locates the culprit (an
argument's path, an item, an option) and the rule, and then no row was written and nothing
reached Redis; or its row is written and its job, run once by a real worker, ends ``finished``
with what it was given.

What to expect is worked out here from the documented rules, never with django_jobs' own checks:
a test that asks the code under test what to expect cannot fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import timezone as fixed_offset
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from django_jobs import JobHandle, job
from django_jobs.models import JobRecord
from django_jobs.queues import get_queue, queue_names
from django_jobs.testing import run_burst
from tests.testapp.jobs import echo, echo_call

pytestmark = pytest.mark.django_db(transaction=True)

ECHO = "tests.testapp.jobs.echo()"  # echo(value) on the "high" queue
ECHO_CALL = "tests.testapp.jobs.echo_call()"  # echo_call(*args, **kwargs) on "default"

# The documented limits, written out here rather than imported from django_jobs.
MAX_LEVELS = 100
INT_BOUND = 10**4300  # an int has at most 4,300 digits
MAX_DELAY = timedelta(days=36525)  # countdown and eta: 100 years ahead at most
MAX_TIMEOUT = 30 * 86400

# Examples don't get fresh fixtures: each one starts by emptying the table and Redis itself.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RUN = settings(FUZZ, max_examples=40)


# -- what the rules call for ----------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A refusal a call may earn: the exception type and what its message must hold. A ``maybe``
    refusal may happen or not (a time that is on the bound give or take the call's duration)."""

    error: type[Exception]
    where: str
    rule: str = ""
    maybe: bool = False

    def matches(self, exc: Exception) -> bool:
        return isinstance(exc, self.error) and self.where in str(exc) and self.rule in str(exc)


def at(path: str) -> str:
    """How a refusal's message names the argument path (``argument "value['k'][0]"``)."""
    return f"argument {path!r}"


def text_refusals(text: str, where: str) -> list[Refusal]:
    found = []
    if "\x00" in text:
        found.append(Refusal(ValueError, where, "NUL"))
    if any("\ud800" <= char <= "\udfff" for char in text):
        found.append(Refusal(ValueError, where, "lone surrogate"))
    return found


def value_refusals(value: Any, path: str) -> list[Refusal]:
    """A refusal for every place in ``value`` that breaks a rule (none: the value may be carried)."""
    found: list[Refusal] = []
    pending = [(value, path, 1)]  # the level a list or dict there would be at
    while pending:
        item, where, level = pending.pop()
        if isinstance(item, str):
            found += text_refusals(item, at(where))
        elif item is None or isinstance(item, bool):
            pass
        elif isinstance(item, int):
            if not -INT_BOUND < item < INT_BOUND:
                found.append(Refusal(ValueError, at(where), "4,300 digits"))
        elif isinstance(item, float):
            if not math.isfinite(item):
                found.append(Refusal(ValueError, at(where), "NaN or infinite"))
        elif isinstance(item, list | tuple | dict):
            if level > MAX_LEVELS:
                found.append(Refusal(ValueError, at(where), f"{MAX_LEVELS} levels"))
            elif isinstance(item, dict):
                for key, inner in item.items():
                    if isinstance(key, str):
                        found += text_refusals(key, at(f"{where} key {key!r}"))
                        pending.append((inner, f"{where}[{key!r}]", level + 1))
                    else:
                        found.append(Refusal(TypeError, key_location(where, key), "dict key"))
            else:
                pending.extend((inner, f"{where}[{index}]", level + 1) for index, inner in enumerate(item))
        else:
            found.append(Refusal(TypeError, at(where), "not JSON serializable"))
    return found


def key_location(where: str, key: Any) -> str:
    """Where a message puts a dict key that is not a str: all of its repr if it has one (an int of
    more than 4,300 digits has none), else the start of the path."""
    try:
        return at(f"{where} key {key!r}")
    except ValueError:
        return at(f"{where} key ")[:-1]  # without the closing quote


def call_refusals(args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> list[Refusal]:
    """For ``echo_call(*args, **kwargs)``: each value passed is held to the rules on its own, and
    so is each keyword name."""
    found = []
    for index, value in enumerate(args):
        found += value_refusals(value, f"args[{index}]")
    for name, value in kwargs.items():
        found += text_refusals(name, at(f"kwargs key {name!r}"))
        found += value_refusals(value, f"kwargs[{name!r}]")
    return found


def countdown_refusals(countdown: Any) -> list[Refusal]:
    if countdown is None:
        return []
    if isinstance(countdown, timedelta):
        fits = timedelta(0) <= countdown <= MAX_DELAY
    elif isinstance(countdown, int | float) and not isinstance(countdown, bool):
        fits = 0 <= countdown <= MAX_DELAY.total_seconds()  # False for NaN
    else:
        return [Refusal(TypeError, "countdown")]
    return [] if fits else [Refusal(ValueError, "countdown", "out of bounds")]


def countdown_delay(countdown: float | timedelta) -> timedelta:
    return countdown if isinstance(countdown, timedelta) else timedelta(seconds=countdown)


def as_aware(moment: datetime) -> datetime:
    """A naive datetime means settings.TIME_ZONE, UTC in the tests."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None or moment.utcoffset() is None else moment


def eta_refusals(eta: Any, before: datetime, after: datetime) -> list[Refusal]:
    """``before`` and ``after`` bracket the call: the "now" it measures from lies between them."""
    if eta is None:
        return []
    if not isinstance(eta, datetime):
        return [Refusal(TypeError, "eta")]
    ahead = as_aware(eta)
    if ahead - after > MAX_DELAY:
        return [Refusal(ValueError, "eta", "100 years")]
    if ahead - before > MAX_DELAY:
        return [Refusal(ValueError, "eta", "100 years", maybe=True)]
    return []


# Timeouts in RQ's text form, and whether they are within the bounds.
TIMEOUT_TEXTS = {
    "15m": True,
    "90": True,
    "30s": True,
    "2h": True,
    "1d": True,
    "30d": True,
    "720h": True,
    str(MAX_TIMEOUT): True,
    "abc": False,
    "": False,
    "0": False,
    "0m": False,
    "-5": False,
    "-5m": False,
    "31d": False,
    "721h": False,
    str(MAX_TIMEOUT + 1): False,
    "1e3": False,
    "1.5m": False,
    "15x": False,
    "nan": False,
    "inf": False,
    "9" * 400 + "m": False,
}


def timeout_refusals(timeout: Any) -> list[Refusal]:
    if timeout is None:
        return []
    refused = Refusal(ValueError, "timeout")
    if isinstance(timeout, str):
        return [] if TIMEOUT_TEXTS[timeout] else [refused]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return [refused]
    if 1 <= timeout <= MAX_TIMEOUT:
        return []
    if 0 < timeout < MAX_TIMEOUT + 1:
        # RQ keeps whole seconds: below 1 s or above the bound by less than 1 s may go either way.
        return [Refusal(ValueError, "timeout", maybe=True)]
    return [refused]  # also NaN and infinities


def job_id_refusals(job_id: Any) -> list[Refusal]:
    if job_id is None:
        return []
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
    if isinstance(job_id, str) and 1 <= len(job_id) <= 128 and set(job_id) <= allowed:
        return []
    return [Refusal(ValueError, "job_id")]


def same_json(a: Any, b: Any, *, exact: bool = False) -> bool:
    """Whether ``a`` and ``b`` are the same JSON value.

    PostgreSQL keeps JSON numbers as ``numeric``: a float written with an exponent (1e16, 1e308)
    comes back from a jsonb column as an int of the same value, so numbers compare as floats
    when either is one (which also makes -0.0 equal 0.0, as PostgreSQL gives back 0). JSON has no
    tuples: they come back as lists. A bool is not the number 1. With ``exact`` (what went
    through Redis alone, JSON text both ways) a float must come back a float, -0.0 included.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if exact:
            signs_match = not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b)
            return type(a) is type(b) and a == b and signs_match
        if isinstance(a, float) or isinstance(b, float):
            try:
                return float(a) == float(b)
            except OverflowError:
                return False
        return a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        pairs = zip(a, b, strict=False)
        return len(a) == len(b) and all(same_json(x, y, exact=exact) for x, y in pairs)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[key], b[key], exact=exact) for key in a)
    return type(a) is type(b) and a == b


# -- the values ---------------------------------------------------------------------------------------

# Pieces of text that break a rule, or are easy to get wrong between JSON, SQL and Redis.
PIECES = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ud83d\ude00", "\U0001f600", "\uffff"]
PIECES += ["\U0010ffff", "\u2028", "é", '"', "'", "\\", "\n", "\x7f", "\x01"]
FINE_PIECES = [piece for piece in PIECES if not text_refusals(piece, "")]


def texts(pieces: list[str], characters: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(characters, st.sampled_from(pieces)), max_size=6).map("".join)


# Any code point, lone surrogates and NUL included; and text that may be carried.
any_text = texts(PIECES, st.characters(exclude_categories=()))
fine_text = texts(FINE_PIECES, st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))

BIG = INT_BOUND


def near_power_of_ten(digits: int, factor: int, offset: int, negative: bool) -> int:
    """``±(factor * 10**digits + offset)``: around the 4,300 digits an int may have. Built here, as
    hypothesis shows a strategy's bounds with repr(), which an int of over 4,300 digits has not."""
    magnitude = factor * 10**digits + offset
    return -magnitude if negative else magnitude


offsets = st.integers(min_value=-(10**6), max_value=10**6)
# From 10**4299 to 10**4301, the bound (10**4300) and its neighbours included.
big_int = st.one_of(
    st.builds(near_power_of_ten, st.sampled_from([4299, 4300]), st.integers(1, 10), offsets, st.booleans()),
    st.builds(near_power_of_ten, st.just(4300), st.just(1), st.sampled_from([-1, 0]), st.booleans()),
)
# Up to 10**4300 - 1, the most an int may be.
fine_big_int = st.one_of(
    st.builds(near_power_of_ten, st.just(4299), st.integers(1, 9), offsets, st.booleans()),
    st.builds(near_power_of_ten, st.just(4300), st.just(1), st.just(-1), st.booleans()),
)
any_int = st.one_of(st.integers(), big_int, st.sampled_from([2**63, -(2**63) - 1]))
fine_int = st.one_of(st.integers(), fine_big_int, st.sampled_from([2**63, -(2**63) - 1]))
EDGE_FLOATS = [-0.0, 1e16, 1e308, -1e308, 5e-324, 1e-7, 0.1, 1.7976931348623157e308]
any_float = st.one_of(st.floats(), st.sampled_from([*EDGE_FLOATS, math.nan, math.inf, -math.inf]))
fine_float = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(EDGE_FLOATS))
not_json = st.one_of(
    st.sets(st.integers(), max_size=2),
    st.frozensets(st.text(max_size=2), max_size=2),
    st.binary(max_size=3),
    st.datetimes(),
    st.dates(),
    st.decimals(allow_nan=False, places=2),
    st.complex_numbers(allow_nan=False, max_magnitude=10),
    st.builds(object),
)
odd_key = st.one_of(
    st.integers(),
    st.none(),
    st.floats(),
    st.binary(max_size=2),
    big_int,
    st.sampled_from([(1, 2), True, date(2026, 1, 2)]),
)

fine_scalar = st.one_of(st.none(), st.booleans(), fine_int, fine_float, fine_text)
any_scalar = st.one_of(st.none(), st.booleans(), any_int, any_float, any_text, not_json)


def nested(levels: int, leaf: Any, with_dicts: bool) -> Any:
    """``leaf`` inside ``levels`` lists (or lists and dicts by turns)."""
    value = leaf
    for level in range(levels):
        value = {"k": value} if with_dicts and level % 2 else [value]
    return value


def fine_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(fine_text, inner, max_size=3),
    )


def any_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(any_text, inner, max_size=3),
        st.dictionaries(odd_key, inner, min_size=1, max_size=1),
    )


fine_value = st.recursive(fine_scalar, fine_containers, max_leaves=10)
any_value = st.recursive(any_scalar, any_containers, max_leaves=10)
# Around the depth limit: beyond it (refused), and up to it (carried).
deep_value = st.builds(nested, st.integers(95, 110), fine_scalar, st.booleans())
fine_deep_value = st.builds(nested, st.integers(95, MAX_LEVELS), fine_scalar, st.booleans())

some_value = st.one_of(fine_value, any_value, deep_value)
keyword_name = st.one_of(any_text, st.sampled_from(["self", "args", "kwargs", "value", "queue", "countdown"]))


# -- the options --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FromNow:
    """An eta relative to the moment the call is made (hypothesis draws it before that)."""

    offset: timedelta
    zone: tzinfo | None  # None: a naive datetime (settings.TIME_ZONE, UTC)

    def resolve(self) -> datetime:
        moment = timezone.now() + self.offset
        return moment.replace(tzinfo=None) if self.zone is None else moment.astimezone(self.zone)


zones = st.one_of(
    st.none(),
    st.just(UTC),
    st.builds(fixed_offset, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))),
    st.timezones(),
)
countdowns = st.one_of(
    st.integers(min_value=-10, max_value=10**10),
    st.floats(),
    st.timedeltas(),
    st.timedeltas(min_value=MAX_DELAY - timedelta(seconds=2), max_value=MAX_DELAY + timedelta(seconds=2)),
    st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, 0.0, -0.0, 1e-7, 1e12, 10**400, -(10**400)]),
    st.sampled_from([MAX_DELAY.total_seconds(), MAX_DELAY.total_seconds() + 0.5, True, "10", Decimal(5)]),
)
etas = st.one_of(
    st.builds(FromNow, st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=2)), zones),
    st.builds(
        FromNow,
        st.timedeltas(min_value=MAX_DELAY - timedelta(days=1), max_value=MAX_DELAY + timedelta(days=1)),
        zones,
    ),
    st.builds(FromNow, st.sampled_from([MAX_DELAY, MAX_DELAY + timedelta(microseconds=1)]), zones),
    st.datetimes(timezones=zones),
    st.sampled_from([date(2030, 1, 1), "2030-01-01T00:00:00Z", 1_900_000_000, timedelta(hours=1)]),
)
timeouts = st.one_of(
    st.integers(min_value=-10, max_value=2 * MAX_TIMEOUT),
    st.floats(),
    st.sampled_from([0, -5, 1, MAX_TIMEOUT, MAX_TIMEOUT + 1, 10**400, math.nan, math.inf, -math.inf]),
    st.sampled_from([0.5, 1.0, True, False, timedelta(minutes=5), b"15m", b"90", Decimal(60), -0.5j]),
    st.sampled_from(sorted(TIMEOUT_TEXTS)),
)
job_ids = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9_-]{1,128}\Z"),
    st.sampled_from(["abc\n", "x" * 128 + "\n", "x" * 129, "", "a b", "é", "a/b"]),
    any_text,
    st.integers(),
)
options = st.fixed_dictionaries(
    {},
    optional={"countdown": countdowns, "eta": etas, "timeout": timeouts, "job_id": job_ids},
)
# Options within the bounds, so that delayed rows are seen as often as refusals.
fine_timeouts = st.one_of(
    st.integers(min_value=1, max_value=MAX_TIMEOUT),
    st.sampled_from([text for text, fits in TIMEOUT_TEXTS.items() if fits]),
)
fine_options = st.one_of(
    st.fixed_dictionaries(
        {
            "countdown": st.one_of(
                st.integers(min_value=0, max_value=int(MAX_DELAY.total_seconds())),
                st.floats(min_value=0, max_value=MAX_DELAY.total_seconds()),
                st.timedeltas(min_value=timedelta(0), max_value=MAX_DELAY),
            )
        },
        optional={"timeout": fine_timeouts},
    ),
    st.fixed_dictionaries(
        {"eta": st.builds(FromNow, st.timedeltas(min_value=timedelta(days=-2), max_value=MAX_DELAY), zones)},
        optional={"timeout": fine_timeouts},
    ),
)


# -- the checks ---------------------------------------------------------------------------------------


def start_afresh(redis: Any) -> None:
    """What the fixtures do around a test, done around each example."""
    JobRecord.objects.all().delete()
    redis.flushdb()


def redis_state(redis: Any) -> tuple[list[bytes], dict[str, list[str]]]:
    return sorted(redis.keys()), {name: get_queue(name).get_job_ids() for name in queue_names()}


def enqueue_or_refuse(
    call: Callable[[], Any],
    label: str,
    expected: list[Refusal] | Callable[[datetime, datetime], list[Refusal]],
    redis: Any,
) -> Any:
    """Make the call. If it is refused, check that the rules call for that refusal and that it
    left no row and nothing in Redis, and return None; else check that the rules allow the call,
    and return what it returned. ``expected`` may be worked out from the times just before and just
    after the call, for a bound that counts from the moment of the call."""
    rows, state = JobRecord.objects.count(), redis_state(redis)
    before = timezone.now()
    try:
        returned = call()
    except (TypeError, ValueError) as exc:
        refusals = expected if isinstance(expected, list) else expected(before, timezone.now())
        message = str(exc)
        assert refusals, f"refused, though the rules allow the call: {message}"
        assert label in message, message
        assert any(refusal.matches(exc) for refusal in refusals), (message, refusals)
        assert JobRecord.objects.count() == rows
        assert redis_state(redis) == state
        event("refused")
        return None
    refusals = expected if isinstance(expected, list) else expected(before, timezone.now())
    assert all(refusal.maybe for refusal in refusals), f"accepted, though the rules refuse it: {refusals}"
    event("accepted")
    return returned


def check_queued(handle: JobHandle[Any], queue: str, args: Any, kwargs: Any) -> JobRecord:
    """The row keeps the call, and the job waits in its queue."""
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.queue) == ("queued", queue)
    assert same_json(record.args, args), (record.args, args)
    assert same_json(record.kwargs, kwargs), (record.kwargs, kwargs)
    assert handle.id in get_queue(queue).get_job_ids()
    return record


# -- .delay() --------------------------------------------------------------------------------------------


@FUZZ
@given(value=some_value, as_keyword=st.booleans())
@example(value="a\x00b", as_keyword=False)
@example(value={"\ud800": 1}, as_keyword=True)
@example(value=[BIG], as_keyword=False)
@example(value=[BIG - 1, -(BIG - 1)], as_keyword=False)
@example(value={"k": [math.nan]}, as_keyword=False)
@example(value=nested(MAX_LEVELS, 1, False), as_keyword=False)
@example(value=nested(MAX_LEVELS + 1, 1, True), as_keyword=True)
@example(value={BIG: 1}, as_keyword=False)
@example(value={1: "x"}, as_keyword=False)
def test_delay_keeps_or_refuses_any_argument(redis: Any, value: Any, as_keyword: bool) -> None:
    start_afresh(redis)

    def call() -> JobHandle[Any]:
        return echo.delay(value=value) if as_keyword else echo.delay(value)

    handle = enqueue_or_refuse(call, ECHO, value_refusals(value, "value"), redis)
    if handle is not None:
        check_queued(handle, "high", [] if as_keyword else [value], {"value": value} if as_keyword else {})


@FUZZ
@given(
    args=st.lists(some_value, max_size=2),
    kwargs=st.dictionaries(keyword_name, some_value, max_size=3),
)
@example(args=[], kwargs={"self": 1})
@example(args=[], kwargs={"a\x00": 1})
@example(args=[], kwargs={"\udfff": 1})
@example(args=[nested(MAX_LEVELS, 1, False)], kwargs={"deep": nested(MAX_LEVELS, 1, True)})
@example(args=[nested(MAX_LEVELS + 1, 1, False)], kwargs={})
def test_any_keyword_name_is_kept_or_refused(redis: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    start_afresh(redis)
    handle = enqueue_or_refuse(
        lambda: echo_call.delay(*args, **kwargs), ECHO_CALL, call_refusals(args, kwargs), redis
    )
    if handle is not None:
        check_queued(handle, "default", args, kwargs)


# -- .apply_async() -------------------------------------------------------------------------------------


@FUZZ
@given(value=st.one_of(fine_value, some_value), chosen=st.one_of(options, fine_options))
@example(value=1, chosen={"timeout": math.nan})
@example(value=1, chosen={"timeout": math.inf})
@example(value=1, chosen={"timeout": 10**400})
@example(value=1, chosen={"timeout": "9" * 400 + "m"})
@example(value=1, chosen={"timeout": True})
@example(value=1, chosen={"timeout": Decimal(60)})
@example(value=1, chosen={"countdown": 10**400})
@example(value=1, chosen={"countdown": 0, "eta": FromNow(timedelta(hours=1), UTC)})
@example(value=1, chosen={"job_id": "abc\n"})
@example(value=1, chosen={"eta": FromNow(MAX_DELAY - timedelta(hours=1), None)})
@example(value=1, chosen={"eta": FromNow(MAX_DELAY + timedelta(hours=1), UTC)})
@example(value=1, chosen={"countdown": timedelta(days=1), "timeout": "15m", "job_id": "mine"})
@example(value=1, chosen={"eta": FromNow(timedelta(days=1), fixed_offset(timedelta(hours=16)))})
@example(value=1, chosen={"eta": FromNow(timedelta(days=1), fixed_offset(timedelta(microseconds=1)))})
def test_apply_async_keeps_or_refuses_any_options(redis: Any, value: Any, chosen: dict[str, Any]) -> None:
    start_afresh(redis)
    given_options = {
        name: option.resolve() if isinstance(option, FromNow) else option for name, option in chosen.items()
    }
    countdown, eta = given_options.get("countdown"), given_options.get("eta")

    def expected(before: datetime, after: datetime) -> list[Refusal]:
        refusals = value_refusals(value, "value") + job_id_refusals(given_options.get("job_id"))
        refusals += timeout_refusals(given_options.get("timeout")) + countdown_refusals(countdown)
        refusals += eta_refusals(eta, before, after)
        if countdown is not None and eta is not None:
            refusals.append(Refusal(TypeError, "countdown or eta"))
        return refusals

    before = timezone.now()
    handle = enqueue_or_refuse(lambda: echo.apply_async((value,), **given_options), ECHO, expected, redis)
    after = timezone.now()
    if handle is None:
        return
    if "job_id" in given_options:
        assert handle.id == given_options["job_id"]
    record = JobRecord.objects.get(pk=handle.id)
    event(record.status)
    if "timeout" in given_options:
        assert record.options["timeout"] == given_options["timeout"]
    due: tuple[datetime, datetime] | None = None  # when it is due, give or take the call's duration
    if countdown is not None and countdown_delay(countdown) > timedelta(0):
        due = (before + countdown_delay(countdown), after + countdown_delay(countdown))
    elif eta is not None and (
        as_aware(eta) > after or (as_aware(eta) > before and record.status != "queued")
    ):
        # An eta that passed by the moment the call took for "now" runs now, as one in the past.
        due = (as_aware(eta), as_aware(eta))
    if due is None:
        check_queued(handle, "high", [value], {})
        return
    # Delayed: the row waits for the scheduler, and nothing is in Redis yet.
    assert record.status == "scheduled"
    assert same_json(record.args, [value]) and record.kwargs == {}
    assert record.scheduled_for is not None and due[0] <= record.scheduled_for <= due[1]
    assert redis_state(redis)[1] == {name: [] for name in queue_names()}


# -- .map() ------------------------------------------------------------------------------------------------

ILL_SHAPED = [(), (1, 2), {}, {"other": 1}, {"value": 1, "other": 2}, [1], "x", None, 5]
echo_item = st.one_of(
    st.tuples(some_value),
    st.fixed_dictionaries({"value": some_value}),
    st.tuples(fine_value),
    st.sampled_from(ILL_SHAPED),
)


def echo_item_refusals(index: int, item: Any) -> list[Refusal]:
    """For the item at ``index`` of ``echo.map(items)``: its message says "… item 3: …"."""
    if isinstance(item, tuple | dict):
        arguments = dict(zip(["value"], item, strict=False)) if isinstance(item, tuple) else item
        if len(item) != 1 or list(arguments) != ["value"]:
            return [Refusal(TypeError, f"item {index}: ", "do not fit its signature")]
        return [
            Refusal(refusal.error, f"item {index}: {refusal.where}", refusal.rule)
            for refusal in value_refusals(arguments["value"], "value")
        ]
    return [Refusal(TypeError, f"item {index} is a ", "give each item")]


def first_refusals(items: list[Any], item_refusals: Callable[[int, Any], list[Refusal]]) -> list[Refusal]:
    """The items are checked in order: the first that breaks a rule is the one named."""
    for index, item in enumerate(items):
        refusals = item_refusals(index, item)
        if refusals:
            return refusals
    return []


def check_all_queued(handles: list[JobHandle[Any]], queue: str, calls: list[tuple[Any, Any]]) -> None:
    """One row per item, in order, and every job in its queue in that order."""
    assert JobRecord.objects.count() == len(handles) == len(calls)
    for handle, (args, kwargs) in zip(handles, calls, strict=True):
        check_queued(handle, queue, args, kwargs)
    assert get_queue(queue).get_job_ids() == [handle.id for handle in handles]


@FUZZ
@given(items=st.lists(echo_item, max_size=4))
@example(items=[(1,), ("ok",), ("a\x00",)])
@example(items=[(1,), [2], (3,)])
@example(items=[(1,), {"value": {"k": math.inf}}])
@example(items=[(nested(MAX_LEVELS, 1, False),), {"value": nested(MAX_LEVELS + 1, 1, False)}])
def test_map_keeps_every_item_or_none(redis: Any, items: list[Any]) -> None:
    start_afresh(redis)
    refusals = first_refusals(items, echo_item_refusals)
    handles = enqueue_or_refuse(lambda: echo.map(items), ECHO, refusals, redis)
    if handles is not None:
        calls = [([*item], {}) if isinstance(item, tuple) else ([], item) for item in items]
        check_all_queued(handles, "high", calls)


def echo_call_item_refusals(index: int, item: Any) -> list[Refusal]:
    if isinstance(item, tuple):
        args, kwargs = item, {}
    elif isinstance(item, dict):
        if not all(isinstance(name, str) for name in item):
            return [Refusal(TypeError, f"item {index}: ", "do not fit its signature")]
        args, kwargs = (), item
    else:
        return [Refusal(TypeError, f"item {index} is a ", "give each item")]
    return [
        Refusal(refusal.error, f"item {index}: {refusal.where}", refusal.rule)
        for refusal in call_refusals(args, kwargs)
    ]


echo_call_item = st.one_of(
    st.lists(some_value, max_size=2).map(tuple),
    st.dictionaries(keyword_name, some_value, max_size=2),
    st.dictionaries(odd_key, fine_scalar, min_size=1, max_size=1),
    st.sampled_from([[1], "x", None]),
)


@FUZZ
@given(items=st.lists(echo_call_item, max_size=4))
@example(items=[(), {"self": 1}, {"a\x00": 1}])
@example(items=[{1: 2}])
def test_map_with_any_keyword_names_keeps_every_item_or_none(redis: Any, items: list[Any]) -> None:
    start_afresh(redis)
    refusals = first_refusals(items, echo_call_item_refusals)
    handles = enqueue_or_refuse(lambda: echo_call.map(items), ECHO_CALL, refusals, redis)
    if handles is not None:
        calls = [([*item], {}) if isinstance(item, tuple) else ([], item) for item in items]
        check_all_queued(handles, "default", calls)


# -- run by a worker --------------------------------------------------------------------------------------

EDGE_VALUES = [
    BIG - 1,
    -(BIG - 1),
    2**63,
    *EDGE_FLOATS,
    "\uffff\U0010ffff\u2028\U0001f600",
    {"": {"\U0001f600": [1.5e300, -0.0]}},
    (1, (2, "three")),
    nested(MAX_LEVELS, 1e16, False),
    nested(MAX_LEVELS, "leaf", True),
]


@RUN
@given(
    values=st.lists(st.one_of(fine_value, fine_deep_value), min_size=1, max_size=3),
    how=st.sampled_from(["delay", "apply_async", "map"]),
)
@example(values=EDGE_VALUES, how="map")
@example(values=[nested(MAX_LEVELS, None, False)], how="delay")
def test_a_value_that_may_be_carried_comes_back_as_it_was_given(
    redis: Any, values: list[Any], how: str
) -> None:
    start_afresh(redis)
    for value in values:
        assert not value_refusals(value, "value")  # may be carried, by construction
    if how == "map":
        handles = echo.map([(value,) for value in values])
    elif how == "delay":
        handles = [echo.delay(value) for value in values]
    else:
        handles = [echo.apply_async(kwargs={"value": value}, timeout="1m") for value in values]
    run_burst(["high"])
    for handle, value in zip(handles, values, strict=True):
        record = JobRecord.objects.get(pk=handle.id)
        assert record.status == "finished", record.error
        assert same_json(record.result, value)
        # The job itself was given exactly what was passed: the result RQ keeps in Redis says so.
        rq_job = handle.rq_job()
        assert rq_job is not None and same_json(rq_job.return_value(), value, exact=True)


@RUN
@given(
    args=st.lists(st.one_of(fine_value, fine_deep_value), max_size=2),
    kwargs=st.dictionaries(fine_text, st.one_of(fine_value, fine_deep_value), max_size=2),
)
@example(args=[nested(MAX_LEVELS - 2, 1, False)], kwargs={"self": -0.0, "": 1e308})
@example(args=[], kwargs={"deep": nested(MAX_LEVELS - 1, 1, False)})
def test_a_call_comes_back_as_it_was_made_or_its_result_is_refused(
    redis: Any, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """``echo_call`` returns ``[args, kwargs]``: two levels more than what it was given, which may
    be too deep for a result; then the job fails, saying so."""
    start_afresh(redis)
    assert not call_refusals(args, kwargs)  # may be carried, by construction
    handle = echo_call.delay(*args, **kwargs)
    run_burst(["default"])
    record = JobRecord.objects.get(pk=handle.id)
    returned = [args, kwargs]
    if value_refusals(returned, "return value"):
        assert record.status == "failed"
        assert "returned a value that cannot be stored" in record.error, record.error
        assert f"nested more than {MAX_LEVELS} levels deep" in record.error
    else:
        assert record.status == "finished", record.error
        assert same_json(record.result, returned)


# -- what the fuzzing above found ------------------------------------------------------------------------


def plain_function() -> None:
    """Made a job only by the test that refuses its options."""


def nothing_written(redis: Any) -> bool:
    return JobRecord.objects.count() == 0 and redis.keys() == []


@pytest.mark.parametrize(
    "timeout",
    [math.nan, math.inf, -math.inf, 10**400, "9" * 400 + "m", True, Decimal(60), b"15m", b"90"],
    ids=["nan", "inf", "-inf", "10**400", "400 nines m", "True", "Decimal", "b15m", "b90"],
)
def test_a_timeout_rq_cannot_read_or_the_row_cannot_hold_is_refused(redis: Any, timeout: Any) -> None:
    # Before: AssertionError (NaN, b"15m") or OverflowError (infinities, huge ints) from RQ's
    # parse_timeout, True taken for 1 s, and a Decimal or b"90" failing the row's JSON.
    with pytest.raises(ValueError, match=r"^tests\.testapp\.jobs\.echo\(\): timeout"):
        echo.apply_async((1,), timeout=timeout)
    assert nothing_written(redis)


@pytest.mark.parametrize("countdown", [10**400, -(10**400)], ids=["10**400", "-10**400"])
def test_a_countdown_beyond_any_float_is_out_of_bounds(redis: Any, countdown: int) -> None:
    with pytest.raises(ValueError, match=r"echo\(\): countdown=<an int of 1,329 bits> is out of bounds"):
        echo.apply_async((1,), countdown=countdown)
    assert nothing_written(redis)


@pytest.mark.parametrize("option", ["ttl", "failure_ttl", "result_ttl"])
def test_a_ttl_beyond_any_float_is_out_of_bounds_at_import(option: str) -> None:
    with pytest.raises(
        ValueError, match=rf"plain_function: {option}=<an int of 1,329 bits> is out of bounds"
    ):
        job(**{option: 10**400})(plain_function)


@pytest.mark.parametrize("job_id", ["abc\n", "x" * 128 + "\n"], ids=["abc", "128 x"])
def test_a_job_id_with_a_trailing_newline_is_refused(redis: Any, job_id: str) -> None:
    # Before: the row was written and RQ refused the id at the push, leaving the row queued with
    # needs_push set for good (and on PostgreSQL, 129 characters failed the insert).
    with pytest.raises(ValueError, match=r"^tests\.testapp\.jobs\.echo\(\): job_id .* is invalid"):
        echo.apply_async((1,), job_id=job_id)
    assert nothing_written(redis)


def test_a_dict_key_with_no_repr_is_named_by_its_type(redis: Any) -> None:
    # Before: the message was being built with repr() of the key, which an int of more than 4,300
    # digits has not: a bare ValueError that named neither the function nor the argument.
    with pytest.raises(
        TypeError, match=r"echo\(\): argument 'value\[0\] key <a int>' is a dict key of type int"
    ):
        echo.delay([{10**4300: 1}])
    assert nothing_written(redis)


def test_a_job_may_take_a_keyword_named_self(redis: Any) -> None:
    # Before: "JobFunction.delay() got multiple values for argument 'self'".
    assert echo_call(self=1) == [[], {"self": 1}]
    handle = echo_call.delay(self=1)
    run_burst(["default"])
    assert handle.result == [[], {"self": 1}]


def test_each_value_args_and_kwargs_gather_has_the_levels_of_any_argument(redis: Any) -> None:
    # Before: the tuple or dict that *args or **kwargs gathers counted as a level, so a value
    # that echo(value) takes was refused by echo_call(*args, **kwargs).
    deepest = nested(MAX_LEVELS, 1, True)
    handles = [echo.delay(deepest), echo_call.delay(deepest), echo_call.delay(deep=deepest)]
    assert [handle.status for handle in handles] == ["queued"] * 3
    with pytest.raises(ValueError, match=r"echo_call\(\): argument 'args\[0\](\[0\])+' is nested more"):
        echo_call.delay(nested(MAX_LEVELS + 1, 1, False))
    with pytest.raises(
        ValueError, match=r"echo_call\(\): argument \"kwargs\['deep'\](\[0\]|\['k'\])+\" is nested"
    ):
        echo_call.delay(deep=nested(MAX_LEVELS + 1, 1, True))
    assert JobRecord.objects.count() == 3


@pytest.mark.parametrize(
    "offset",
    [timedelta(hours=16), timedelta(hours=-23, minutes=-59), timedelta(microseconds=1)],
    ids=["+16:00", "-23:59", "+1 microsecond"],
)
def test_an_eta_in_any_offset_python_allows_is_scheduled(redis: Any, offset: timedelta) -> None:
    # Before: on PostgreSQL a raw DataError (an offset of 16 hours or more, or one with seconds,
    # is not a PostgreSQL time zone displacement), though Python and the rules allow it.
    eta = (timezone.now() + timedelta(days=1)).astimezone(fixed_offset(offset))
    handle = echo.apply_async((1,), eta=eta)
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.scheduled_for) == ("scheduled", eta)
