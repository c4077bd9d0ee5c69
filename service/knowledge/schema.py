"""Typed schema of the knowledge files; every file is validated against it at start-up.

A rule's ``when`` is a tree of conditions. Each node is a one-key mapping naming its operator
(``all``, ``any``, ``not``, ``at_least``, ``finding``, ``lab``, ...). Adding a rule that uses these
operators needs no Python.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

Comparator = Literal["<", "<=", ">", ">=", "=="]
Indicator = Literal["info", "warning", "critical"]
Hook = Literal["patient-view", "order-select", "order-sign"]
HOOKS: tuple[Hook, ...] = get_args(Hook)
"""The one list of hooks (the engine, the CLI and the discovery test read it)."""
FindingKind = Literal["condition", "observation", "journal"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Reference = Literal["valueset", "analyte", "unit", "journal_item"]


class _Spec(_Strict):
    """A leaf condition's spec."""

    references: ClassVar[tuple[tuple[Reference, str], ...]] = ()
    """(what it names, field): the value sets, analyte, unit of that analyte and journal item
    the loader checks exist."""


# --- leaves -----------------------------------------------------------------------------------


class FindingSpec(_Spec):
    """A symptom or diagnosis: Condition, symptom Observation or sleep-journal answer."""

    references = (("valueset", "valueset"),)

    valueset: str
    within_days: int | None = Field(default=None, ge=1)
    kinds: tuple[FindingKind, ...] = ("condition", "observation", "journal")
    clinical_status: tuple[Literal["active", "recurrence", "relapse"], ...] = ()
    """Only Conditions with one of these clinicalStatus codes (a seizure disorder coded as a
    recurrence is a seizure after remission, whatever its onset date)."""
    undated_conditions: Literal["exclude", "include"] = "exclude"
    """With ``within_days``: whether an active Condition with neither onset nor recorded date
    counts. ``include`` where assuming the finding is current is the safe side (pregnancy makes
    the advice more cautious); ``exclude`` where it would raise an alarm (a seizure)."""
    as_: str | None = Field(default=None, alias="as")


class LabSpec(_Spec):
    """The newest usable value of an analyte, compared with a threshold.

    When ``interpretation`` is given and the Observation carries interpretation codes, those codes
    decide. Otherwise, when ``reference_range`` is given and the Observation has that bound, the
    lab's own range decides. Otherwise ``op`` ``value`` ``unit`` decides.
    """

    references = (("analyte", "analyte"), ("unit", "unit"))

    analyte: str
    op: Comparator
    value: float
    unit: str
    within_days: int = Field(ge=1)
    interpretation: tuple[str, ...] = ()
    reference_range: Literal["low", "high"] | None = None
    decide: Literal["lab-first", "either"] = "lab-first"
    """``lab-first``: the lab's flag or range decides when present (a flag N overrides the
    threshold). ``either``: the flag or the threshold suffices (used for critical escalation:
    0.9 mg/dL flagged only L is still critical)."""
    as_: str | None = Field(default=None, alias="as")


class LabMissingSpec(_Spec):
    """No usable value of the analyte within the window (missing or stale)."""

    references = (("analyte", "analyte"),)

    analyte: str
    within_days: int = Field(ge=1)
    as_: str | None = Field(default=None, alias="as")


class MedicationSpec(_Spec):
    """An active medication (MedicationRequest or MedicationStatement) in a drug-class ValueSet.

    With ``recent_days`` it is a medicine *given* recently: active (an ongoing course), or a
    completed course whose last date falls within the window (IV iron in the last 12 weeks).
    """

    references = (("valueset", "valueset"), ("valueset", "exclude_valueset"))

    valueset: str
    exclude_valueset: str | None = None
    recent_days: int | None = Field(default=None, ge=1)
    as_: str | None = Field(default=None, alias="as")


