"""Identifier normalisation and hashing give the strings and hashes the ad platforms match on."""

from __future__ import annotations

import hashlib

import pytest

from app.audience.identifiers import (
    EMAIL_MAX,
    IdentifierError,
    email_sha256,
    normalise_email,
    normalise_phone,
    phone_hashes,
    sha256_hex,
)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- hashing -----------------------------------------------------------------------------------


def test_sha256_hex_is_lowercase_hex_of_utf8() -> None:
    assert sha256_hex("test@example.com") == _sha256("test@example.com")
    assert sha256_hex("zoë@example.com") == hashlib.sha256("zoë@example.com".encode()).hexdigest()
    digest = sha256_hex("anything")
    assert len(digest) == 64
    assert digest == digest.lower()


def test_email_hash_is_the_hash_of_the_normalised_address() -> None:
    assert email_sha256("  Test@Example.COM \n") == _sha256("test@example.com")


def test_email_hash_matches_metas_published_example() -> None:
    # Meta's customer information parameters page: input, normalised form and expected output
    assert normalise_email("John_Smith@gmail.com") == "john_smith@gmail.com"
    assert (
        email_sha256("John_Smith@gmail.com")
        == "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    )


def google_phone_sha256(raw: str, region: str | None = None) -> str:
    return phone_hashes(raw, region)[0]


def meta_phone_sha256(raw: str, region: str | None = None) -> str:
    return phone_hashes(raw, region)[1]


def test_phone_hash_is_google_e164_with_plus() -> None:
    assert google_phone_sha256("+1 (650) 253-0000") == _sha256("+16502530000")
    assert google_phone_sha256("020 7946 0958", "GB") == _sha256("+442079460958")


def test_meta_phone_hash_matches_metas_published_example() -> None:
    # Meta: "(650)555-1212" in the US normalises to "16505551212"
    expected = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    assert _sha256("16505551212") == expected
    assert meta_phone_sha256("(650)555-1212", "US") == expected
    assert meta_phone_sha256("+1 650 555 1212") == expected


def test_google_and_meta_phone_hashes_differ_only_by_the_plus() -> None:
    assert google_phone_sha256("+44 20 7946 0958") == _sha256("+442079460958")
    assert meta_phone_sha256("+44 20 7946 0958") == _sha256("442079460958")


# --- e-mail ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("test@example.com", "test@example.com"),
        ("  Test@Example.com  ", "test@example.com"),
        ("\tJANE.DOE+news@Example.co.uk\n", "jane.doe+news@example.co.uk"),
        # no Gmail rewriting: dots and +tags stay, so Google and Meta get the same hash
        ("J.Smith+ads@GMail.com", "j.smith+ads@gmail.com"),
        ("first.last@googlemail.com", "first.last@googlemail.com"),
        ("Zoë@Example.com", "zoë@example.com"),
    ],
)
def test_normalise_email(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("no-at-sign.example.com", "must contain exactly one @"),
        ("two@at@example.com", "must contain exactly one @"),
        ("@example.com", "has nothing before the @"),
        ("someone@localhost", "must have a domain with a dot"),
        ("someone@", "must have a domain with a dot"),
        ("someone@example.", "must have a domain with a dot"),
        ("someone@.example.com", "must have a domain with a dot"),
        ("someone@example..com", "must have a domain with a dot"),
        ("some one@example.com", "contains spaces"),
        ("someone@exa\tmple.com", "contains spaces"),
        ("some\x00one@example.com", "control characters"),
        ("a" * 65 + "@example.com", "more than 64 characters before the @"),
        ("a@" + "b" * (EMAIL_MAX - 5) + ".com", f"longer than {EMAIL_MAX} characters"),
    ],
)
def test_implausible_emails_are_rejected(raw: str, problem: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normalise_email(raw)
    assert caught.value.field == "email"
    assert problem in caught.value.problem
    with pytest.raises(IdentifierError):
        email_sha256(raw)


def test_longest_plausible_email_is_accepted() -> None:
    email = "a@" + "b" * (EMAIL_MAX - 6) + ".com"
    assert len(email) == EMAIL_MAX
    assert normalise_email(email) == email


# --- phone -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        # United Kingdom: London landline, international and national forms, 00 prefix
        ("+44 20 7946 0958", None, "+442079460958"),
        ("+44 (0)20 7946 0958", None, "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("0044 20 7946 0958", "GB", "+442079460958"),
        # United States
        ("+1 650-253-0000", None, "+16502530000"),
        ("(650) 253-0000", "US", "+16502530000"),
        ("650.253.0000", "us", "+16502530000"),  # region codes in either case
        # Germany: Berlin
        ("+49 30 901820", None, "+4930901820"),
        ("030 901820", "DE", "+4930901820"),
        # a leading + wins over the default region
        ("+1 650 253 0000", "GB", "+16502530000"),
        ("  +49 30 901820  ", None, "+4930901820"),
    ],
)
def test_normalise_phone_to_e164(raw: str, region: str | None, expected: str) -> None:
    assert normalise_phone(raw, region) == expected


