"""The answers of a sleep-journal QuestionnaireResponse, by ``linkId`` (nested items included)."""

from __future__ import annotations

from typing import Any

from service.engine.fhir_values import number_of, value_of

MAX_ITEM_DEPTH = 8
_ONLY_VALUE = {
    "valueBoolean": "bool",
    "valueInteger": "number",
    "valueDecimal": "number",
    "valueDate": "text",
    "valueDateTime": "text",
    "valueTime": "text",
    "valueString": "text",
}


def questionnaire_answers(items: object, out: dict[str, bool | float | str], depth: int) -> None:
    """The answers of questionnaire items (plain JSON), by linkId, nested items included."""
    if not isinstance(items, list) or depth > MAX_ITEM_DEPTH:
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        link_id = item.get("linkId")
        answers = item.get("answer")
        if isinstance(link_id, str) and isinstance(answers, list) and answers:
            first = answers[0]
            if isinstance(first, dict):
                value = _first_answer_value(first)
                if value is not None:
                    out[link_id] = value
                if len(answers) == 1:
                    if "item" in first:
                        questionnaire_answers(first["item"], out, depth + 1)
                else:
                    for answer in answers:
                        if isinstance(answer, dict) and "item" in answer:
                            questionnaire_answers(answer["item"], out, depth + 1)
        if "item" in item:  # most items have no children: skip the call
            questionnaire_answers(item["item"], out, depth + 1)


def _first_answer_value(first: dict[str, Any]) -> bool | float | str | None:
    if len(first) != 1:
        return _answer_value(first)
    # The usual answer: one value[x] and nothing else (``_answer_value``).
    ((key, raw),) = first.items()
    kind = _ONLY_VALUE.get(key)
    if kind == "bool":
        return raw if raw is True or raw is False else None
    if kind == "number":
        return value_of(raw)
    if kind == "text":
        return str(raw) if isinstance(raw, str) else None
    return _answer_value(first)


def _answer_value(answer: dict[str, Any]) -> bool | float | str | None:
    flag = answer.get("valueBoolean")
    if flag is True or flag is False:
        return flag
    for key in ("valueInteger", "valueDecimal"):
        raw = answer.get(key)
        if raw is not None:
            number = number_of(raw)
            if number is not None:
                return number
    quantity = answer.get("valueQuantity")
    if isinstance(quantity, dict):
        number = number_of(quantity.get("value"))
        if number is not None:
            return number
    coding = answer.get("valueCoding")
    if isinstance(coding, dict) and isinstance(coding.get("code"), str):
        return str(coding["code"])
    for key in ("valueDate", "valueDateTime", "valueTime", "valueString"):
        if isinstance(answer.get(key), str):
            return str(answer[key])
    return None