class MedicationBeforeFindingSpec(_Spec):
    """A drug in the class started at most ``max_days`` before the finding's onset."""

    references = (("valueset", "medication"), ("valueset", "finding"))

    medication: str
    finding: str
    max_days: int = Field(ge=0)


class RenalLimit(_Strict):
    """The highest daily dose while the kidney function is below ``below`` (the first band that
    applies wins; bands are listed from the lowest kidney function up)."""

    below: float | None = None
    """Upper bound of the band (exclusive); ``None`` for the top band."""
    max_daily_mg: float = Field(gt=0)


class RenalDrug(_Strict):
    """One drug of a class with its renal dose limits and where they come from."""

    name: str
    match: tuple[str, ...] = Field(min_length=1)
    """Lower-case ingredient and brand names looked for in the medication's text and displays."""
    exclude: tuple[str, ...] = ()
    """Names of a related product with other limits (gabapentin enacarbil is not gabapentin)."""
    limits: tuple[RenalLimit, ...] = Field(min_length=1)
    source: str

    @model_validator(mode="after")
    def _bands_ascend(self) -> RenalDrug:
        bounds = [b.below for b in self.limits]
        if bounds[-1] is not None or any(b is None for b in bounds[:-1]):
            raise ValueError("only the last band may be open (below: null) and it must be")
        numbers = [b for b in bounds if b is not None]
        if numbers != sorted(numbers):
            raise ValueError("bands must be listed from the lowest kidney function up")
        return self


class RenalDoseSpec(_Spec):
    """Active drugs of the class compared with their renal dose limit for the newest kidney
    function result. True when a listed drug is active (``exceeds_only``: only when a recorded
    daily dose is above the limit); the binding says, per drug, above / within / not on record."""

    references = (("valueset", "medication"), ("analyte", "analyte"), ("unit", "unit"))

    medication: str
    analyte: str
    unit: str
    within_days: int = Field(ge=1)
    drugs: tuple[RenalDrug, ...] = Field(min_length=1)
    exceeds_only: bool = False
    as_: str | None = Field(default=None, alias="as")


class DraftOrderSpec(_Spec):
    """A draft order of the order hooks (only ``selections`` at order-select) in a ValueSet."""

    references = (("valueset", "valueset"), ("valueset", "exclude_valueset"))

    valueset: str
    exclude_valueset: str | None = None
    as_: str | None = Field(default=None, alias="as")


class JournalSpec(_Spec):
    """Sleep-journal nights whose answer to ``item`` satisfies ``op value``."""

    references = (("journal_item", "item"),)

    item: str
    op: Comparator = "=="
    value: float | bool | str = True
    min_nights: int = Field(default=1, ge=1)
    within_days: int = Field(default=14, ge=1)
    as_: str | None = Field(default=None, alias="as")


ProcedureState = Literal["ordered", "done"]


class ProcedureSpec(_Spec):
    """A procedure or study in a ValueSet that is ordered (an active ServiceRequest, or a
    Procedure in progress) or done (a completed ServiceRequest or Procedure, or a
    DiagnosticReport), dated within ``within_days`` and at least ``min_days_ago`` old.

    ``if_unreadable``: ``unknown`` (default) makes the leaf unknown when procedures could not be
    read; ``absent`` treats them as not found. Use ``absent`` only where the leaf suppresses a
    recommendation (a study already done): the card then shows, with the missing-data note,
    rather than a referral being hidden because the query failed.
    """

    references = (("valueset", "valueset"), ("valueset", "exclude_valueset"))

    valueset: str
    exclude_valueset: str | None = None
    """Not these (a home sleep test whose display says "sleep study" is not an in-lab PSG)."""
    states: tuple[ProcedureState, ...] = ("ordered", "done")
    within_days: int | None = Field(default=None, ge=1)
    min_days_ago: int = Field(default=0, ge=0)
    if_unreadable: Literal["unknown", "absent"] = "unknown"
    as_: str | None = Field(default=None, alias="as")


