"""tailrank's own exceptions, each carrying its gRPC status code.

Raise these anywhere below the servicer; the server maps them to a status in one place
(``status_for``). Messages say what the caller should fix.
"""

from __future__ import annotations

import grpc


class TailrankError(Exception):
    """Base class: an error with a gRPC status code and a message for the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(TailrankError):
    """The request is malformed; the message says which field and how to fix it."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(TailrankError):
    """A dependency (the feature store, the event store) is down; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(TailrankError):
    """The server is not ready (model or features not loaded) or misconfigured."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(TailrankError):
    """The caller's deadline passed before the work started: nobody waits for the answer."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ConfigError(Exception):
    """Bad server configuration found at start-up; the message says what to change."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to (status code, message). Unknown errors become INTERNAL."""
    if isinstance(exc, TailrankError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see server logs"
