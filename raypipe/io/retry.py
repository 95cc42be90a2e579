"""Retries for storage calls: the only place in raypipe that retries anything.

Only transient failures (dropped connections, timeouts, throttling, server-side 5xx) are retried;
everything else (missing objects, denied access, bad requests) raises at once.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from typing import TypeVar

from raypipe.logs import get_logger

logger = get_logger(__name__)

T = TypeVar("T")

_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNRESET",
        "ECONNABORTED",
        "ECONNREFUSED",
        "ETIMEDOUT",
        "EPIPE",
        "ENETDOWN",
        "ENETUNREACH",
        "ENETRESET",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "EAGAIN",
        # s3fs translates SlowDown / ServiceUnavailable / 503 to EBUSY and 500 to EREMOTEIO.
        "EBUSY",
        "EREMOTEIO",
    )
    if hasattr(errno, name)
)

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_MAX_CAUSE_DEPTH = 8

_jitter = random.Random()


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is worth retrying.

    Recognises connection errors and timeouts, ``OSError`` with errnos like ``ECONNRESET``, botocore
    connection errors and ``ClientError`` with throttling/``SlowDown``/5xx responses, s3fs's
    translations of those, aiohttp connection errors and HTTP errors carrying a 408/429/5xx status.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < _MAX_CAUSE_DEPTH:
        if _is_transient_one(current):
            return True
        current = current.__cause__
        seen += 1
    return False


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if _is_botocore_transient(exc) or _is_aiohttp_transient(exc) or _is_fsspec_timeout(exc):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return _http_status(exc) in _TRANSIENT_HTTP


def _is_botocore_transient(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ClientError, HTTPClientError, SSLError
        from botocore.exceptions import ConnectionError as BotocoreConnectionError
        from botocore.parsers import ResponseParserError
    except ImportError:
        return False
    # Connection errors (EndpointConnectionError, ConnectionClosedError, ...) and read/connect timeouts;
    # throttled responses sometimes arrive as unparsable XML.
    if isinstance(exc, SSLError):  # a certificate problem does not fix itself
        return False
    if isinstance(exc, (BotocoreConnectionError, HTTPClientError, ResponseParserError)):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return error.get("Code") in _TRANSIENT_CODES or status in _TRANSIENT_HTTP
    return False


def _is_aiohttp_transient(exc: BaseException) -> bool:
    try:
        from aiohttp import ClientConnectionError, ClientPayloadError, ClientSSLError
    except ImportError:
        return False
    if isinstance(exc, ClientSSLError):  # certificate problems do not fix themselves
        return False
    return isinstance(exc, (ClientConnectionError, ClientPayloadError))


def _is_fsspec_timeout(exc: BaseException) -> bool:
    from fsspec.exceptions import FSTimeoutError

    return isinstance(exc, FSTimeoutError)


def _http_status(exc: BaseException) -> int | None:
    # gcsfs HttpError and urllib's HTTPError carry the status as ``code``; others use ``status``.
    for attr in ("status", "code", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def backoff_delay(attempt: int, base_delay: float, max_delay: float) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, half of it jittered."""
    ceiling = min(max_delay, base_delay * (2 ** (attempt - 1)))
    return ceiling / 2 + _jitter.uniform(0, ceiling / 2)


def retry(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
    retry_on: Callable[[BaseException], bool] = is_transient,
    description: str | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call ``fn()`` until it succeeds, retrying failures ``retry_on`` accepts, at most ``attempts`` times.

    The last failure (or the first one ``retry_on`` rejects) is raised unchanged. ``sleep`` defaults to
    ``time.sleep``.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    what = description or getattr(fn, "__name__", "storage call")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not retry_on(exc):
                raise
            delay = backoff_delay(attempt, base_delay, max_delay)
            logger.debug(
                "%s failed (attempt %d/%d, %s: %s); retrying in %.2fs",
                what,
                attempt,
                attempts,
                type(exc).__name__,
                exc,
                delay,
            )
            (sleep or time.sleep)(delay)
    raise AssertionError("unreachable")  # the loop always returns or raises
