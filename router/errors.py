"""Errors in OpenAI's shape, so the official SDK raises the right exception class for each.

``{"error": {"message", "type", "param", "code"}}`` with OpenAI's status codes: the SDK maps 400 →
BadRequestError, 401 → AuthenticationError, 403 → PermissionDeniedError, 404 → NotFoundError,
413 → APIStatusError, 429 → RateLimitError, 5xx → InternalServerError.
"""

from __future__ import annotations

import orjson

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class OpenAIError(Exception):
    """Raised anywhere on the request path; the API layer turns it into a response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(message: str, *, type: str = "server_error", code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unauthorized(message: str = "Incorrect API key provided.") -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key")


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found", param="model")


def model_forbidden(model: str) -> OpenAIError:
    return OpenAIError(403, f"This API key is not allowed to use the model `{model}`.", code="model_not_allowed", param="model")


def no_capacity(message: str = "No healthy engine can serve this model right now.", status: int = 503) -> OpenAIError:
    return OpenAIError(status, message, type="server_error", code="engine_unavailable")
