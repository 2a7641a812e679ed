"""The exception tree shared by every part of splitserve.

Each error names the gRPC status code it maps to (as the code's name, so this
module needs no grpcio); the cloud endpoint aborts with it and the edge client
turns a received status back into the same class::

    SplitServeError
    ├── ConfigError                  INVALID_ARGUMENT
    ├── BundleError                  FAILED_PRECONDITION
    │   └── IntegrityError           DATA_LOSS
    ├── RegistryError                NOT_FOUND
    │   ├── UnknownBackboneError
    │   ├── UnknownSplitPointError
    │   ├── UnknownModelError
    │   └── DuplicateRegistrationError  ALREADY_EXISTS
    ├── CodecError                   INVALID_ARGUMENT
    │   ├── CodecVersionError        FAILED_PRECONDITION
    │   └── DecodeError              INVALID_ARGUMENT
    ├── RequestError                 INVALID_ARGUMENT
    ├── AuthenticationError          UNAUTHENTICATED
    ├── TransportError               UNAVAILABLE
    │   ├── DeadlineExceededError    DEADLINE_EXCEEDED
    │   ├── UnavailableError         UNAVAILABLE
    │   └── ProtocolError            INTERNAL
    ├── ServerError                  INTERNAL
    │   ├── ModelNotReadyError       UNAVAILABLE
    │   ├── ResourceExhaustedError   RESOURCE_EXHAUSTED
    │   └── InferenceError           INTERNAL
    └── ClientClosedError            CANCELLED
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BundleError",
    "ClientClosedError",
    "CodecError",
    "CodecVersionError",
    "ConfigError",
    "DeadlineExceededError",
    "DecodeError",
    "DuplicateRegistrationError",
    "InferenceError",
    "IntegrityError",
    "ModelNotReadyError",
    "ProtocolError",
    "RegistryError",
    "RequestError",
    "ResourceExhaustedError",
    "ServerError",
    "SplitServeError",
    "TransportError",
    "UnavailableError",
    "UnknownBackboneError",
    "UnknownModelError",
    "UnknownSplitPointError",
    "error_for_status",
]


class SplitServeError(Exception):
    """Root of every splitserve error.

    Attributes:
        status: name of the gRPC status code this error maps to (``grpc.StatusCode[status]``).
        request_id: the request this error belongs to, when there is one.
    """

    status: str = "UNKNOWN"

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class ConfigError(SplitServeError):
    status = "INVALID_ARGUMENT"


class BundleError(SplitServeError):
    """A model bundle is missing, malformed or of an unsupported format."""

    status = "FAILED_PRECONDITION"


class IntegrityError(BundleError):
    """A bundle file does not match the sha256 its manifest records."""

    status = "DATA_LOSS"


class RegistryError(SplitServeError):
    status = "NOT_FOUND"


class UnknownBackboneError(RegistryError):
    pass


class UnknownSplitPointError(RegistryError):
    pass


class UnknownModelError(RegistryError):
    """The requested model, version, split or level is not served here."""


class DuplicateRegistrationError(RegistryError):
    status = "ALREADY_EXISTS"


class CodecError(SplitServeError):
    status = "INVALID_ARGUMENT"


class CodecVersionError(CodecError):
    status = "FAILED_PRECONDITION"


class DecodeError(CodecError):
    """A bitstream is truncated, corrupt, or decodes to the wrong number of symbols."""


class RequestError(SplitServeError):
    """A request field is invalid (shape, size, missing field)."""

    status = "INVALID_ARGUMENT"


class AuthenticationError(SplitServeError):
    status = "UNAUTHENTICATED"


class TransportError(SplitServeError):
    status = "UNAVAILABLE"


class DeadlineExceededError(TransportError):
    status = "DEADLINE_EXCEEDED"


class UnavailableError(TransportError):
    status = "UNAVAILABLE"


class ProtocolError(TransportError):
    status = "INTERNAL"


class ServerError(SplitServeError):
    status = "INTERNAL"


class ModelNotReadyError(ServerError):
    status = "UNAVAILABLE"


class ResourceExhaustedError(ServerError):
    status = "RESOURCE_EXHAUSTED"


class InferenceError(ServerError):
    status = "INTERNAL"


class ClientClosedError(SplitServeError):
    status = "CANCELLED"


_BY_STATUS: dict[str, type[SplitServeError]] = {
    "INVALID_ARGUMENT": RequestError,
    "NOT_FOUND": UnknownModelError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": AuthenticationError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "UNAVAILABLE": UnavailableError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "FAILED_PRECONDITION": BundleError,
    "DATA_LOSS": IntegrityError,
    "CANCELLED": ClientClosedError,
    "INTERNAL": ServerError,
}


def error_for_status(status: str, message: str, *, request_id: str | None = None) -> SplitServeError:
    """Build the most specific error class for a received gRPC status code name."""
    cls = _BY_STATUS.get(status, SplitServeError)
    err = cls(message, request_id=request_id)
    err.status = status
    return err
