"""streams.rules: one registry of reason codes, the `rules` command, and the column-wise UPN check."""

from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path

import pyarrow as pa
from click.testing import CliRunner

from schemas.upn import ALPHABET, check_letter, is_valid_upn, make_upn
from streams.rules import (
    RULES,
    RULES_COMMANDS,
    SEVERITIES,
    rules_command,
    rules_markdown,
    rules_table,
    upn_is_valid,
)

STREAMS = Path(__file__).resolve().parents[3] / "streams"

BRIEFED_CODES = {
    "MSG_NOT_UTF8",
    "MSG_NOT_JSON",
    "MSG_CONTRACT",
    "MSG_UNKNOWN_URN",
    "MSG_CLOSED_URN",
    "MSG_LAESTAB_MISMATCH",
    "MSG_EXTRACT_DATE_FUTURE",
    "MSG_EXTRACT_DATE_TOO_OLD",
    "MSG_CHUNK_NUMBERING",
    "MSG_PUPIL_COUNT_MISMATCH",
    "MSG_INCOMPLETE",
    "PUPIL_CONTRACT",
    "PUPIL_UPN_INVALID",
    "PUPIL_YEAR_GROUP_INVALID",
    "PUPIL_DOB_IMPLAUSIBLE",
    "PUPIL_DUPLICATE_UPN",
    "PUPIL_SEX_INVALID",
    "PUPIL_SEN_INVALID",
    "MARK_CONTRACT",
    "MARK_CODE_UNKNOWN",
    "MARK_CODE_NOT_VALID_ON_DATE",
    "MARK_SESSION_INVALID",
    "MARK_DATE_OUTSIDE_WINDOW",
    "MARK_WEEKEND",
    "MARK_DUPLICATE_CONFLICT",
    "MARK_DUPLICATE_SAME",
    "MARK_NO_MARK",
    "PUPIL_LEFT",
}


def test_the_registry_has_every_briefed_code_with_a_valid_severity():
    assert set(RULES) >= BRIEFED_CODES
    for code, rule in RULES.items():
        assert rule.code == code
        assert rule.severity in SEVERITIES
        assert rule.field and rule.description
        assert code.split("_", 1)[0] in {"MSG", "PUPIL", "MARK"}


def test_severities_follow_the_prefix_except_for_warnings():
    for code, rule in RULES.items():
        expected = {"MSG": "message", "PUPIL": "pupil", "MARK": "mark"}[code.split("_", 1)[0]]
        assert rule.severity in (expected, "warn"), code
    assert {c for c, r in RULES.items() if r.severity == "warn"} == {
        "PUPIL_LEFT",
        "MARK_DUPLICATE_SAME",
        "MARK_NO_MARK",
    }


def test_every_reason_code_the_stream_emits_is_registered():
    emitted = set()
    for path in STREAMS.glob("*.py"):
        emitted |= set(re.findall(r'"((?:MSG|PUPIL|MARK)_[A-Z0-9_]+)"', path.read_text(encoding="utf-8")))
    assert emitted, "no reason codes found in streams/"
    assert emitted <= set(RULES), emitted - set(RULES)


def test_rules_table_lists_every_rule_in_order():
    table = rules_table()
    assert table.column_names == ["code", "severity", "field", "description"]
    assert table.column("code").to_pylist() == list(RULES)
    assert rules_markdown().count("\n") == len(RULES) + 2


def test_docs_rules_md_carries_the_current_table():
    assert rules_markdown() in (STREAMS.parent / "docs" / "rules.md").read_text(encoding="utf-8")


