"""API keys: generated, configured by hash, parsed strictly and checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from app.auth.keys import (
    KEY_PREFIX,
    ApiKey,
    KeyRing,
    Scope,
    generate_key,
    hash_key,
    key_config_line,
    parse_bearer,
    parse_key_config,
)


def test_generated_keys_are_prefixed_random_and_url_safe() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        # 32 random bytes are 43 URL-safe base64 characters
        assert re.fullmatch(r"sk_[A-Za-z0-9_-]{43}", key)


def test_hash_key_is_lowercase_hex_sha256() -> None:
    assert hash_key("sk_test") == hashlib.sha256(b"sk_test").hexdigest()


def test_round_trip_generate_line_parse_authenticate() -> None:
    key = generate_key()
    line = key_config_line("crm-export", key, [Scope.AUDIENCE, Scope.READ])
    assert line == f"crm-export:{hash_key(key)}:read+audience"
    assert key not in line

    ring = parse_key_config(line)
    assert ring.authenticate(key) == ApiKey("crm-export", frozenset({Scope.READ, Scope.AUDIENCE}))


def test_wrong_key_is_refused() -> None:
    key = generate_key()
    ring = parse_key_config(key_config_line("ci", key, [Scope.ASSIGN]))
    assert ring.authenticate(generate_key()) is None
    assert ring.authenticate(key[:-1]) is None
    assert ring.authenticate(key + "x") is None
    assert ring.authenticate("") is None
    # the hash is what is stored, not what is accepted
    assert ring.authenticate(hash_key(key)) is None


def test_empty_configuration_refuses_every_key() -> None:
    ring = parse_key_config("")
    assert len(ring) == 0
    assert ring.authenticate(generate_key()) is None
    assert KeyRing().authenticate("") is None


def test_each_key_gets_its_own_name_and_scopes() -> None:
    keys = {name: generate_key() for name in ("ci", "crm", "ops")}
    config = "\n".join(
        [
            "# keys issued 2025-01",
            key_config_line("ci", keys["ci"], [Scope.ASSIGN, Scope.READ]),
            "",
            key_config_line("crm", keys["crm"], [Scope.AUDIENCE]),
            "  " + key_config_line("ops", keys["ops"], [Scope.ADMIN]) + "  ",
        ]
    )
    ring = parse_key_config(config)
    assert ring.names == ["ci", "crm", "ops"]

    ci = ring.authenticate(keys["ci"])
    assert ci is not None
    assert ci.name == "ci"
    assert ci.scopes == {Scope.ASSIGN, Scope.READ}
    assert ci.allows(Scope.READ)
    assert not ci.allows(Scope.AUDIENCE)

    ops = ring.authenticate(keys["ops"])
    assert ops is not None
    # admin implies nothing else: keys list every scope they hold
    assert ops.scopes == {Scope.ADMIN}
    assert not ops.allows(Scope.READ)
    assert not ops.allows(Scope.ASSIGN)


def test_entries_may_be_comma_separated_on_one_line() -> None:
    first, second = generate_key(), generate_key()
    text = (
        f"{key_config_line('a', first, [Scope.READ])} , "
        f"{key_config_line('b', second, [Scope.ASSIGN])},"
    )
    ring = parse_key_config(text)
    assert ring.names == ["a", "b"]
    assert ring.authenticate(second) == ApiKey("b", frozenset({Scope.ASSIGN}))


def test_scopes_and_hex_are_read_leniently_where_unambiguous() -> None:
    key = generate_key()
    digest = hash_key(key).upper()
    ring = parse_key_config(f"svc : {digest} : read + assign + read")
    found = ring.authenticate(key)
    assert found == ApiKey("svc", frozenset({Scope.READ, Scope.ASSIGN}))


def test_every_scope_round_trips() -> None:
    key = generate_key()
    ring = parse_key_config(key_config_line("all", key, list(Scope)))
    found = ring.authenticate(key)
    assert found is not None
    assert found.scopes == frozenset(Scope)


# --- bad configuration ------------------------------------------------------------------------

KEY = generate_key()
DIGEST = hash_key(KEY)
OTHER_DIGEST = hash_key(generate_key())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ci:read", r"key entry 1 has 2 ':'-separated fields"),
        (f"ci:{DIGEST}:read:extra", r"key entry 1 has 4 ':'-separated fields"),
        (f"{KEY}", r"key entry 1 has 1 ':'-separated fields"),
        (f":{DIGEST}:read", r"key entry 1 has an invalid name"),
        (f"bad name:{DIGEST}:read", r"key entry 1 has an invalid name"),
        (f"{KEY}:{DIGEST}:read", r"key entry 1 has an invalid name"),
        (f"ci:{DIGEST[:-1]}:read", r"key entry 1 \('ci'\): the hash must be 64 hex characters"),
        (f"ci:{DIGEST}0:read", r"key entry 1 \('ci'\): the hash must be 64 hex characters"),
        (f"ci:{DIGEST[:-1]}g:read", r"key entry 1 \('ci'\): the hash must be 64 hex characters"),
        (f"ci:{KEY}:read", r"\('ci'\): .*not the key \(it looks like the key itself\)"),
        (f"ci:{DIGEST}:", r"key entry 1 \('ci'\) has an unknown or empty scope;"),
        (f"ci:{DIGEST}:read+", r"key entry 1 \('ci'\) has an unknown or empty scope;"),
        (f"ci:{DIGEST}:reed", r"key entry 1 \('ci'\) has an unknown or empty scope 'reed';"),
        (f"ci:{DIGEST}:Read", r"unknown or empty scope 'Read'; scopes are assign, read, audience"),
        (f"ci:{DIGEST}:read+{KEY}", r"key entry 1 \('ci'\) has an unknown or empty scope;"),
        (
            f"a:{OTHER_DIGEST}:read\nci:{DIGEST}:read\nci:{hash_key('x')}:read",
            r"key entry 3 \('ci'\) repeats the name of entry 2",
        ),
        (
            f"a:{DIGEST}:read, b:{DIGEST.upper()}:assign",
            r"key entry 2 \('b'\) has the same hash as entry 1",
        ),
    ],
)
def test_bad_entries_are_rejected_without_echoing_secrets(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_key_config(text)
    error = str(caught.value)
    assert KEY not in error
    assert DIGEST not in error.lower()
    assert DIGEST[:16] not in error.lower()
    assert OTHER_DIGEST[:16] not in error.lower()


def test_the_first_bad_entry_is_named_by_position() -> None:
    text = "\n".join(
        [
            key_config_line("ok", generate_key(), [Scope.READ]),
            "# a comment, with a comma, is not an entry",
            f"other:{OTHER_DIGEST}:read, late:{DIGEST}:nope",
            "last:not-hex:read",
        ]
    )
    with pytest.raises(
        ValueError, match=r"^key entry 3 \('late'\) has an unknown or empty scope 'nope'"
    ):
        parse_key_config(text)


@pytest.mark.parametrize(
    ("name", "scopes", "message"),
    [
        ("", [Scope.READ], "names are 1 to 64"),
        ("has space", [Scope.READ], "names are 1 to 64"),
        ("a:b", [Scope.READ], "names are 1 to 64"),
        ("x" * 65, [Scope.READ], "names are 1 to 64"),
        ("sk_looks_like_a_key", [Scope.READ], "not with 'sk_'"),
        ("ci", [], "at least one scope"),
    ],
)
def test_key_config_line_refuses_what_parse_would(
    name: str, scopes: list[Scope], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        key_config_line(name, generate_key(), scopes)


def test_key_config_line_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError, match="the key is empty"):
        key_config_line("ci", "", [Scope.READ])


# --- timing safety -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 3, 6, None])
def test_authenticate_compares_against_every_configured_key(
    monkeypatch: pytest.MonkeyPatch, which: int | None
) -> None:
    keys = [generate_key() for _ in range(7)]
    ring = parse_key_config(
        "\n".join(key_config_line(f"k{i}", key, [Scope.READ]) for i, key in enumerate(keys))
    )
    real_compare = hmac.compare_digest
    compared: list[bytes] = []

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)

    presented = keys[which] if which is not None else generate_key()
    found = ring.authenticate(presented)

    # one comparison per configured key, whichever matched (or none), and no early exit
    assert compared == [hashlib.sha256(key.encode()).digest() for key in keys]
    assert (found.name if found else None) == (f"k{which}" if which is not None else None)


# --- Authorization header ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sk_abc", "sk_abc"),
        ("bearer sk_abc", "sk_abc"),
        ("BEARER sk_abc", "sk_abc"),
        ("  Bearer   sk_abc  ", "sk_abc"),
        ("Bearer\tsk_a-b_c", "sk_a-b_c"),
        (None, None),
        ("", None),
        ("   ", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer    ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Token sk_abc", None),
        ("Bearersk_abc", None),
        ("sk_abc", None),
        ("Bearer sk_abc extra", None),
    ],
)
def test_parse_bearer(header: str | None, token: str | None) -> None:
    assert parse_bearer(header) == token
