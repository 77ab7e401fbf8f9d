"""Secret masking of a try's output bytes (``ketch.logs.masking``) and the in-process
registry (``ketch.worker.secrets_mask``)."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest

from ketch.logs.masking import StreamMasker, patterns
from ketch.worker import secrets_mask


@pytest.fixture(autouse=True)
def _empty_registry() -> Iterator[None]:
    secrets_mask.clear()
    yield
    secrets_mask.clear()


def masked_in_one_go(text: bytes, secrets: list[str]) -> bytes:
    """The reference: the whole text masked at once, leftmost match, longest first."""
    every = set().union(*(patterns(s) for s in secrets))
    if not every:
        return text
    ordered = sorted(every, key=lambda p: (-len(p), p))
    return re.compile(b"|".join(re.escape(p) for p in ordered)).sub(b"***", text)


def stream(masker: StreamMasker, pieces: list[bytes]) -> bytes:
    out = [masker.feed(piece) for piece in pieces]
    assert masker.pending <= max((len(p) for p in masker.patterns), default=1)
    return b"".join(out) + masker.flush()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- encodings -----------------------------------------------------------------------


def test_every_encoding_of_a_secret_is_a_pattern() -> None:
    secret = 'p@ss w/rd"é\\x'
    got = patterns(secret)
    for form in (
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    ):
        assert form.encode() in got


def test_each_line_of_a_multiline_secret_is_a_pattern_and_short_ones_are_not() -> None:
    key = "-----BEGIN KEY-----\nAAAABBBBCCCC\nab\n-----END KEY-----\n"
    got = patterns(key)
    assert {b"-----BEGIN KEY-----", b"AAAABBBBCCCC", b"-----END KEY-----"} <= got
    assert key.encode() in got
    assert json.dumps(key)[1:-1].encode() in got  # the \n-escaped form
    assert b"ab" not in got
    assert patterns("ab") == set() and patterns("  x  ") == set()


def test_duplicates_and_short_values_change_nothing() -> None:
    masker = StreamMasker()
    masker.add("no")
    assert masker.feed(b"no no") == b"no no"
    masker.add("hunter2")
    before = masker.patterns
    masker.add("hunter2")
    assert masker.patterns == before


# -- feed / flush ----------------------------------------------------------------------


def test_no_secret_returns_the_same_bytes_object() -> None:
    masker = StreamMasker()
    data = b"plain \xff\xfe output\n"
    assert masker.feed(data) is data
    assert masker.flush() == b"" and masker.pending == 0


def test_a_line_without_secret_is_passed_without_copy() -> None:
    masker = StreamMasker()
    masker.add("hunter2")
    data = b"nothing to hide here\n"
    assert masker.feed(data) is data


def test_masks_each_encoding() -> None:
    masker = StreamMasker()
    secret = "p@ss word/é"
    masker.add(secret)
    text = (
        f"raw={secret} url={quote(secret, safe='')} plus={quote_plus(secret)} "
        f"json={json.dumps({'k': secret})} utf8json={json.dumps(secret, ensure_ascii=False)}\n"
    ).encode()
    out = masker.feed(text) + masker.flush()
    assert out == b'raw=*** url=*** plus=*** json={"k": "***"} utf8json="***"\n'


def test_a_secret_split_across_feeds_is_masked() -> None:
    masker = StreamMasker()
    masker.add("hunter2")
    assert masker.feed(b"password: hun") == b"password: "
    assert masker.pending == 3
    assert masker.feed(b"ter2 ok\n") == b"*** ok\n"
    assert masker.pending == 0


def test_a_tail_that_turns_out_not_to_be_a_secret_is_written_next() -> None:
    masker = StreamMasker()
    masker.add("hunter2")
    assert masker.feed(b"a hunt") == b"a "
    assert masker.feed(b"ing trip\n") == b"hunting trip\n"
    assert masker.feed(b"end: hunter") == b"end: "
    assert masker.flush() == b"hunter"  # at EOF the held tail is written as is


def test_the_longer_of_two_secrets_wins_even_when_split() -> None:
    masker = StreamMasker()
    masker.add("abcdef")
    masker.add("abcdefghij")
    assert masker.feed(b"x abcdef") == b"x "
    assert masker.feed(b"ghij y") == b"*** y"
    assert masker.feed(b" abcdef") == b" "
    assert masker.feed(b"!\n") == b"***!\n"


def test_binary_and_invalid_utf8_pass_through_and_are_masked() -> None:
    masker = StreamMasker()
    masker.add("s3cret")
    data = bytes(range(256)) + b"\xc3\x28 s3cret \xed\xa0\x80" + bytes(range(255, -1, -1))
    out = stream(masker, split_at(data, [100, 260, 263]))
    assert out == data.replace(b"s3cret", b"***")


def test_carriage_return_progress_bars() -> None:
    masker = StreamMasker()
    masker.add("tok-123456")
    pieces = [f"\rdownloading {i}% tok-12".encode() + b"3456" for i in range(0, 101, 10)]
    pieces.append(b"\n")
    out = stream(masker, pieces)
    assert out == b"".join(pieces).replace(b"tok-123456", b"***")
    assert b"tok" not in out


def test_a_10_mb_line_in_64_kib_pieces() -> None:
    rng = random.Random(7)
    line = bytes(rng.getrandbits(8) for _ in range(4096)).replace(b"\n", b".") * 2560
    pieces = [line[i : i + 65536] for i in range(0, len(line), 65536)]
    plain = StreamMasker()
    assert b"".join(plain.feed(p) for p in pieces) + plain.flush() == line
    masker = StreamMasker()
    masker.add("never-in-there")
    assert stream(masker, pieces) == line
    # The same line with a secret straddling every piece boundary.
    secret = "straddling-secret"
    with_secret = bytearray(line)
    for boundary in range(65536, len(line), 65536):
        with_secret[boundary - 5 : boundary - 5 + len(secret)] = secret.encode()
    data = bytes(with_secret)
    masker.add(secret)
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    out = stream(masker, pieces)
    assert out == masked_in_one_go(data, ["never-in-there", secret])
    assert secret.encode() not in out


def test_a_secret_added_between_feeds_applies_from_then_on() -> None:
    masker = StreamMasker()
    assert masker.feed(b"early hunter2\n") == b"early hunter2\n"
    masker.add("hunter2")
    assert masker.feed(b"late hunter2\n") == b"late ***\n"


def test_a_custom_replacement() -> None:
    masker = StreamMasker(replacement=b"[\\1 hidden]")
    masker.add("hunter2")
    assert masker.feed(b"x hunter2 y\n") == b"x [\\1 hidden] y\n"


# -- property: any split gives the text masked in one go --------------------------------

ALPHABET = 'ab01 /@+%"\\é\n-'


def random_secret(rng: random.Random) -> str:
    size = rng.randint(3, 14)
    secret = "".join(rng.choice(ALPHABET) for _ in range(size))
    return secret if secret.strip() and len(secret.strip()) >= 3 else "abc" + secret


def random_text(rng: random.Random, secrets: list[str]) -> bytes:
    """Filler from the secrets' own alphabet (near misses), with every encoding of the
    secrets whole and cut short, and some invalid UTF-8."""
    forms = sorted(set().union(*(patterns(s) for s in secrets)))
    parts: list[bytes] = []
    for _ in range(rng.randint(1, 30)):
        choice = rng.random()
        if choice < 0.4 and forms:
            parts.append(rng.choice(forms))
        elif choice < 0.6 and forms:
            form = rng.choice(forms)
            parts.append(form[: rng.randint(1, len(form))])
        elif choice < 0.7:
            parts.append(rng.choice([b"\xff", b"\xc3", b"\r", b"\n", b"\x00"]))
        else:
            parts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 8))).encode())
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(300))
def test_any_split_gives_the_text_masked_in_one_go(seed: int) -> None:
    rng = random.Random(seed)
    secrets = [random_secret(rng) for _ in range(rng.randint(1, 5))]
    text = random_text(rng, secrets)
    expected = masked_in_one_go(text, secrets)
    every = set().union(*(patterns(s) for s in secrets))
    for _ in range(5):
        masker = StreamMasker()
        for secret in secrets:
            masker.add(secret)
        if rng.random() < 0.3:  # a byte at a time: every cut inside every secret
            pieces = [text[i : i + 1] for i in range(len(text))]
        else:
            cuts = [rng.randint(0, len(text)) for _ in range(rng.randint(0, 12))]
            pieces = split_at(text, cuts)
        out = stream(masker, pieces)
        assert out == expected, (secrets, text, pieces)
        assert not any(p in out for p in every)


@pytest.mark.parametrize("seed", range(40))
def test_overlapping_and_periodic_secrets_in_long_pieces_match_the_reference(seed: int) -> None:
    """Secrets that overlap themselves and each other (``abab``, ``bab a``), in pieces
    long enough for the needle check: the masker's search per pattern chooses exactly
    the spans of one regex alternation."""
    rng = random.Random(seed)
    secrets = ["".join(rng.choice("ab ") for _ in range(rng.randint(3, 7))) for _ in range(3)]
    secrets = [s if len(s.strip()) >= 3 else "aba" for s in secrets]
    text = "".join(rng.choice("ab ") for _ in range(rng.randint(2000, 6000))).encode()
    masker = StreamMasker()
    for secret in secrets:
        masker.add(secret)
    cuts = [rng.randint(0, len(text)) for _ in range(rng.randint(0, 4))]
    assert stream(masker, split_at(text, cuts)) == masked_in_one_go(text, secrets), secrets


# -- the in-process registry ------------------------------------------------------------


def test_redact_masks_the_same_encodings() -> None:
    secret = "p@ss word"
    secrets_mask.mask_secret(secret)
    text = f"{secret} {quote(secret, safe='')} {quote_plus(secret)} {json.dumps(secret)}"
    assert secrets_mask.redact(text) == '*** *** *** "***"'
    assert secrets_mask.encodings(secret) == {p.decode() for p in patterns(secret)}


def test_sensitive_values_are_the_values_and_their_lines() -> None:
    secrets_mask.mask_secret("line-one\nline-two\nx")
    secrets_mask.mask_secret("ab")
    assert secrets_mask.sensitive_values() == {"line-one\nline-two\nx", "line-one", "line-two"}


def test_listeners_hear_each_new_value_once_and_late_ones_get_the_backlog() -> None:
    first: list[str] = []
    secrets_mask.add_listener(first.append)
    try:
        secrets_mask.mask_secret("hunter2")
        secrets_mask.mask_secret("hunter2")
        secrets_mask.mask_secret("no")  # too short: not registered
        secrets_mask.mask_secret("tok-123456")
        late: list[str] = []
        secrets_mask.add_listener(late.append)
        try:
            assert first == ["hunter2", "tok-123456"]
            assert late == ["hunter2", "tok-123456"]
        finally:
            secrets_mask.remove_listener(late.append)
    finally:
        secrets_mask.remove_listener(first.append)
    secrets_mask.mask_secret("after-removal")
    assert first == ["hunter2", "tok-123456"]


def test_a_listener_feeding_a_stream_masker() -> None:
    masker = StreamMasker()
    secrets_mask.add_listener(masker.add)
    try:
        secrets_mask.mask_secret("s3cr3t-value")
    finally:
        secrets_mask.remove_listener(masker.add)
    assert masker.feed(b"got s3cr3t-value\n") == b"got ***\n"


def test_a_failing_listener_fails_the_registration() -> None:
    def broken(_value: str) -> None:
        raise OSError("pump gone")

    secrets_mask.add_listener(broken)
    try:
        with pytest.raises(OSError, match="pump gone"):
            secrets_mask.mask_secret("hunter2")
    finally:
        secrets_mask.remove_listener(broken)
    assert "hunter2" in secrets_mask.sensitive_values()


# -- what a try registers ---------------------------------------------------------------


def test_a_connection_registers_its_password_secret_extras_and_uri() -> None:
    from ketch.authoring.connection import Connection

    conn = Connection(
        conn_id="warehouse",
        conn_type="postgres",
        host="db.internal",
        login="etl",
        password="pa$$word",
        extra=json.dumps(
            {
                "sslmode": "require",
                "nested": {"client_secret": "deep-secret", "region": "eu-west-1"},
                "keyfile_dict": json.dumps({"private_key": "KEYDATA-1234", "project": "proj-1"}),
                "headers": [{"Authorization": "Bearer abc.def"}],
                "api_key": {"value": "list-key", "port": 443},
            }
        ),
    )
    conn._mask_secrets()
    values = secrets_mask.sensitive_values()
    # The password; strings under a sensitive key at any depth, in a list, in a JSON
    # string; the whole URI.
    for secret in ("pa$$word", "deep-secret", "KEYDATA-1234", "proj-1", "Bearer abc.def"):
        assert secret in values, secret
    assert "list-key" in values and conn.get_uri() in values
    # Not secrets: plain extras, and strings that are keys or under plain keys.
    assert not {"require", "eu-west-1", "etl", "db.internal", "client_secret"} & values
    uri_text = f"connecting to {conn.get_uri()} as etl with pa%24%24word"
    assert secrets_mask.redact(uri_text) == "connecting to *** as etl with ***"


def test_a_connection_without_secrets_registers_nothing() -> None:
    from ketch.authoring.connection import Connection

    Connection("c", "http", host="example.com", extra='{"timeout": "30"}')._mask_secrets()
    Connection("d", "http", host="example.com", extra="not json")._mask_secrets()
    assert secrets_mask.sensitive_values() == frozenset()


@pytest.mark.parametrize(
    ("key", "flagged", "value", "expected"),
    [
        ("plain", False, "visible", set()),
        ("plain", True, "hidden-value", {"hidden-value"}),
        ("db_password", False, "hidden-value", {"hidden-value"}),
        (
            "creds",
            True,
            '{"user": "bob", "pass": "s3cr3t!", "hosts": ["h1.example", 5]}',
            {
                '{"user": "bob", "pass": "s3cr3t!", "hosts": ["h1.example", 5]}',
                "bob",
                "s3cr3t!",
                "h1.example",
            },
        ),
        ("quoted", True, '"json-string"', {'"json-string"', "json-string"}),
        ("not_json", True, "{oops", {"{oops"}),
    ],
)
def test_a_variable_read_by_a_try_registers_what_is_sensitive(
    monkeypatch: pytest.MonkeyPatch, key: str, flagged: bool, value: str, expected: set[str]
) -> None:
    from ketch.authoring.variable import Variable
    from ketch.worker import client

    class FakeClient:
        def get_variable(self, name: str) -> dict[str, object]:
            return {"key": name, "value": value, "is_sensitive": flagged}

    monkeypatch.setenv(client.ENV_TOKEN, "token")
    monkeypatch.setattr(client, "task_client", FakeClient)
    Variable.clear_cache()
    try:
        parsed = Variable.get(key, deserialize_json=key in ("creds", "quoted"))
    finally:
        Variable.clear_cache()
    assert secrets_mask.sensitive_values() == expected
    if isinstance(parsed, dict):
        printed = f"user={parsed['user']} pass={parsed['pass']} all={json.dumps(parsed)}"
        assert secrets_mask.redact(printed) == "user=*** pass=*** all=***"