def test_the_rules_command_prints_a_table_and_csv():
    assert [rules_command] == RULES_COMMANDS
    runner = CliRunner()
    result = runner.invoke(rules_command, [])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["code", "severity", "field", "description"]
    assert any(line.startswith("MARK_WEEKEND ") and " mark " in line for line in lines)
    result = runner.invoke(rules_command, ["--format", "csv"])
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["code"] for r in rows] == list(RULES)
    assert rows[0].keys() == {"code", "severity", "field", "description"}
    bad = runner.invoke(rules_command, ["--format", "xml"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


# --- UPN check letters, column-wise -------------------------------------------------------------------------


def test_the_column_wise_upn_check_knows_the_published_example():
    # python-stdnum's doctest: B801200005001 is valid (8*2+1*4+2*5+5*10+1*13 = 93; 93 mod 23 = 1 -> B).
    assert upn_is_valid(pa.array(["B801200005001", "A801200005001", None])).to_pylist() == [
        True,
        False,
        False,
    ]


def _corrupt(rng: random.Random, upn: str) -> str:
    kind = rng.randrange(9)
    if kind == 0:  # another check letter
        return rng.choice([c for c in ALPHABET if c != upn[0]]) + upn[1:]
    if kind == 1:  # one digit changed
        i = rng.randrange(1, 12)
        return upn[:i] + rng.choice([d for d in "0123456789" if d != upn[i]]) + upn[i + 1 :]
    if kind == 2:  # two neighbours swapped
        i = rng.randrange(1, 11)
        return upn[:i] + upn[i + 1] + upn[i] + upn[i + 2 :]
    if kind == 3:
        return upn[:-1]
    if kind == 4:
        return upn + "0"
    if kind == 5:
        return upn.lower()
    if kind == 6:  # letters that are never used
        return rng.choice("IOS") + upn[1:]
    if kind == 7:
        return upn[:12] + rng.choice("IOSa-é")
    return upn[:5] + rng.choice(["é", " ", "x"]) + upn[6:]


def test_the_column_wise_upn_check_agrees_with_the_scalar_one_on_thousands_of_upns():
    rng = random.Random(20261117)
    upns = []
    for serial in range(3000):
        upn = make_upn(
            rng.randint(201, 999),
            rng.randint(0, 9999),
            rng.randint(0, 99),
            serial,
            temporary=rng.random() < 0.2,
        )
        upns.append(upn)
        upns.append(_corrupt(rng, upn))
        body = "".join(rng.choice("0123456789") for _ in range(11)) + rng.choice("0123456789" + ALPHABET)
        upns.append(rng.choice(ALPHABET) + body)  # random: valid about 1 time in 23
    upns += ["", "B80120000500", None, "B8012000050011", "b801200005001"]
    expected = [upn is not None and is_valid_upn(upn) for upn in upns]
    assert sum(expected) > 3000 and len(expected) - sum(expected) > 3000
    assert upn_is_valid(pa.array(upns, pa.string())).to_pylist() == expected
    # chunked, sliced and large_string input too
    chunked = pa.chunked_array([pa.array(upns[:1000]), pa.array(upns[1000:])])
    assert upn_is_valid(chunked).to_pylist() == expected
    assert upn_is_valid(pa.array(upns).slice(7)).to_pylist() == expected[7:]
    assert upn_is_valid(pa.array(upns, pa.large_string())).to_pylist() == expected


def test_digits_must_be_ascii():
    # U+0663 ARABIC-INDIC DIGIT THREE: str.isdigit() and the regex \d accept it (schemas.upn.UPN_PATTERN does,
    # without re.ASCII), but a UPN is 13 ASCII characters.
    upn = make_upn(801, 2000, 15, 3)
    assert upn[5] == "0"
    lookalike = upn[:5] + "\u0660" + upn[6:]  # ARABIC-INDIC DIGIT ZERO in place of "0"
    assert upn_is_valid(pa.array([upn, lookalike])).to_pylist() == [True, False]


def test_every_check_letter_is_recognised():
    for serial in range(23 * 3):
        body = f"80120000{serial:04d}"
        letter = check_letter(body)
        for candidate in ALPHABET:
            assert upn_is_valid(pa.array([candidate + body])).to_pylist() == [candidate == letter]
