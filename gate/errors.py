"""Typed errors with stable codes; converted to HTTP answers or CLI messages at the edges."""

from __future__ import annotations

from enum import StrEnum


class Refusal(StrEnum):
    """Why intake refused a file. The values are a public contract: hubs and scripts match on them."""

    FILE_EMPTY = "file_empty"
    FILE_TOO_LARGE = "file_too_large"
    FILE_UNREADABLE = "file_unreadable"
    FORMAT_PICKLE = "format_pickle"
    FORMAT_TORCH_ZIP = "format_torch_zip"
    FORMAT_UNKNOWN = "format_unknown"
    HEADER_TRUNCATED = "header_truncated"
    HEADER_LENGTH_INVALID = "header_length_invalid"
    HEADER_TOO_LARGE = "header_too_large"
    HEADER_NOT_UTF8 = "header_not_utf8"
    HEADER_NOT_JSON = "header_not_json"
    HEADER_NOT_OBJECT = "header_not_object"
    DUPLICATE_TENSOR_NAME = "duplicate_tensor_name"
    TENSOR_ENTRY_INVALID = "tensor_entry_invalid"
    TOO_MANY_TENSORS = "too_many_tensors"
    NO_TENSORS = "no_tensors"
    DTYPE_UNKNOWN = "dtype_unknown"
    SHAPE_INVALID = "shape_invalid"
    OFFSETS_INVALID = "offsets_invalid"
    SIZE_MISMATCH = "size_mismatch"
    TENSOR_OVERLAP = "tensor_overlap"
    DATA_GAP = "data_gap"
    DATA_TRUNCATED = "data_truncated"
    TRAILING_BYTES = "trailing_bytes"
    METADATA_INVALID = "metadata_invalid"
    METADATA_TOO_LARGE = "metadata_too_large"
    NON_FINITE_WEIGHTS = "non_finite_weights"
    NOT_A_LORA = "not_a_lora"
    LORA_PAIR_INCOMPLETE = "lora_pair_incomplete"
    LORA_SHAPE_INVALID = "lora_shape_invalid"
    LORA_DTYPE_INVALID = "lora_dtype_invalid"
    RANK_MISMATCH = "rank_mismatch"
    EMBEDDING_INVALID = "embedding_invalid"


# The HTTP status of the codes that are the client's doing (or the gate's configuration); every other code is 400.
HTTP_STATUS = {
    "signature_missing": 401, "signature_malformed": 401, "signature_expired": 401, "signature_mismatch": 401,
    "webhook_secret_mismatch": 401, "worker_token_mismatch": 401, "unauthenticated": 401, "token_missing": 401,
    "token_invalid": 401, "login_failed": 401,
    "account_disabled": 403, "forbidden": 403, "csrf_failed": 403,
    "upload_not_found": 404, "delivery_not_found": 404, "character_not_found": 404, "account_not_found": 404,
    "set_not_found": 404, "blob_not_found": 404, "registry_snapshot_not_found": 404,
    "claimed_by_other": 409, "not_in_queue": 409, "dispute_exists": 409, "dispute_not_allowed": 409,
    "request_timeout": 408,
    "length_required": 411,
    "body_too_large": 413, "digest_signature_required": 413,
    "headers_too_large": 431,
    "login_throttled": 429, "too_many_unverified": 429, "too_many_streams": 429,
    "not_configured": 503, "unverified_busy": 503, "busy": 503, "too_many_connections": 503,
}


class GateError(Exception):
    """An error with a stable machine-readable code and a message a person can act on."""

    code: str = "gate_error"
    retry_after: int | None = None  # seconds, sent as Retry-After, where the same request can succeed later

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = str(code)
        self.message = message

    @property
    def http_status(self) -> int:
        """The status the web edge answers this error with."""
        return HTTP_STATUS.get(self.code, 400)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class IntakeError(GateError):
    """The file was refused at intake; nothing in it was executed or trusted."""

    def __init__(self, code: Refusal, message: str):
        super().__init__(message, code)
