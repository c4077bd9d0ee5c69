"""The report's period [from, to) and its ISO weeks (Monday to Sunday, UTC)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

MAX_PERIOD_DAYS = 366
DEFAULT_PERIOD_DAYS = 84  # twelve weeks


def parse_period(start: str | None, end: str | None, today: date) -> tuple[date, date]:
    """[from, to) from ``YYYY-MM-DD`` strings; defaults: the twelve weeks up to and incl. today.

    Raises ``ValueError`` with a message fit for the caller.
    """

    def parse(name: str, value: str) -> date:
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name} must be a date as YYYY-MM-DD") from None

    def looks_like_date(value: str) -> bool:
        return len(value) == 10 and value[4] == "-" and value[7] == "-"

    for name, value in (("from", start), ("to", end)):
        if value is not None and not looks_like_date(value):
            raise ValueError(f"{name} must be a date as YYYY-MM-DD")
    stop = parse("to", end) if end is not None else today + timedelta(days=1)
    begin = parse("from", start) if start is not None else stop - timedelta(DEFAULT_PERIOD_DAYS)
    if begin >= stop:
        raise ValueError("from must be before to (to is exclusive)")
    if (stop - begin).days > MAX_PERIOD_DAYS:
        raise ValueError(f"the period may span at most {MAX_PERIOD_DAYS} days")
    return begin, stop


def midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def iso_week(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def weeks_of(start: date, end: date) -> list[date]:
    """Mondays of the ISO weeks that overlap [start, end)."""
    first, last = monday(start), monday(end - timedelta(days=1))
    return [first + timedelta(weeks=i) for i in range((last - first).days // 7 + 1)]
