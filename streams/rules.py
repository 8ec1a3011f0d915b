"""The one registry of validation rules: stable reason codes, what each rejects, and the column-wise UPN
check.

Every rejection the stream makes (decode, header, record rules, the completeness tracker) names one of these
codes; ``attendance rules`` lists them and ``docs/rules.md`` explains the choices behind them. A code, once
published to the contractor, is never renamed or reused: add a new one instead.

Severity says what a failure costs:

- ``message``: the whole message is quarantined (and, in the worker, every chunk of its extract);
- ``pupil``: the pupil record and all its marks are quarantined;
- ``mark``: that one mark is quarantined;
- ``warn``: recorded, the data is kept.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Literal

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.upn import ALPHABET

Severity = Literal["message", "pupil", "mark", "warn"]
SEVERITIES: tuple[Severity, ...] = ("message", "pupil", "mark", "warn")


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    severity: Severity
    field: str
    description: str


_RULES: tuple[Rule, ...] = (
    # --- message: the bytes, the structure, the header --------------------------------------------------
    Rule("MSG_NOT_UTF8", "message", "(message)", "The message bytes are not valid UTF-8."),
    Rule(
        "MSG_NOT_JSON",
        "message",
        "(message)",
        "The message is not one JSON document (syntax error, NaN/Infinity, trailing data, number out of "
        "range, or nested more than 1024 levels deep).",
    ),
    Rule(
        "MSG_CONTRACT",
        "message",
        "(header)",
        "The message breaks the contract's structure: not a JSON object, a header field missing, of the "
        "wrong type or malformed (schema_version, extract_id, urn, laestab, extract_date, generated_at, "
        "chunk_index, chunk_count, pupil_count), pupils not a list of objects, or a pupil's sessions not a "
        "list of objects.",
    ),
    Rule("MSG_UNKNOWN_URN", "message", "urn", "The URN is not in the school register (GIAS)."),
    Rule(
        "MSG_CLOSED_URN",
        "message",
        "urn",
        "The register's status for the URN is neither 'Open' nor 'Open, but proposed to close'.",
    ),
    Rule(
        "MSG_LAESTAB_MISMATCH", "message", "laestab", "The LAESTAB differs from the register's for the URN."
    ),
    Rule("MSG_EXTRACT_DATE_FUTURE", "message", "extract_date", "extract_date is after today."),
    Rule(
        "MSG_EXTRACT_DATE_TOO_OLD",
        "message",
        "extract_date",
        "extract_date is more than extract_max_age_days (default 30) before today.",
    ),
    Rule(
        "MSG_CHUNK_NUMBERING",
        "message",
        "chunk_index",
        "Chunk numbering is broken: chunk_index >= chunk_count, chunk_count differs between chunks, a "
        "chunk_index repeats, or the indexes are not 0..chunk_count-1.",
    ),
    Rule(
        "MSG_PUPIL_COUNT_MISMATCH",
        "message",
        "pupil_count",
        "pupil_count differs between chunks, or the pupils of all chunks do not add up to pupil_count.",
    ),
    Rule(
        "MSG_HEADER_INCONSISTENT",
        "message",
        "(header)",
        "urn, laestab, extract_date or generated_at differs between chunks of one extract.",
    ),
    Rule(
        "MSG_EXTRACT_REJECTED",
        "message",
        "chunk_index",
        "Another chunk of the same extract was rejected: an extract is stored whole or not at all.",
    ),
    Rule(
        "MSG_INCOMPLETE",
        "message",
        "chunk_count",
        "The extract was still missing chunks when the completeness timeout expired.",
    ),
    # --- pupil ----------------------------------------------------------------------------------------------
    Rule(
        "PUPIL_CONTRACT",
        "pupil",
        "(pupil)",
        "A pupil field is missing, null where required, of the wrong JSON type, or a date that is not "
        "YYYY-MM-DD.",
    ),
    Rule(
        "PUPIL_UPN_INVALID",
        "pupil",
        "upn",
        "The UPN is not 13 characters of the UPN pattern, or its check letter is wrong.",
    ),
    Rule(
        "PUPIL_DUPLICATE_UPN",
        "pupil",
        "upn",
        "The UPN appears more than once in the extract (all chunks): every copy is rejected.",
    ),
    Rule(
        "PUPIL_YEAR_GROUP_INVALID",
        "pupil",
        "nc_year_group",
        "nc_year_group is not one of E1, E2, N1, N2, R, 1-14, M, X.",
    ),
    Rule(
        "PUPIL_DOB_IMPLAUSIBLE",
        "pupil",
        "date_of_birth",
        "The age at 31 August before the extract's academic year does not fit the year group "
        "(see docs/rules.md).",
    ),
    Rule("PUPIL_SEX_INVALID", "pupil", "sex", "sex is not 'M' or 'F'."),
    Rule("PUPIL_SEN_INVALID", "pupil", "sen_provision", "sen_provision is not 'N', 'K' or 'E'."),
    Rule(
        "PUPIL_LEFT",
        "warn",
        "leaving_date",
        "The pupil has marks (other than '-') dated after their leaving_date; the marks are kept.",
    ),
    # --- mark -----------------------------------------------------------------------------------------------
    Rule(
        "MARK_CONTRACT",
        "mark",
        "(mark)",
        "A mark field (date, session, code) is missing, null, of the wrong JSON type, or the date is not "
        "YYYY-MM-DD.",
    ),
    Rule("MARK_CODE_UNKNOWN", "mark", "code", "The code is not a register code."),
    Rule(
        "MARK_CODE_NOT_VALID_ON_DATE",
        "mark",
        "code",
        "A legacy code (H, J, F, Y) dated on or after 19 August 2024, or a 2024 code (K, C1, C2, J1, Q, "
        "Y1-Y7) dated before it.",
    ),
    Rule("MARK_SESSION_INVALID", "mark", "session", "session is not 'AM' or 'PM'."),
    Rule(
        "MARK_DATE_OUTSIDE_WINDOW",
        "mark",
        "date",
        "The mark is dated after extract_date, or before the amendment window: extract_date minus "
        "amendment_window_school_days (default 7) weekdays.",
    ),
    Rule("MARK_WEEKEND", "mark", "date", "The mark is dated on a Saturday or Sunday."),
    Rule(
        "MARK_DUPLICATE_CONFLICT",
        "mark",
        "code",
        "The pupil has two or more marks for the same date and session with different codes: all are "
        "rejected.",
    ),
    Rule(
        "MARK_DUPLICATE_SAME",
        "warn",
        "code",
        "The same mark (date, session, code) appears more than once for the pupil: the first is kept, "
        "the copies are dropped.",
    ),
    Rule(
        "MARK_NO_MARK",
        "warn",
        "code",
        "Code '-' (no mark entered yet): kept as the register's current state, counted in no statistic.",
    ),
)

#: Every rule by reason code.
RULES: dict[str, Rule] = {rule.code: rule for rule in _RULES}


def severity_of(code: str) -> Severity:
    return RULES[code].severity


def rules_table() -> pa.Table:
    """The registry as a table (code, severity, field, description), in registry order."""
    return pa.table(
        {
            "code": [r.code for r in _RULES],
            "severity": [r.severity for r in _RULES],
            "field": [r.field for r in _RULES],
            "description": [r.description for r in _RULES],
        }
    )


def rules_markdown() -> str:
    """The registry as a Markdown table (docs/rules.md embeds it)."""
    lines = ["| Code | Severity | Field | Description |", "|---|---|---|---|"]
    for r in _RULES:
        lines.append(f"| `{r.code}` | {r.severity} | `{r.field}` | {r.description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# --- column-wise UPN check ----------------------------------------------------------------------------------


def _byte_table(pairs: dict[str, int], default: int = 0, dtype: type = np.int32) -> np.ndarray:
    table = np.full(256, default, dtype=dtype)
    for char, value in pairs.items():
        table[ord(char)] = value
    return table


_DIGITS = "0123456789"
#: Value of a byte as a UPN character: a digit its own value, a letter its ALPHABET index.
_CHAR_VALUE = _byte_table({**{d: int(d) for d in _DIGITS}, **{c: i for i, c in enumerate(ALPHABET)}})
_IS_DIGIT = _byte_table(dict.fromkeys(_DIGITS, 1), dtype=np.bool_)
_IS_LETTER = _byte_table(dict.fromkeys(ALPHABET, 1), dtype=np.bool_)
_ALPHABET_BYTES = np.frombuffer(ALPHABET.encode("ascii"), dtype=np.uint8)


def upn_is_valid(upns: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Column-wise twin of :func:`schemas.upn.is_valid_upn`: True where valid, False otherwise (null: False).

    The 13-byte values are read as a matrix of bytes (one row per UPN, one column per character position,
    straight from the string column's data buffer). Every check is then a whole-column operation: position 1
    must be a check letter, 2-12 digits, 13 a digit or letter (never I, O, S); positions 2..13 are mapped to
    their values through a 256-entry lookup, weighted by their position, summed, taken mod 23 and looked up
    in ALPHABET, which must equal position 1.
    """
    chunks = upns.chunks if isinstance(upns, pa.ChunkedArray) else [upns]
    results = [_upn_chunk_is_valid(chunk if pa.types.is_string(chunk.type) else chunk.cast(pa.string()))
               for chunk in chunks]
    if not results:  # a chunked array of no chunks (a batch without pupils)
        return pa.array([], pa.bool_())
    return pa.concat_arrays(results) if len(results) != 1 else results[0]


