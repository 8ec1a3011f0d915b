import random

from schemas.upn import ALPHABET, check_letter, is_valid_upn, make_upn


def test_documented_example_has_check_letter_b():
    # 8*2 + 1*4 + 2*5 + 5*10 + 1*13 = 93; 93 mod 23 = 1 -> B (python-stdnum doctest)
    assert check_letter("801200005001") == "B"
    assert is_valid_upn("B801200005001")


def test_wrong_check_letter_is_invalid():
    assert not is_valid_upn("A801200005001")


def test_letters_i_o_s_are_never_valid():
    assert not is_valid_upn("I801200005001")
    assert not is_valid_upn("B80120000500S")


def test_shape_errors_are_invalid():
    for bad in ("", "B80120000500", "B8012000050011", "b801200005001", "B80120000500!", None, 123):
        assert not is_valid_upn(bad)  # type: ignore[arg-type]


def test_made_upns_are_valid_permanent_and_temporary():
    rng = random.Random(7)
    for _ in range(500):
        la, est, serial = rng.randint(201, 938), rng.randint(1000, 7999), rng.randint(0, 999)
        assert is_valid_upn(make_upn(la, est, 24, serial))
        temporary = make_upn(la, est, 24, serial, temporary=True)
        assert temporary[-1] in ALPHABET and is_valid_upn(temporary)