class AgeSpec(_Spec):
    op: Comparator
    years: int = Field(ge=0)


class Cond(_Strict):
    """A node of a condition tree: a one-key mapping naming its operator."""

    @property
    def operator(self) -> str:
        """The key naming the operator in the rule files (``lab``, ``not``)."""
        name, info = next(iter(type(self).model_fields.items()))
        return info.alias or name

    @property
    def children(self) -> tuple[Condition, ...]:
        return ()


class LeafCond(Cond):
    """A condition that reads the record: its one field, named after the operator, is its spec."""

    @property
    def spec(self) -> _Spec:
        spec: _Spec = getattr(self, next(iter(type(self).model_fields)))
        return spec


class FindingCond(LeafCond):
    finding: FindingSpec


class LabCond(LeafCond):
    lab: LabSpec


class LabMissingCond(LeafCond):
    lab_missing: LabMissingSpec


class MedicationCond(LeafCond):
    medication: MedicationSpec


class MedicationBeforeFindingCond(LeafCond):
    medication_before_finding: MedicationBeforeFindingSpec


class RenalDoseCond(LeafCond):
    renal_dose: RenalDoseSpec


class DraftOrderCond(LeafCond):
    draft_order: DraftOrderSpec


class JournalCond(LeafCond):
    journal: JournalSpec


class AgeCond(LeafCond):
    age: AgeSpec


class ProcedureCond(LeafCond):
    procedure: ProcedureSpec


# --- combinators ------------------------------------------------------------------------------


class AllCond(Cond):
    all: tuple[Condition, ...] = Field(min_length=1)

    @property
    def children(self) -> tuple[Condition, ...]:
        return self.all


class AnyCond(Cond):
    any: tuple[Condition, ...] = Field(min_length=1)

    @property
    def children(self) -> tuple[Condition, ...]:
        return self.any


class NotCond(Cond):
    not_: Condition = Field(alias="not")

    @property
    def children(self) -> tuple[Condition, ...]:
        return (self.not_,)