def test_national_number_needs_a_default_region() -> None:
    with pytest.raises(IdentifierError) as caught:
        normalise_phone("020 7946 0958")
    assert caught.value.field == "phone"
    assert "country code" in caught.value.problem
    with pytest.raises(IdentifierError):
        normalise_phone("020 7946 0958", "")


def test_the_default_region_decides_the_country() -> None:
    # the same national digits are different numbers in different countries
    assert normalise_phone("030 901820", "DE") == "+4930901820"
    assert normalise_phone("(201) 555-0123", "US") == "+12015550123"


def test_unknown_default_region_is_rejected() -> None:
    with pytest.raises(IdentifierError) as caught:
        normalise_phone("020 7946 0958", "XX")
    assert caught.value.field == "default_region"
    assert "region code" in caught.value.problem


@pytest.mark.parametrize(
    ("raw", "region", "problem"),
    [
        ("", "GB", "is empty"),
        ("   ", None, "is empty"),
        ("hello", "GB", "is not a phone number"),
        ("+", None, "is not a phone number"),
        ("+44 12", None, "is not a valid phone number"),
        ("+1 555 0100", None, "is not a valid phone number"),
        ("12", "DE", "is not a valid phone number"),
        ("+44 7700 900123", None, "is not a valid phone number"),  # Ofcom's drama range
        ("+44 20 7946 0958" * 10, None, "longer than"),
    ],
)
def test_invalid_phone_numbers_are_rejected(raw: str, region: str | None, problem: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normalise_phone(raw, region)
    assert caught.value.field == "phone"
    assert problem in caught.value.problem
    with pytest.raises(IdentifierError):
        phone_hashes(raw, region)


# --- errors never carry the value --------------------------------------------------------------

PRIVATE_EMAILS = [
    "secret.person@nodot",
    "secret person@example.com",
    "@secret-domain.example",
    "secret@@example.com",
    "secretlocalpart" * 5 + "@example.com",
]
PRIVATE_PHONES = ["+44 7700 900123", "0207946095812345", "secretphone", "+1 555 0100"]


@pytest.mark.parametrize("raw", PRIVATE_EMAILS)
def test_email_errors_never_contain_the_value(raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        email_sha256(raw)
    _assert_not_leaked(caught.value, raw)


@pytest.mark.parametrize("raw", PRIVATE_PHONES)
def test_phone_errors_never_contain_the_value(raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        phone_hashes(raw, "GB")
    _assert_not_leaked(caught.value, raw)
    # nor does anything chained to it, which is what a logged traceback would show
    assert caught.value.__cause__ is None


def test_error_is_a_value_error_with_a_readable_message() -> None:
    with pytest.raises(ValueError, match=r"^email must contain exactly one @$"):
        normalise_email("nobody.example.com")


def _assert_not_leaked(error: IdentifierError, raw: str) -> None:
    texts = [str(error), error.problem, error.field, repr(error), *map(str, error.args)]
    needles = {raw, raw.strip(), raw.strip().lower(), *raw.replace("@", " ").split()}
    for text in texts:
        for needle in needles:
            if len(needle) >= 4:
                assert needle.lower() not in text.lower()
