from __future__ import annotations

import errno
import logging

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from raypipe.io.retry import backoff_delay, is_transient, retry


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def s3fs_translation(error: ClientError) -> OSError:
    from s3fs.errors import translate_boto_error

    return translate_boto_error(error)


class Flaky:
    """Fails with the given exceptions, then returns "ok"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(errno.ECONNRESET, "reset"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        TimeoutError("timed out"),
        OSError(errno.ECONNRESET, "reset as plain OSError"),
        OSError(errno.ETIMEDOUT, "timed out"),
        client_error("SlowDown", 503),
        client_error("ThrottlingException", 400),
        client_error("InternalError", 500),
        client_error("WeirdNew5xx", 502),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ],
    ids=repr,
)
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc)


def test_s3fs_translations_of_throttling_and_5xx_are_transient() -> None:
    assert is_transient(s3fs_translation(client_error("SlowDown", 503)))
    assert is_transient(s3fs_translation(client_error("InternalError", 500)))


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError(errno.ENOENT, "missing"),
        PermissionError(errno.EACCES, "denied"),
        ValueError("bad"),
        client_error("AccessDenied", 403),
        client_error("NoSuchBucket", 404),
        KeyError("x"),
    ],
    ids=repr,
)
def test_permanent_errors(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_s3fs_translation_of_access_denied_is_permanent() -> None:
    assert not is_transient(s3fs_translation(client_error("AccessDenied", 403)))


def test_transient_failures_are_retried_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    delays: list[float] = []
    fn = Flaky(ConnectionResetError("reset"), TimeoutError("slow"), client_error("SlowDown", 503))
    with caplog.at_level(logging.DEBUG, logger="raypipe.io.retry"):
        assert retry(fn, base_delay=0.1, max_delay=10, sleep=delays.append, description="put x") == "ok"
    assert fn.calls == 4
    assert len(delays) == 3
    for attempt, delay in enumerate(delays, start=1):
        ceiling = 0.1 * 2 ** (attempt - 1)
        assert ceiling / 2 <= delay <= ceiling
    assert "put x failed (attempt 1/5" in caplog.text


def test_permanent_failure_is_raised_at_once() -> None:
    delays: list[float] = []
    fn = Flaky(FileNotFoundError("missing"))
    with pytest.raises(FileNotFoundError):
        retry(fn, sleep=delays.append)
    assert fn.calls == 1
    assert delays == []


def test_gives_up_after_the_last_attempt_with_the_last_error() -> None:
    delays: list[float] = []
    fn = Flaky(*(ConnectionResetError(f"reset {i}") for i in range(5)))
    with pytest.raises(ConnectionResetError, match="reset 2"):
        retry(fn, attempts=3, sleep=delays.append)
    assert fn.calls == 3
    assert len(delays) == 2


def test_custom_retry_on() -> None:
    fn = Flaky(KeyError("eventually consistent"))
    assert retry(fn, retry_on=lambda exc: isinstance(exc, KeyError), sleep=lambda _: None) == "ok"


def test_delays_are_capped() -> None:
    assert all(backoff_delay(attempt, 0.2, 10) <= 10 for attempt in range(1, 40))
    assert backoff_delay(30, 0.2, 10) >= 5


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempts"):
        retry(lambda: None, attempts=0)
