import datetime as dt

from schemas.codes import CODES_2024, CODES_BY_MARK, CODES_LEGACY, POSSIBLE_CODES, Category


def test_dfe_arithmetic_categories():
    # present = / + \ + L; AEA = B+J+P+V+W+K; authorised = I+M+R+S+T+H+E+C+C1+J1+C2; unauthorised = G+U+O+N
    by_category = {cat: {c.code for c in CODES_BY_MARK.values() if c.category == cat} for cat in Category}
    assert by_category[Category.PRESENT] == {"/", "\\", "L"}
    assert by_category[Category.AEA] == {"B", "J", "P", "V", "W", "K"}
    assert by_category[Category.AUTHORISED] == {"I", "M", "R", "S", "T", "H", "E", "C", "C1", "J1", "C2", "F"}
    assert by_category[Category.UNAUTHORISED] == {"G", "U", "O", "N"}


def test_management_codes_are_not_possible_sessions():
    for code in ("D", "X", "Q", "Y1", "Y2", "Y3", "Y4", "Y5", "Y6", "Y7", "Z", "#"):
        assert code not in POSSIBLE_CODES


def test_late_codes_are_l_and_u():
    assert {c.code for c in CODES_BY_MARK.values() if c.late} == {"L", "U"}


def test_legacy_codes_only_before_19_august_2024():
    for code in ("H", "J", "F"):
        assert code not in CODES_2024 and code in CODES_LEGACY
        assert CODES_BY_MARK[code].valid_on(dt.date(2024, 8, 18))
        assert not CODES_BY_MARK[code].valid_on(dt.date(2024, 8, 19))
    for code in ("K", "C1", "C2", "J1", "Q", "Y1"):
        assert code in CODES_2024 and not CODES_BY_MARK[code].valid_on(dt.date(2024, 8, 18))