class AtLeastSpec(_Strict):
    count: int = Field(ge=1)
    of: tuple[Condition, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _reachable(self) -> AtLeastSpec:
        if self.count > len(self.of):
            raise ValueError("count is larger than the number of conditions")
        return self


class AtLeastCond(Cond):
    at_least: AtLeastSpec

    @property
    def children(self) -> tuple[Condition, ...]:
        return self.at_least.of


_OPERATORS: dict[str, type[Any]] = {
    "all": AllCond,
    "any": AnyCond,
    "not": NotCond,
    "at_least": AtLeastCond,
    "finding": FindingCond,
    "lab": LabCond,
    "lab_missing": LabMissingCond,
    "medication": MedicationCond,
    "medication_before_finding": MedicationBeforeFindingCond,
    "renal_dose": RenalDoseCond,
    "draft_order": DraftOrderCond,
    "journal": JournalCond,
    "age": AgeCond,
    "procedure": ProcedureCond,
}


def _operator_of(value: object) -> str | None:
    """The node's operator: its single key (or the model's, once validated)."""
    if isinstance(value, dict):
        keys = [key for key in value if key in _OPERATORS]
        return keys[0] if len(keys) == 1 and len(value) == 1 else None
    for name, model in _OPERATORS.items():
        if type(value) is model:
            return name
    return None


Condition = Annotated[
    Annotated[AllCond, Tag("all")]
    | Annotated[AnyCond, Tag("any")]
    | Annotated[NotCond, Tag("not")]
    | Annotated[AtLeastCond, Tag("at_least")]
    | Annotated[FindingCond, Tag("finding")]
    | Annotated[LabCond, Tag("lab")]
    | Annotated[LabMissingCond, Tag("lab_missing")]
    | Annotated[MedicationCond, Tag("medication")]
    | Annotated[MedicationBeforeFindingCond, Tag("medication_before_finding")]
    | Annotated[RenalDoseCond, Tag("renal_dose")]
    | Annotated[DraftOrderCond, Tag("draft_order")]
    | Annotated[JournalCond, Tag("journal")]
    | Annotated[AgeCond, Tag("age")]
    | Annotated[ProcedureCond, Tag("procedure")],
    Discriminator(
        _operator_of,
        custom_error_type="unknown_operator",
        custom_error_message="a condition must be a mapping with exactly one operator key: "
        "all, any, not, at_least, finding, lab, lab_missing, medication, "
        "medication_before_finding, renal_dose, draft_order, journal, age, procedure",
    ),
]

for _model in (AllCond, AnyCond, NotCond, AtLeastSpec, AtLeastCond):
    _model.model_rebuild()


# --- rules ------------------------------------------------------------------------------------


class SourceRef(_Strict):
    label: str
    url: str
    citation: str | None = None


class Review(_Strict):
    """Clinical sign-off: a rule stays ``draft`` until a named clinician reviews it; a
    ``reviewed`` rule names its reviewer and the ISO date of the review (``2026-03-01``)."""

    status: Literal["draft", "reviewed", "retired"]
    reviewer: str | None = None
    reviewed_on: dt.date | None = None
    notes: str | None = None

    @field_validator("reviewed_on", mode="before")
    @classmethod
    def _iso_date(cls, value: object) -> object:
        # Only a calendar date: YAML's unquoted 2026-03-01 or the same text quoted. Not a
        # timestamp, a number read as Unix time, or free text such as "spring 2026".
        if value is None or (isinstance(value, dt.date) and not isinstance(value, dt.datetime)):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                pass
        raise ValueError("must be an ISO date (YYYY-MM-DD)")

    @model_validator(mode="after")
    def _signed_off(self) -> Review:
        if self.status == "reviewed" and not (self.reviewer and self.reviewer.strip()):
            raise ValueError("status 'reviewed' needs the reviewer's name in 'reviewer'")
        if self.status == "reviewed" and self.reviewed_on is None:
            raise ValueError("status 'reviewed' needs the review date in 'reviewed_on'")
        return self


class Escalation(_Strict):
    indicator: Indicator
    when: Condition


class CardSpec(_Strict):
    indicator: Indicator
    escalate: tuple[Escalation, ...] = ()
    context: tuple[Condition, ...] = ()
    """Evaluated only once the rule fires, never gating it: each one that holds adds its
    bindings and evidence (the dose of a drug on record, when there is one)."""
    summary: str = Field(min_length=1)
    detail: str = Field(min_length=1)
    priority: int = 50


class SuggestionSpec(_Strict):
    """A one-click suggestion: draft orders to create and/or draft orders to remove."""

    label: str
    orders: tuple[str, ...] = ()
    missing_labs: tuple[str, ...] = ()
    missing_within_days: int | None = Field(default=None, ge=1)
    remove_draft: str | None = None
    recommended: bool = False

    @model_validator(mode="after")
    def _does_something(self) -> SuggestionSpec:
        if not (self.orders or self.missing_labs or self.remove_draft):
            raise ValueError("a suggestion needs orders, missing_labs or remove_draft")
        if self.missing_labs and self.missing_within_days is None:
            raise ValueError("missing_labs needs missing_within_days")
        return self


class LinkSpec(_Strict):
    """A card link. ``smart``: a SMART app this service serves, as a path on the service
    (``/journal/launch``); cards carry it as an absolute URL, or not at all when the app is off.
    """

    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"

    @model_validator(mode="after")
    def _smart_is_a_path(self) -> LinkSpec:
        if self.type == "smart" and not re.fullmatch(r"/[A-Za-z0-9/_-]+", self.url):
            raise ValueError("a smart link's url is a path on this service, e.g. /journal/launch")
        if self.type == "absolute" and not self.url.startswith("https://"):
            raise ValueError("an absolute link's url must be https")
        return self


class Rule(_Strict):
    """One rule file. ``exclude_populations`` names ``policy.populations`` whose patients the rule
    must not advise (another rule speaks for them: dialysis, pregnancy, iron overload)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    title: str
    description: str
    status: Literal["active", "disabled"] = "active"
    hooks: tuple[Hook, ...] = Field(min_length=1)
    topic: str
    population: Literal["adult", "pediatric", "all"] = "adult"
    population_note: str | None = None
    """Why the rule is limited to adults (or children): shown in docs/rules.md."""
    exclude_populations: tuple[str, ...] = ()
    requires_complaint: bool = True
    sources: tuple[SourceRef, ...] = Field(min_length=1)
    review: Review
    when: Condition
    card: CardSpec
    suggestions: tuple[SuggestionSpec, ...] = ()
    links: tuple[LinkSpec, ...] = ()


# --- analytes, orders, policy -----------------------------------------------------------------


class CodingSpec(_Strict):
    system: str
    code: str
    display: str


class DerivedSpec(_Strict):
    """A value computed when the lab did not report one: numerator / denominator x factor."""

    numerator: str
    denominator: str
    factor: float
    source: str


class Analyte(_Strict):
    display: str
    valueset: str
    unit: str
    conversions: dict[str, float] = Field(min_length=1)
    order: CodingSpec | None = None
    derived: DerivedSpec | None = None
    source: str

    @model_validator(mode="after")
    def _canonical_convertible(self) -> Analyte:
        if self.conversions.get(self.unit) != 1:
            raise ValueError(f"conversions must map the canonical unit {self.unit!r} to 1")
        return self


class AnalyteFile(_Strict):
    lab_order_category: CodingSpec
    unit_aliases: dict[str, str]
    unit_display: dict[str, str] = {}
    """UCUM code → the spelling shown on cards (clinicians do not read UCUM annotations)."""
    analytes: dict[str, Analyte]


class OrderSpec(_Strict):
    """A draft order a card may suggest (ServiceRequest or CommunicationRequest)."""

    resource_type: Literal["ServiceRequest", "CommunicationRequest"]
    label: str
    codes: tuple[CodingSpec, ...] = ()
    category: CodingSpec | None = None
    note: str | None = None
    source: str


class OverrideReasonSpec(_Strict):
    code: str
    display: str
    suppress_days: int = Field(ge=0)


class PopulationSpec(_Strict):
    """A patient group that some rules must not advise, because another rule speaks for it."""

    description: str
    when: Condition


class Policy(_Strict):
    """Settings of clinical behaviour that apply to every rule."""

    adult_age_years: int = Field(ge=1)
    complaint: Condition
    finding_lookback_days: int = Field(ge=1)
    override_reasons: tuple[OverrideReasonSpec, ...] = Field(min_length=1)
    unknown_reason_suppress_days: int = Field(ge=0)
    """Window for an override whose reason is not one of ours (EHRs may add their own)."""
    accepted_suppress_days: int = Field(ge=0)
    critical_override_max_hours: int = Field(ge=0)
    topics: tuple[CodingSpec, ...] = Field(min_length=1)
    not_about_patient_phrases: tuple[str, ...] = ()
    """NegEx-style triggers before a term ("no", "denies", "family history of"): the rest of
    the clause after the trigger is not about the patient."""
    negation_after_phrases: tuple[str, ...] = ()
    """Triggers after a term ("ruled out"): the clause up to the trigger is negated."""
    negation_scope_breaks: tuple[str, ...] = ()
    """Words that end a negation's scope inside a clause ("no seizures but restless legs")."""
    absent_codes: tuple[CodingSpec, ...] = ()
    """Observation values and interpretations meaning "symptom not present"."""
    populations: dict[str, PopulationSpec] = Field(default_factory=dict)
    """Named groups a rule can exclude (``Rule.exclude_populations``)."""
