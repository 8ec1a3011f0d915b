"""Unique Pupil Number check letters.

Rule (DfE "Unique Pupil Numbers (UPNs): A guide for schools and local authorities", govtalk
UniquePupilNumber-2-0-Release; implemented identically in arthurdejong/python-stdnum stdnum/gb/upn.py):
13 characters; character 1 is a check letter; 2-12 are digits; 13 is a digit (permanent UPN) or a letter
(temporary UPN). Check = sum(value(char_i) * i for i in 2..13) mod 23 mapped through ALPHABET, where a digit
has its own value and a letter (only in position 13) has its ALPHABET index. I, O and S are never used.
Verified: ``B801200005001`` is valid (python-stdnum doctest; 93 mod 23 = 1 -> B).

The scalar functions serve the generator and tests; ``upn_is_valid`` in ``streams.rules`` is the
column-wise twin over Arrow arrays and is tested against these.
"""

from __future__ import annotations

import re

ALPHABET = "ABCDEFGHJKLMNPQRTUVWXYZ"  # 23 letters: no I, O, S
UPN_PATTERN = re.compile(r"^[A-HJ-NP-RT-Z]\d{11}[0-9A-HJ-NP-RT-Z]$", re.ASCII)


def _char_value(char: str) -> int:
    return int(char) if char.isdigit() else ALPHABET.index(char)


def check_letter(body: str) -> str:
    """The check letter for the 12 characters after it (positions 2..13)."""
    if len(body) != 12:
        raise ValueError("a UPN body has 12 characters")
    total = sum(_char_value(ch) * position for position, ch in enumerate(body, start=2))
    return ALPHABET[total % 23]


def is_valid_upn(upn: str) -> bool:
    if not isinstance(upn, str) or not UPN_PATTERN.match(upn):
        return False
    return check_letter(upn[1:]) == upn[0]


def make_upn(la_code: int, establishment: int, year2: int, serial: int, temporary: bool = False) -> str:
    """Build a valid UPN: LA (3 digits), establishment (4), last two digits of the year (2), serial (3).

    A temporary UPN ends in a letter instead of the last serial digit.
    """
    if temporary:
        body = f"{la_code:03d}{establishment:04d}{year2:02d}{serial // 23 % 100:02d}{ALPHABET[serial % 23]}"
    else:
        body = f"{la_code:03d}{establishment:04d}{year2:02d}{serial % 1000:03d}"
    return check_letter(body) + body
