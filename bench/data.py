"""Request bodies for the benchmark: what an EHR would send, built from the demo patients.

Everything here is deterministic (a seeded RNG and a fixed "today"), so two runs send the same
bytes. Resources look like what real EHRs return (identifiers, meta, reference ranges,
interpretations, performers), because body size and shape are part of the cost being measured.

* ``typical_records``: each demo patient's own resources plus a synthetic background (older labs,
  common chronic conditions and medicines, a survey score, two weeks of sleep journal) to about 60
  resources, and one fully synthetic patient as well.
* ``heavy_record``: 2,000 Observations, 200 medications, 50 conditions (``scale`` divides it).
* ``group_prefetch``: a record split into the prefetch keys of the service's discovery document,
  each key holding what that query would have returned (a searchset Bundle, or the Patient).
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.demo import demo_patient_files, shift_dates

DEMO_ANCHOR = dt.date(2026, 11, 25)
"""The day the demo bundles' clinical dates are written against (service/demo/README.md)."""

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CDS_CODES = "https://sleep-cds.example.org/fhir/CodeSystem/sleep-cds"
JOURNAL_URL = "https://sleep-cds.example.org/fhir/Questionnaire/sleep-journal"

# (LOINC, display, UCUM unit, low, high, typical value range)
LABS: tuple[tuple[str, str, str, float, float, tuple[float, float]], ...] = (
    ("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL", 30, 300, (25, 180)),
    ("2498-4", "Iron [Mass/volume] in Serum or Plasma", "ug/dL", 60, 170, (50, 150)),
    ("2502-3", "Iron saturation [Mass Fraction] in Serum or Plasma", "%", 20, 50, (15, 40)),
    (
        "2500-7",
        "Iron binding capacity [Mass/volume] in Serum or Plasma",
        "ug/dL",
        250,
        450,
        (260, 420),
    ),
    ("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", "mg/dL", 1.7, 2.2, (1.7, 2.3)),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, (3.6, 4.9)),
    ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3, (8.8, 10.1)),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2, (0.7, 1.1)),
    (
        "33914-3",
        "Glomerular filtration rate/1.73 sq M.predicted",
        "mL/min/{1.73_m2}",
        60,
        120,
        (65, 110),
    ),
    ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.4, 4.0, (0.8, 3.5)),
    ("1989-3", "25-Hydroxyvitamin D3 [Mass/volume] in Serum or Plasma", "ng/mL", 30, 100, (22, 48)),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, (5.0, 6.4)),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, (80, 125)),
    (
        "2132-9",
        "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma",
        "pg/mL",
        200,
        900,
        (250, 700),
    ),
    ("2284-8", "Folate [Mass/volume] in Serum or Plasma", "ng/mL", 3, 20, (5, 15)),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.0, (3.7, 4.8)),
)

# Common chronic problems (ICD-10-CM, SNOMED, text): none is on a sleep-movement ValueSet.
BACKGROUND_CONDITIONS = (
    ("I10", "38341003", "Essential hypertension"),
    ("E78.5", "55822004", "Hyperlipidemia"),
    ("K21.9", "235595009", "Gastro-esophageal reflux disease"),
    ("M17.11", "239873007", "Osteoarthritis of right knee"),
    ("J30.9", "61582004", "Allergic rhinitis"),
    ("E66.9", "414916001", "Obesity"),
    ("M54.50", "279039007", "Low back pain"),
    ("F41.1", "21897009", "Generalized anxiety disorder"),
)