def _upn_chunk_is_valid(upns: pa.Array) -> pa.Array:
    n = len(upns)
    thirteen = np.asarray(pc.fill_null(pc.equal(pc.binary_length(upns), 13), False), dtype=np.bool_)
    result = np.zeros(n, dtype=np.bool_)
    if not thirteen.any():
        return pa.array(result, pa.bool_())
    if thirteen.all():  # the usual case: the data buffer is the matrix, no copy
        offsets = np.frombuffer(upns.buffers()[1], dtype=np.int32, count=n + 1, offset=upns.offset * 4)
        chars = np.frombuffer(upns.buffers()[2], dtype=np.uint8, count=n * 13, offset=int(offsets[0]))
    else:
        block = upns.filter(pa.array(thirteen)).cast(pa.binary()).cast(pa.binary(13))
        chars = np.frombuffer(block.buffers()[1], dtype=np.uint8, count=len(block) * 13,
                              offset=block.offset * 13)
    chars = chars.reshape(-1, 13)
    shaped = (_IS_LETTER[chars[:, 0]] & _IS_DIGIT[chars[:, 1:12]].all(axis=1)
              & (_IS_DIGIT[chars[:, 12]] | _IS_LETTER[chars[:, 12]]))
    total = np.zeros(len(chars), dtype=np.int32)
    for position in range(1, 13):  # 0-based column p holds character p+1, weight p+1
        total += _CHAR_VALUE[chars[:, position]] * (position + 1)
    result[thirteen] = shaped & (_ALPHABET_BYTES[total % 23] == chars[:, 0])
    return pa.array(result, pa.bool_())


