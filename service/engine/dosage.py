"""Dose arithmetic: the total daily dose in mg of structured FHIR dosage instructions, and
when a prescription's dosing ends. FHIR/UCUM unit and timing semantics, not clinical knowledge.
"""

from __future__ import annotations

import re
from datetime import date

from service.engine.fhir_values import json_codes_of, number_of, parse_date
from service.engine.record import Concept

# Dose units: UCUM codes and common spellings → mg. Counts (tablet, capsule) use the strength in
# the product name ("gabapentin 300 MG Oral Capsule"). FHIR/UCUM unit semantics, not clinical
# knowledge.
_MASS_MG = {"mg": 1.0, "g": 1000.0, "ug": 0.001, "mcg": 0.001, "µg": 0.001}
_COUNT_UNITS = frozenset(
    [
        *("1", "{tbl}", "{tablet}", "tablet", "tablets", "tab"),
        *("{capsule}", "capsule", "capsules", "cap"),
    ]
)
_PER_DAY = {"h": 24.0, "d": 1.0, "wk": 1 / 7, "mo": 1 / 30}
_STRENGTH = re.compile(r"(\d+(?:\.\d+)?)\s*mg\b")
_MAX_DOSAGES = 6


def daily_mg(dosages: object, concept: Concept) -> float | None:
    """The total daily dose in mg of structured dosage instructions; None when any part is
    missing or not exact (as-needed, a range, a rate, an unknown unit or timing)."""
    if not isinstance(dosages, list) or not dosages or len(dosages) > _MAX_DOSAGES:
        return None
    total = 0.0
    for dosage in dosages:
        if not isinstance(dosage, dict) or dosage.get("asNeededBoolean") is True:
            return None
        rates = dosage.get("doseAndRate")
        first = rates[0] if isinstance(rates, list) and len(rates) == 1 else None
        quantity = first.get("doseQuantity") if isinstance(first, dict) else None
        if not isinstance(quantity, dict):
            return None
        amount = number_of(quantity.get("value"))
        unit = quantity.get("code") or quantity.get("unit")
        per_day = _times_per_day(dosage.get("timing"))
        if amount is None or per_day is None or not isinstance(unit, str):
            return None
        mg = _dose_mg(amount, unit.strip(), concept)
        if mg is None:
            return None
        total += mg * per_day
    return total


def _dose_mg(amount: float, unit: str, concept: Concept) -> float | None:
    factor = _MASS_MG.get(unit.lower())
    if factor is not None:
        return amount * factor
    if unit.lower() in _COUNT_UNITS:
        strengths = set(_STRENGTH.findall(concept.text))
        if len(strengths) == 1:
            return amount * float(strengths.pop())
    return None


# HL7 v3 GTSAbbreviation timing codes (the FHIR timing-abbreviation ValueSet) → times a day.
_TIMING_CODES = {"QD": 1.0, "AM": 1.0, "PM": 1.0, "BID": 2.0, "TID": 3.0, "QID": 4.0}


def _times_per_day(timing: object) -> float | None:
    if not isinstance(timing, dict):
        return None
    repeat = timing.get("repeat")
    if not isinstance(repeat, dict):
        codes = [c for c in json_codes_of(timing.get("code")) if c in _TIMING_CODES]
        return _TIMING_CODES[codes[0]] if len(codes) == 1 else None
    frequency = repeat.get("frequency", 1)
    period = repeat.get("period")
    unit = repeat.get("periodUnit")
    if period is None and "frequency" not in repeat:
        # Daily events without a period ("at bedtime", "08:00 and 20:00"): once per event a day.
        events = repeat.get("when") or repeat.get("timeOfDay")
        return float(len(events)) if isinstance(events, list) and 0 < len(events) <= 6 else None
    if repeat.get("frequencyMax") is not None or repeat.get("periodMax") is not None:
        return None  # a range ("1-2 times a day") has no single daily dose
    number, length = number_of(frequency), number_of(period)
    if number is None or length is None or length <= 0 or unit not in _PER_DAY:
        return None
    return number * _PER_DAY[unit] / length


def bounds_end(dosages: object) -> date | None:
    """The latest ``timing.repeat.boundsPeriod.end`` of a request's dosage instructions."""
    ends: list[date] = []
    if isinstance(dosages, list):
        for dosage in dosages[:10]:
            timing = dosage.get("timing") if isinstance(dosage, dict) else None
            repeat = timing.get("repeat") if isinstance(timing, dict) else None
            bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
            end = parse_date(bounds.get("end")) if isinstance(bounds, dict) else None
            if end is not None:
                ends.append(end)
    return max(ends, default=None)
