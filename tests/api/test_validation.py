"""Pure unit tests of api/validation.py: no Redis, no app."""

from __future__ import annotations

from typing import Any

import pytest

import api.validation
from api.errors import ApiError
from api.validation import (
    DEFAULT_SINCE_SECONDS,
    JobRequest,
    job_id,
    job_request,
    parse_body,
    since_seconds,
    webhook_url,
)

RETENTION = 3600


def refused(func: Any, *args: Any) -> ApiError:
    """Call func(*args), assert it raises a 400 ApiError, and return the error."""
    with pytest.raises(ApiError) as caught:
        func(*args)
    assert caught.value.code == 400
    assert caught.value.message
    return caught.value


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\t\r "])
def test_parse_body_empty_is_empty_object(raw: bytes) -> None:
    """An empty or blank body is the empty object."""
    assert parse_body(raw) == {}


def test_parse_body_returns_the_object() -> None:
    """A JSON object body comes back as a dict, with UTF-8 text decoded."""
    assert parse_body('{"a": [1, 2.5, null], "b": "jöb"}'.encode()) == {
        "a": [1, 2.5, None],
        "b": "jöb",
    }


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        (b"{", "not valid JSON"),
        (b"nope", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"a": "\xff"}', "UTF-8"),
        (b"[]", "not an array"),
        (b'"s"', "not a string"),
        (b"1.5", "not a number"),
        (b"null", "not null"),
        (b"false", "not a boolean"),
    ],
)
def test_parse_body_refuses_what_is_not_an_object(raw: bytes, hint: str) -> None:
    """Invalid JSON, invalid UTF-8, too-deep nesting and non-objects are 400s saying why."""
    assert hint in refused(parse_body, raw).message


def test_parse_body_error_message_is_bounded() -> None:
    """The message quoting the parser's complaint stays short."""
    assert len(refused(parse_body, b"{" + b" " * 10_000 + b"x").message) < 300


def test_since_seconds_default() -> None:
    """Without since_seconds the window is 600 seconds."""
    assert since_seconds({}, RETENTION) == DEFAULT_SINCE_SECONDS == 600
    assert since_seconds({"other": 1}, RETENTION) == 600


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0.0), (0.0, 0.0), (1, 1.0), (2.5, 2.5), (RETENTION, RETENTION)]
)
def test_since_seconds_accepts_numbers_in_range(value: float, expected: float) -> None:
    """Numbers from 0 to the retention are accepted and returned as floats."""
    result = since_seconds({"since_seconds": value}, RETENTION)
    assert result == expected and isinstance(result, float)


@pytest.mark.parametrize(
    "value",
    [
        "5",
        True,
        False,
        None,
        [],
        {},
        -1,
        -0.5,
        RETENTION + 1,
        RETENTION + 0.001,
        float("inf"),
        float("-inf"),
        float("nan"),
        10**400,
    ],
)
def test_since_seconds_refuses(value: Any) -> None:
    """Non-numbers, booleans, negatives, non-finite values and windows past retention are 400s."""
    assert "since_seconds" in refused(since_seconds, {"since_seconds": value}, RETENTION).message


@pytest.mark.parametrize(
    "value", ["a", "A-z_0-9", "0" * 128, "f0c4a1e2-7b3d-4c5e-9f10-aa11bb22cc33"]
)
def test_job_id_accepts_rq_ids(value: str) -> None:
    """Ids of 1 to 128 of A-Z a-z 0-9 _ - are returned unchanged."""
    assert job_id({"job_id": value}) == value


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"job_id": None},
        {"job_id": 1},
        {"job_id": ["a"]},
        {"job_id": ""},
        {"job_id": "a" * 129},
        {"job_id": "../x"},
        {"job_id": "a/b"},
        {"job_id": "*"},
        {"job_id": "?"},
        {"job_id": "[a]"},
        {"job_id": "jöb"},
        {"job_id": "a b"},
        {"job_id": "abc\n"},
        {"job_id": "\nabc"},
        {"job_id": "a:b"},
        {"job_id": "a.b"},
    ],
    ids=lambda body: repr(body.get("job_id", "<missing>"))[:20],
)
def test_job_id_refuses(body: dict[str, Any]) -> None:
    """A missing, non-string or malformed job_id (trailing newline included) is a 400."""
    assert "job_id" in refused(job_id, body).message


def test_submission_defaults() -> None:
    """A task alone has an empty payload and no webhook."""
    assert job_request({"task": "echo"}) == JobRequest(task="echo", payload={}, webhook_url=None)