# --- the `rules` command ----------------------------------------------------------------------------------


def _render_table(table: pa.Table, width: int = 100) -> str:
    rows = table.to_pylist()
    code_w = max(len("code"), *(len(r["code"]) for r in rows))
    sev_w = max(len("severity"), *(len(r["severity"]) for r in rows))
    field_w = max(len("field"), *(len(r["field"]) for r in rows))
    desc_w = max(30, width - code_w - sev_w - field_w - 6)
    out = [
        f"{'code':<{code_w}}  {'severity':<{sev_w}}  {'field':<{field_w}}  description",
        f"{'-' * code_w}  {'-' * sev_w}  {'-' * field_w}  {'-' * min(desc_w, 11)}",
    ]
    for r in rows:
        words, lines, line = r["description"].split(), [], ""
        for word in words:
            if line and len(line) + 1 + len(word) > desc_w:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        out.append(f"{r['code']:<{code_w}}  {r['severity']:<{sev_w}}  {r['field']:<{field_w}}  {lines[0]}")
        indent = " " * (code_w + sev_w + field_w + 6)
        out.extend(indent + extra for extra in lines[1:])
    return "\n".join(out) + "\n"


@click.command("rules")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv"]),
    default="table",
    show_default=True,
    help="A readable table, or CSV for a spreadsheet.",
)
def rules_command(output_format: str) -> None:
    """List the validation rules: reason code, severity, field and description."""
    table = rules_table()
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows(zip(*(table.column(name).to_pylist() for name in table.column_names), strict=True))
        click.echo(buffer.getvalue(), nl=False)
    else:
        click.echo(_render_table(table), nl=False)


RULES_COMMANDS: list[click.Command] = [rules_command]
