"""Retries with backoff for the I/O-bound stages: exporting and writing files, writing the report,
publishing artifacts to the Prefect API. Only *transient* failures are retried: an I/O error a
busy or network file system gives now and not a moment later (EIO, EAGAIN, EBUSY, ESTALE, a
timeout, a full disk that a cleanup frees), or an API that did not answer or answered 5xx. A wrong
setting, a parity failure or a missing file fails at once, as before, and training is never
retried: it is long, deterministic, and resumable from its checkpoints instead.

``task_options()`` gives a Prefect task these retries (``pipeline.flow``); ``call_with_retries``
does the same for code outside a task (``pipeline.artifacts.publish``). Nothing here imports
Prefect at module level.
"""
from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

IO_RETRIES = 3  # after the first attempt: 4 in all
BACKOFF_S = 1.0  # waits of 1, 2, 4 s, each +-50% so that concurrent runs do not retry in step
JITTER = 0.5
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ENOSPC, errno.EINTR,
                              getattr(errno, "ESTALE", -1), getattr(errno, "EDQUOT", -1)})  # fmt: skip

T = TypeVar("T")


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is worth another attempt after a pause."""
    if isinstance(error, (TimeoutError, ConnectionError, BlockingIOError, InterruptedError)):
        return True
    if isinstance(error, OSError):
        return error.errno in TRANSIENT_ERRNOS
    try:
        import httpx
    except ImportError:
        return False
    if isinstance(error, httpx.TransportError):  # the API did not answer, or the connection broke
        return True
    response = getattr(error, "response", None)  # httpx.HTTPStatusError, Prefect's PrefectHTTPStatusError
    return isinstance(getattr(response, "status_code", None), int) and response.status_code >= 500


def delays(retries: int = IO_RETRIES, backoff_s: float = BACKOFF_S) -> list[float]:
    return [backoff_s * 2**attempt for attempt in range(retries)]


def _retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry a failed task run only for a transient error."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001  (no exception to judge: do not retry)
        return False
    return isinstance(error, BaseException) and is_transient(error)


def task_options() -> dict[str, Any]:
    """``prefect.task`` keyword arguments for an I/O-bound stage."""
    return {"retries": IO_RETRIES, "retry_delay_seconds": delays(), "retry_jitter_factor": JITTER,
            "retry_condition_fn": _retry_condition}  # fmt: skip


def call_with_retries(call: Callable[[], T], *, retries: int = IO_RETRIES, backoff_s: float = BACKOFF_S,
                      sleep: Callable[[float], None] = time.sleep) -> T:  # fmt: skip
    """``call()``, again after a pause while it raises a transient error, at most ``retries`` more
    times; any other error, or the last one, propagates."""
    for pause in [*delays(retries, backoff_s), None]:
        try:
            return call()
        except Exception as error:
            if pause is None or not is_transient(error):
                raise
            sleep(pause * (1 + JITTER * (2 * random.random() - 1)))
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover
