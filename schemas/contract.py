"""The feed contract, version "1": what the extraction contractor publishes to the extracts topic.

One Kafka message per chunk of one school's daily extract. Key: the school's URN (UTF-8). Value: a UTF-8
JSON object described by :class:`ExtractMessage`. ``docs/feed-contract.md`` is the contractor's copy of
this; ``attendance schema export DIR`` writes the JSON Schemas.

Two levels of judgement, on purpose:
- *Message structure* (header fields present and of the right type, ``pupils`` a list of objects, each
  pupil's ``sessions`` a list of objects) is checked by the producer before sending (:func:`check_structure`)
  and again by the stream: a message that breaks it is rejected whole.
- *Record values* (a UPN's check letter, a register code, a year group) are checked only by the stream's
  rules, which quarantine the pupil or mark with a reason. Hence ``Pupil`` and ``SessionMark`` type the
  fields loosely enough that the producer never judges them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

SCHEMA_VERSION = "1"

URN = Annotated[str, StringConstraints(pattern=r"^\d{6}$")]
LAESTAB = Annotated[str, StringConstraints(pattern=r"^\d{7}$")]

YEAR_GROUPS: tuple[str, ...] = ("E1", "E2", "N1", "N2", "R", *(str(n) for n in range(1, 15)), "M", "X")
SEN_PROVISION = ("N", "K", "E")  # none, SEN support, EHC plan
SESSIONS = ("AM", "PM")

#: Fields of a pupil that the contract carries; anything else (names, addresses, comments) is dropped.
PUPIL_FIELDS: tuple[str, ...] = (
    "upn", "date_of_birth", "sex", "nc_year_group", "ethnicity", "fsm_eligible", "sen_provision",
    "looked_after", "child_in_need", "child_protection_plan", "admission_date", "leaving_date", "sessions",
)
MARK_FIELDS: tuple[str, ...] = ("date", "session", "code")
HEADER_FIELDS: tuple[str, ...] = (
    "schema_version", "extract_id", "urn", "laestab", "extract_date", "generated_at",
    "chunk_index", "chunk_count", "pupil_count",
)


class SessionMark(BaseModel):
    """One register mark. ``session`` and ``code`` values are judged by the stream's rules."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    date: dt.date = Field(description="The register day of the mark (YYYY-MM-DD).")
    session: str = Field(description='"AM" or "PM".', examples=["AM"])
    code: str = Field(description="Register code (2024 set; legacy codes only before 2024-08-19).")


class Pupil(BaseModel):
    """One pupil on roll at the school, with the marks this extract carries for them."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    upn: str = Field(description="Unique Pupil Number, 13 characters with a valid check letter.")
    date_of_birth: dt.date
    sex: str = Field(description='"M" or "F".')
    nc_year_group: str = Field(description="National curriculum year: " + ", ".join(YEAR_GROUPS))
    ethnicity: str | None = Field(default=None, description="School census ethnicity code, optional.")
    fsm_eligible: bool
    sen_provision: str = Field(description='"N" none, "K" SEN support, "E" EHC plan.')
    looked_after: bool
    child_in_need: bool | None = None
    child_protection_plan: bool | None = None
    admission_date: dt.date
    leaving_date: dt.date | None = None
    sessions: list[SessionMark] = Field(
        description="The extract day's marks and every mark changed in the previous 7 school days."
    )


class ExtractHeader(BaseModel):
    """The header fields every message carries. Strict: a number where a string is due is a violation."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    schema_version: Literal["1"]
    extract_id: Annotated[UUID, Field(strict=False)] = Field(description="Same on every chunk of one extract.")
    urn: URN = Field(description="The school's 6-digit Unique Reference Number.")
    laestab: LAESTAB = Field(description="3-digit LA code and 4-digit establishment number.")
    extract_date: Annotated[dt.date, Field(strict=False)] = Field(description="The register day, YYYY-MM-DD.")
    generated_at: Annotated[AwareDatetime, Field(strict=False)] = Field(
        description="RFC 3339 timestamp with offset, when the contractor took the extract."
    )
    chunk_index: int = Field(ge=0, description="0-based position of this chunk.")
    chunk_count: int = Field(ge=1, description="How many chunks the extract was split into.")
    pupil_count: int = Field(ge=0, description="Pupils in the whole extract, all chunks together.")


class ExtractMessage(ExtractHeader):
    """A whole message on the extracts topic (one chunk)."""

    pupils: list[Pupil]


class ExtractFile(BaseModel):
    """A whole school-day extract as a file (``.json`` or ``.json.gz``): the header without chunking."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    schema_version: Literal["1"]
    extract_id: Annotated[UUID, Field(strict=False)]
    urn: URN
    laestab: LAESTAB
    extract_date: Annotated[dt.date, Field(strict=False)]
    generated_at: Annotated[AwareDatetime, Field(strict=False)]
    pupil_count: int = Field(ge=0)
    pupils: list[Pupil]


class OptOutEvent(BaseModel):
    """Value on the compacted opt-outs topic (key: URN). The latest value per URN is the school's state."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urn: URN
    status: Literal["opted_out", "opted_in"]
    effective_at: AwareDatetime
    recorded_by: str = Field(min_length=1)
    reason: str | None = None
    purge: bool = False


class ContractViolation(ValueError):
    """A message or file whose structure breaks the contract; ``problems`` names each field and fault."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return f"{location}: {error['msg']}"


def check_structure(document: Any, *, whole_file: bool) -> None:
    """Raise :class:`ContractViolation` when the header or the pupils/sessions structure is wrong.

    Values inside pupils are not judged here (that is the stream's job), only that ``pupils`` is a list
    of objects and each ``sessions`` a list of objects.
    """
    if not isinstance(document, dict):
        raise ContractViolation([f"(top level): expected a JSON object, got {type(document).__name__}"])
    header_model = ExtractFile if whole_file else ExtractHeader
    header = {k: v for k, v in document.items() if k != "pupils"}
    if whole_file:
        header["pupils"] = []
    problems: list[str] = []
    try:
        header_model.model_validate(header)
    except ValidationError as exc:
        problems.extend(_describe(e) for e in exc.errors(include_url=False))
    pupils = document.get("pupils")
    if not isinstance(pupils, list):
        problems.append("pupils: missing or not a list")
    else:
        for position, pupil in enumerate(pupils):
            if not isinstance(pupil, dict):
                problems.append(f"pupils.{position}: expected an object")
            elif not isinstance(pupil.get("sessions"), list):
                problems.append(f"pupils.{position}.sessions: missing or not a list")
            elif any(not isinstance(mark, dict) for mark in pupil["sessions"]):
                problems.append(f"pupils.{position}.sessions: every mark must be an object")
            if len(problems) > 20:
                problems.append("... (more problems not shown)")
                break
    if problems:
        raise ContractViolation(problems)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema documents for the contract, by file name."""
    return {
        "extract-message.v1.schema.json": ExtractMessage.model_json_schema(),
        "extract-file.v1.schema.json": ExtractFile.model_json_schema(),
        "optout-event.v1.schema.json": OptOutEvent.model_json_schema(),
    }