def test_submission_keeps_payload_and_webhook() -> None:
    """The payload and a valid webhook URL are returned as given."""
    wanted = job_request(
        {"task": "sleep", "payload": {"seconds": 1}, "webhook_url": "https://h.example/x"}
    )
    assert wanted == JobRequest("sleep", {"seconds": 1}, "https://h.example/x")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "task"),
        ({"task": ""}, "task"),
        ({"task": 1}, "task"),
        ({"task": None}, "task"),
        ({"task": "t" * 101}, "task"),
        ({"task": "echo", "payload": []}, "payload"),
        ({"task": "echo", "payload": None}, "payload"),
        ({"task": "echo", "payload": "{}"}, "payload"),
        ({"task": "echo", "webhook_url": "ftp://h/x"}, "webhook_url"),
    ],
)
def test_job_request_refuses(body: dict[str, Any], field: str) -> None:
    """A missing or non-string task, a non-object payload or a bad webhook URL is a 400."""
    assert field in refused(job_request, body).message


def test_submission_task_length_limit_is_inclusive() -> None:
    """A task name of exactly 100 characters passes the shape check."""
    assert job_request({"task": "t" * 100}).task == "t" * 100


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "https://example.com/hook?a=1#f",
        "https://user@h.example:8443/p",
        "http://[::1]:8080/x",
        "https://h.example/" + "a" * (2048 - 18),
    ],
)
def test_webhook_url_accepts_http_urls(url: str) -> None:
    """Absolute http(s) URLs with a host, up to 2048 characters, are returned unchanged."""
    assert webhook_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "file:///etc/passwd",
        "https://",
        "https:///path",
        "//example.com/x",
        "example.com",
        "",
        "https://h:99999/",
        "https://h:port/",
        "http://[::1/",
        "https://exa mple.com/",
        "https://h.example/\tx",
        "https://h.example/" + "a" * 2048,
        None,
        5,
        True,
        ["https://h.example"],
    ],
    ids=lambda url: repr(url)[:30],
)
def test_webhook_url_refuses(url: Any) -> None:
    """Other schemes, no host, bad ports, white space, over-long and non-strings are 400s."""
    assert "webhook_url" in refused(webhook_url, url).message


def message(func: Any, *args: Any) -> str:
    """Call func(*args), assert it raises a 400 ApiError, and return its message."""
    return refused(func, *args).message


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("60", "a string"),
        (None, "null"),
        (True, "a boolean"),
        ([60], "an array"),
        ({"s": 60}, "an object"),
    ],
)
def test_since_seconds_of_the_wrong_type_names_the_type(value: Any, kind: str) -> None:
    """since_seconds that is not a number is refused with the JSON type it has."""
    body = {"since_seconds": value}
    assert message(since_seconds, body, RETENTION) == f"since_seconds must be a number, not {kind}"


def test_since_seconds_not_finite_is_refused_as_such() -> None:
    """An infinite or NaN since_seconds is refused as not finite."""
    for value in (float("inf"), float("nan")):
        body = {"since_seconds": value}
        assert message(since_seconds, body, RETENTION) == "since_seconds must be a finite number"


def test_negative_since_seconds_is_refused_with_the_rule() -> None:
    """A negative since_seconds is refused saying it must be >= 0."""
    body = {"since_seconds": -0.001}
    assert message(since_seconds, body, RETENTION) == "since_seconds must be >= 0"


def test_parse_body_quotes_the_parser_complaint() -> None:
    """Invalid JSON is refused quoting the parser's own message, position included."""
    assert message(parse_body, b'{"a": ') == (
        "Request body is not valid JSON: Expecting value: line 1 column 7 (char 6)"
    )


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_parse_body_refuses_non_json_constants_by_name(constant: str) -> None:
    """NaN and the infinities are refused, naming the constant found."""
    raw = f'{{"since_seconds": {constant}}}'.encode()
    assert message(parse_body, raw) == (
        f"Request body is not valid JSON: {constant} is not a valid JSON value"
    )


def test_parse_body_names_a_silent_complaint_by_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parser error with an empty message is quoted by its exception type instead."""

    def silent(*args: Any, **kwargs: Any) -> Any:
        raise ValueError

    monkeypatch.setattr(api.validation.json, "loads", silent)
    assert message(parse_body, b"{}") == "Request body is not valid JSON: ValueError"


def test_parse_body_quotes_at_most_200_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parser complaint longer than 200 characters is quoted cut at exactly 200."""
    complaint = "".join(chr(ord("a") + i % 26) for i in range(300))

    def verbose(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(complaint)

    monkeypatch.setattr(api.validation.json, "loads", verbose)
    assert message(parse_body, b"{}") == f"Request body is not valid JSON: {complaint[:200]}"
