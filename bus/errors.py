"""The one error hierarchy of disco.

Every error that crosses the wire has a machine code; the exception a user catches is the class registered for
that code, so ``except QuotaExceeded`` and ``reply["code"] == "quota_exceeded"`` mean the same thing.

::

    DiscoError                      code "internal"
    ├── BadRequest                  "bad_request"          malformed payload, wrong field types, missing fields
    │   ├── PayloadTooLarge         "payload_too_large"    over the codec's byte limit
    │   ├── UnsupportedVersion      "unsupported_version"  "v" is not a version this side speaks
    │   ├── InvalidName             "invalid_name"         tenant, service or instance id is not a valid name
    │   └── SubjectMismatch         "subject_mismatch"     the payload names another tenant/service than the subject
    ├── NotFound                    "not_found"            the instance is not in the view
    ├── NoInstances                 "no_instances"         the service has no instance matching the filters
    ├── QuotaExceeded               "quota_exceeded"       a per-tenant quota refused the write
    ├── RateLimited                 "rate_limited"         the tenant's announce rate is exhausted
    ├── Overloaded                  "overloaded"           the aggregator's queue for the tenant is full
    ├── Unavailable                 "unavailable"          the durable view (JetStream) did not take the write
    ├── PermissionDenied            "permission_denied"    the NATS server refused the subject
    ├── NoAggregator                "no_responders"        nobody answers the subject (NATS "no responders")
    ├── Timeout                     "timeout"              the request got no reply in time
    └── ConnectionFailed            "connection_failed"    no NATS server could be reached

Times are seconds (floats) everywhere.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadRequest",
    "ConnectionFailed",
    "DiscoError",
    "InvalidName",
    "NoAggregator",
    "NoInstances",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "SubjectMismatch",
    "Timeout",
    "Unavailable",
    "UnsupportedVersion",
    "error_for_code",
]


class DiscoError(Exception):
    """Root of every disco error; ``code`` is the wire code, ``message`` the human text."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict[str, object]:
        """The error reply sent to a requester."""
        return {"v": 1, "ok": False, "code": self.code, "error": self.message}


class BadRequest(DiscoError):
    code = "bad_request"


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"


class UnsupportedVersion(BadRequest):
    code = "unsupported_version"


class InvalidName(BadRequest, ValueError):
    code = "invalid_name"


class SubjectMismatch(BadRequest):
    code = "subject_mismatch"


class NotFound(DiscoError):
    code = "not_found"


class NoInstances(DiscoError):
    code = "no_instances"


class QuotaExceeded(DiscoError):
    code = "quota_exceeded"


class RateLimited(DiscoError):
    code = "rate_limited"


class Overloaded(DiscoError):
    code = "overloaded"


class Unavailable(DiscoError):
    code = "unavailable"


class PermissionDenied(DiscoError):
    code = "permission_denied"


class NoAggregator(DiscoError):
    code = "no_responders"


class Timeout(DiscoError, TimeoutError):
    code = "timeout"


class ConnectionFailed(DiscoError):
    code = "connection_failed"


def _all_subclasses(cls: type[DiscoError]) -> list[type[DiscoError]]:
    out: list[type[DiscoError]] = []
    sub: type[DiscoError]
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_CLASSES: list[type[DiscoError]] = [DiscoError, *_all_subclasses(DiscoError)]
_BY_CODE: dict[str, type[DiscoError]] = {c.code: c for c in _CLASSES}


def error_for_code(code: str, message: str) -> DiscoError:
    """The exception for a wire error code; unknown codes (from a newer peer) become a plain DiscoError."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return DiscoError(f"{code}: {message}")
    return cls(message)