# Medicines not on any of the service's medication ValueSets (RxNorm SCD, display).
BACKGROUND_MEDS = (
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("617312", "atorvastatin calcium 20 MG Oral Tablet"),
    ("860975", "metformin hydrochloride 500 MG 24HR Extended Release Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("310798", "hydrochlorothiazide 25 MG Oral Tablet"),
    ("198211", "simvastatin 40 MG Oral Tablet"),
    ("866924", "metoprolol tartrate 25 MG Oral Tablet"),
    ("1049621", "oxycodone hydrochloride 5 MG Oral Tablet"),
)


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _iso(day: dt.date, hour: int = 8, minute: int = 30) -> str:
    return f"{day.isoformat()}T{hour:02d}:{minute:02d}:00Z"


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _meta(day: dt.date) -> dict[str, Any]:
    return {"versionId": "1", "lastUpdated": _iso(day, 14, 5)}


class RecordBuilder:
    """Synthetic FHIR R4 resources for one patient (valid for a strict FHIR server)."""

    def __init__(self, patient_id: str, as_of: dt.date, seed: int) -> None:
        self.patient_id = patient_id
        self.subject = {"reference": f"Patient/{patient_id}"}
        self.as_of = as_of
        self.rng = random.Random(seed)
        self.counter = 0

    def _id(self, kind: str) -> str:
        self.counter += 1
        return f"{self.patient_id}-{kind}-{self.counter}"

    def patient(self, birth: str = "1965-03-14", gender: str = "female") -> dict[str, Any]:
        return {
            "resourceType": "Patient",
            "id": self.patient_id,
            "meta": _meta(self.as_of - dt.timedelta(days=400)),
            "identifier": [
                {"system": "urn:oid:2.16.840.1.113883.19.5", "value": self.patient_id.upper()}
            ],
            "active": True,
            "name": [{"use": "official", "family": "Bench", "given": ["Pat", "Q"]}],
            "telecom": [{"system": "phone", "value": "555-0100", "use": "home"}],
            "gender": gender,
            "birthDate": birth,
            "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "01101"}],
        }

    def lab(
        self,
        lab: tuple[str, str, str, float, float, tuple[float, float]],
        days_ago: int,
        status: str = "final",
    ) -> dict[str, Any]:
        code, display, unit, low, high, (lo, hi) = lab
        day = self.as_of - dt.timedelta(days=days_ago)
        value = round(self.rng.uniform(lo, hi), 2)
        flag = "L" if value < low else ("H" if value > high else "N")
        return {
            "resourceType": "Observation",
            "id": self._id("lab"),
            "meta": _meta(day),
            "identifier": [
                {
                    "system": "urn:oid:2.16.840.1.113883.19.5.2",
                    "value": uuid.UUID(int=self.rng.getrandbits(128)).hex,
                }
            ],
            "status": status,
            "category": [{"coding": [_coding(OBS_CATEGORY, "laboratory", "Laboratory")]}],
            "code": {"coding": [_coding(LOINC, code, display)], "text": display.split(" [")[0]},
            "subject": self.subject,
            "encounter": {"reference": f"Encounter/{self.patient_id}-enc-{days_ago}"},
            "effectiveDateTime": _iso(day),
            "issued": _iso(day, 14, 0),
            "performer": [{"reference": "Organization/lab-1", "display": "Springfield Lab"}],
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            "interpretation": [{"coding": [_coding(INTERP, flag)]}],
            "referenceRange": [
                {
                    "low": {"value": low, "unit": unit, "system": UCUM, "code": unit},
                    "high": {"value": high, "unit": unit, "system": UCUM, "code": unit},
                }
            ],
        }

    def survey(self, code: str, display: str, value: int, days_ago: int) -> dict[str, Any]:
        day = self.as_of - dt.timedelta(days=days_ago)
        return {
            "resourceType": "Observation",
            "id": self._id("survey"),
            "meta": _meta(day),
            "status": "final",
            "category": [{"coding": [_coding(OBS_CATEGORY, "survey", "Survey")]}],
            "code": {"coding": [_coding(CDS_CODES, code, display)], "text": display},
            "subject": self.subject,
            "effectiveDateTime": _iso(day, 10),
            "valueQuantity": {"value": value, "unit": "{score}", "system": UCUM, "code": "{score}"},
        }

    def symptom(
        self, snomed: str, text: str, days_ago: int, present: bool = True
    ) -> dict[str, Any]:
        day = self.as_of - dt.timedelta(days=days_ago)
        return {
            "resourceType": "Observation",
            "id": self._id("sym"),
            "meta": _meta(day),
            "status": "final",
            "category": [{"coding": [_coding(OBS_CATEGORY, "exam", "Exam")]}],
            "code": {"coding": [_coding(SNOMED, snomed, text)], "text": text},
            "subject": self.subject,
            "effectiveDateTime": _iso(day, 11),
            "valueBoolean": present,
        }

    def condition(
        self, icd: str, snomed: str, text: str, days_ago: int, clinical: str = "active"
    ) -> dict[str, Any]:
        day = self.as_of - dt.timedelta(days=days_ago)
        return {
            "resourceType": "Condition",
            "id": self._id("cond"),
            "meta": _meta(day),
            "clinicalStatus": {"coding": [_coding(COND_CLINICAL, clinical)]},
            "verificationStatus": {"coding": [_coding(COND_VER, "confirmed")]},
            "category": [
                {"coding": [_coding(COND_CATEGORY, "problem-list-item", "Problem List Item")]}
            ],
            "code": {
                "coding": [_coding(SNOMED, snomed, text), _coding(ICD10, icd, text)],
                "text": text,
            },
            "subject": self.subject,
            "onsetDateTime": day.isoformat(),
            "recordedDate": day.isoformat(),
        }

    def medication(
        self,
        rxnorm: str,
        display: str,
        days_ago: int,
        kind: str = "MedicationRequest",
        status: str = "active",
    ) -> dict[str, Any]:
        day = self.as_of - dt.timedelta(days=days_ago)
        concept = {"coding": [_coding(RXNORM, rxnorm, display)], "text": display}
        if kind == "MedicationStatement":
            return {
                "resourceType": "MedicationStatement",
                "id": self._id("medstmt"),
                "meta": _meta(day),
                "status": status,
                "medicationCodeableConcept": concept,
                "subject": self.subject,
                "effectiveDateTime": day.isoformat(),
                "dateAsserted": day.isoformat(),
                "dosage": [{"text": "1 tablet by mouth daily"}],
            }
        return {
            "resourceType": "MedicationRequest",
            "id": self._id("medreq"),
            "meta": _meta(day),
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": concept,
            "subject": self.subject,
            "authoredOn": day.isoformat(),
            "requester": {"reference": "Practitioner/example", "display": "Dr Example"},
            "dosageInstruction": [
                {
                    "text": "1 tablet by mouth once daily",
                    "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                    "route": {"coding": [_coding(SNOMED, "26643006", "Oral route")]},
                    "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
                }
            ],
            "dispenseRequest": {
                "numberOfRepeatsAllowed": 3,
                "quantity": {"value": 30, "unit": "tablet"},
            },
        }

    def journal_night(self, days_ago: int) -> dict[str, Any]:
        night = self.as_of - dt.timedelta(days=days_ago)
        rng = self.rng

        def item(link_id: str, answer: dict[str, Any]) -> dict[str, Any]:
            return {"linkId": link_id, "answer": [answer]}

        return {
            "resourceType": "QuestionnaireResponse",
            "id": self._id("journal"),
            "meta": _meta(night),
            "questionnaire": JOURNAL_URL,
            "status": "completed",
            "subject": self.subject,
            "authored": _iso(night + dt.timedelta(days=1), 7, 15),
            "item": [
                item("night-date", {"valueDate": night.isoformat()}),
                item("bedtime", {"valueTime": "22:45:00"}),
                item("sleep-onset-latency-min", {"valueInteger": rng.randint(5, 60)}),
                item("total-sleep-h", {"valueDecimal": round(rng.uniform(5, 8), 1)}),
                item("jerk-count", {"valueInteger": rng.randint(0, 3)}),
                item("jerk-awakenings", {"valueInteger": rng.randint(0, 1)}),
                item("urge-to-move", {"valueBoolean": rng.random() < 0.5}),
                item("worse-at-rest", {"valueBoolean": rng.random() < 0.5}),
                item("cramp-pain", {"valueBoolean": rng.random() < 0.2}),
                item("caffeine-after-14", {"valueBoolean": rng.random() < 0.3}),
                item("stress-level", {"valueInteger": rng.randint(0, 5)}),
                item("alcohol-drinks", {"valueInteger": rng.randint(0, 2)}),
                item("screens-in-bed", {"valueBoolean": rng.random() < 0.6}),
            ],
        }

    # --- whole records -------------------------------------------------------------------------

    def background(self, target: int, existing: int) -> list[dict[str, Any]]:
        """Ordinary chart content, to bring a record of ``existing`` resources to ``target``."""
        out: list[dict[str, Any]] = []
        budget = max(0, target - existing)
        conditions = [
            self.condition(*c, days_ago=400 + 90 * i)
            for i, c in enumerate(BACKGROUND_CONDITIONS[:5])
        ]
        meds = [
            self.medication(*m, days_ago=200 + 30 * i) for i, m in enumerate(BACKGROUND_MEDS[:4])
        ]
        surveys = [self.survey("epworth-score", "Epworth Sleepiness Scale score", 8, 120)]
        nights = [self.journal_night(d) for d in range(1, 15)]
        fixed = conditions + meds + surveys + nights
        labs: list[dict[str, Any]] = []
        panels = 0
        while len(fixed) + len(labs) < budget:
            # A panel of labs drawn every ~4 months, newest first.
            for lab in LABS[:10]:
                labs.append(self.lab(lab, days_ago=30 + 120 * panels + self.rng.randint(0, 5)))
                if len(fixed) + len(labs) >= budget:
                    break
            panels += 1
        out = fixed + labs
        return out[:budget]

    def heavy(
        self, scale: float = 1.0, lab_codes: frozenset[str] | None = None
    ) -> list[dict[str, Any]]:
        """2,000 Observations, 200 medications and 50 conditions (times ``scale``).

        ``lab_codes``: the LOINC codes the service's Observation query names; an EHR returns
        nothing else for it, so the record uses only those (all of ``LABS`` if not given).
        """
        n_obs, n_meds, n_cond = (max(1, round(n * scale)) for n in (2000, 200, 50))
        resources: list[dict[str, Any]] = [self.patient()]
        n_symptoms = n_obs // 10
        labs = [lab for lab in LABS if lab_codes is None or lab[0] in lab_codes]
        for i in range(n_obs - n_symptoms):
            lab = labs[i % len(labs)]
            status = "final" if i % 50 else "cancelled"
            resources.append(self.lab(lab, days_ago=1 + (i * 3) % 3650, status=status))
        for i in range(n_symptoms):
            resources.append(
                self.survey(
                    "epworth-score", "Epworth Sleepiness Scale score", i % 24, 1 + (i * 7) % 3650
                )
                if i % 2
                else self.symptom("271782001", "Drowsy", 1 + (i * 5) % 3650, i % 3 > 0)
            )
        for i in range(n_meds):
            rx, display = BACKGROUND_MEDS[i % len(BACKGROUND_MEDS)]
            kind = "MedicationStatement" if i % 4 == 0 else "MedicationRequest"
            status = "active" if kind == "MedicationRequest" else "intended"
            resources.append(self.medication(rx, display, 10 + (i * 11) % 3000, kind, status))
        # The complaint that makes the sleep rules apply, then chronic background problems.
        resources.append(self.condition("G25.81", "32914008", "Restless legs syndrome", 300))
        for i in range(n_cond - 1):
            icd, snomed, text = BACKGROUND_CONDITIONS[i % len(BACKGROUND_CONDITIONS)]
            resources.append(self.condition(icd, snomed, f"{text} ({i})", 30 + 60 * i))
        return resources


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    name: str
    patient_id: str
    resources: list[dict[str, Any]]


def demo_records(as_of: dt.date) -> list[Record]:
    """Each demo patient's resources, dates moved so that "two weeks ago" is still two weeks ago."""
    records = []
    shift = (as_of - DEMO_ANCHOR).days
    for path in demo_patient_files():
        bundle = orjson.loads(Path(path).read_bytes())
        resources = [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
        resources = shift_dates(resources, shift) if shift else resources
        patient = next((r for r in resources if r.get("resourceType") == "Patient"), None)
        if patient is None:
            continue
        records.append(Record(Path(path).stem, str(patient["id"]), resources))
    return records


def synthetic_typical(as_of: dt.date, patient_id: str = "bench-typical") -> Record:
    """A 60-resource chart with an RLS story (low ferritin, an SSRI, jerks in the journal)."""
    b = RecordBuilder(patient_id, as_of, seed=7)
    own = [
        b.patient("1971-09-02", "male"),
        b.condition("G25.81", "32914008", "Restless legs syndrome", 200),
        b.condition("G47.62", "230145002", "Sleep related leg cramps", 90),
        b.lab(LABS[0], 20),  # ferritin, fresh
        b.medication("312941", "sertraline 50 MG Oral Tablet", 250),
        b.symptom("271782001", "Drowsy", 40),
    ]
    return Record("synthetic-typical", patient_id, own + b.background(60, len(own)))


def typical_records(as_of: dt.date, target: int = 60) -> list[Record]:
    """Every demo patient padded to ``target`` resources, plus one synthetic patient."""
    records = []
    for i, demo in enumerate(demo_records(as_of)):
        b = RecordBuilder(demo.patient_id, as_of, seed=100 + i)
        filler = b.background(target, len(demo.resources))
        records.append(Record(demo.name, demo.patient_id, demo.resources + filler))
    records.append(synthetic_typical(as_of))
    return records


def heavy_record(
    as_of: dt.date, scale: float = 1.0, lab_codes: frozenset[str] | None = None
) -> Record:
    name = "heavy" if scale == 1 else f"heavy-x{scale:g}"
    b = RecordBuilder(f"bench-{name.replace('.', '-')}", as_of, seed=11)
    return Record(name, b.patient_id, b.heavy(scale, lab_codes))


def observation_codes(templates: dict[str, str]) -> frozenset[str]:
    """The LOINC codes named by the ``observations`` prefetch template."""
    query = templates.get("observations", "")
    wanted = query.split("code=", 1)[1].split(",") if "code=" in query else []
    return frozenset(code.split("|", 1)[1] for code in wanted if code.startswith(LOINC + "|"))


def draft_orders(patient_id: str) -> list[dict[str, Any]]:
    """An SSRI (worsens RLS), a polysomnography, and an unrelated refill."""
    subject = {"reference": f"Patient/{patient_id}"}
    return [
        {
            "resourceType": "MedicationRequest",
            "id": "draft-escitalopram",
            "status": "draft",
            "intent": "proposal",
            "medicationCodeableConcept": {
                "coding": [_coding(RXNORM, "351250", "escitalopram 10 MG Oral Tablet")],
                "text": "escitalopram 10 MG Oral Tablet",
            },
            "subject": subject,
            "dosageInstruction": [{"text": "10 mg by mouth once daily"}],
        },
        {
            "resourceType": "ServiceRequest",
            "id": "draft-psg",
            "status": "draft",
            "intent": "proposal",
            "code": {
                "coding": [_coding(SNOMED, "60554003", "Polysomnography")],
                "text": "Polysomnography",
            },
            "subject": subject,
        },
        {
            "resourceType": "MedicationRequest",
            "id": "draft-lisinopril",
            "status": "draft",
            "intent": "proposal",
            "medicationCodeableConcept": {
                "coding": [_coding(RXNORM, "314076", "lisinopril 10 MG Oral Tablet")],
                "text": "lisinopril 10 MG Oral Tablet",
            },
            "subject": subject,
        },
    ]


# --- prefetch and request bodies ---------------------------------------------------------------


def _codes(concept: object) -> set[tuple[str, str]]:
    if not isinstance(concept, dict):
        return set()
    return {
        (str(c.get("system")), str(c.get("code")))
        for c in concept.get("coding") or []
        if isinstance(c, dict)
    }


def _matches(key: str, template: str, resource: dict[str, Any]) -> bool:
    """Whether the query behind a prefetch template would return ``resource`` (enough of FHIR
    search for these templates: type, patient, status, code and category filters)."""
    kind = resource.get("resourceType")
    status = resource.get("status")
    if key == "conditions":
        clinical = {c for _, c in _codes(resource.get("clinicalStatus"))}
        return kind == "Condition" and bool(clinical & {"active", "recurrence", "relapse"})
    if key == "observations":
        wanted = {tuple(part.split("|", 1)) for part in template.split("code=", 1)[1].split(",")}
        return kind == "Observation" and bool(_codes(resource.get("code")) & wanted)
    if key == "symptoms":
        categories = {c for cat in resource.get("category") or [] for _, c in _codes(cat)}
        return kind == "Observation" and bool(categories & {"survey", "exam"})
    if key == "medicationRequests":
        return kind == "MedicationRequest" and status in ("active", "on-hold")
    if key == "medicationStatements":
        return kind == "MedicationStatement" and status in ("active", "intended")
    if key == "journal":
        return kind == "QuestionnaireResponse" and resource.get("questionnaire") == JOURNAL_URL
    return False


def group_prefetch(templates: dict[str, str], record: Record) -> dict[str, Any]:
    """The prefetch an EHR would send for ``record``: one searchset Bundle per query key."""
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        if key == "patient":
            prefetch[key] = next(
                (r for r in record.resources if r.get("resourceType") == "Patient"), None
            )
            continue
        found = [r for r in record.resources if _matches(key, template, r)]
        prefetch[key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": [{"relation": "self", "url": f"https://ehr.example.org/fhir/{key}"}],
            "entry": [
                {
                    "fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in found
            ],
        }
    return prefetch


def hook_request(
    hook: str,
    patient_id: str,
    *,
    prefetch: dict[str, Any] | None = None,
    drafts: Sequence[dict[str, Any]] = (),
    fhir_server: str | None = None,
    hook_instance: str | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": patient_id}
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": d} for d in drafts],
        }
    if hook == "order-select":
        context["selections"] = [f"{d['resourceType']}/{d['id']}" for d in drafts]
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": hook_instance or str(uuid.uuid4()),
        "context": context,
    }
    if fhir_server:
        body["fhirServer"] = fhir_server
        body["fhirAuthorization"] = {
            "access_token": "bench-fhir-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "sleep-cds-bench",
            "patient": patient_id,
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def transaction_bundle(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """PUT every resource (idempotent), for loading a record into a FHIR server."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }


def count_resources(body: dict[str, Any]) -> int:
    """Resources in a hook request's prefetch (the Patient counts as one)."""
    total = 0
    for value in (body.get("prefetch") or {}).values():
        if isinstance(value, dict):
            total += len(value.get("entry") or []) if value.get("resourceType") == "Bundle" else 1
    return total
