"""Errors a client can cause. Each carries its HTTP status and a short message.

Anything else that escapes a handler is a bug and becomes a 500 without details.
"""

from __future__ import annotations

# On every answer, errors included (a 500 for a bug too): no sniffing, nothing runs or loads
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", b"default-src 'none'")]


class ConfigError(Exception):
    """A bad config file or value: one line naming the key and what is wrong with it. A config
    with several is one error whose `problems` lists each line (the message joins them)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


class ImageProxyError(Exception):
    status = 500

    def __init__(self, message: str, detail: object = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class BadRequest(ImageProxyError):
    status = 400


class Unauthorized(ImageProxyError):
    status = 401


class Forbidden(ImageProxyError):
    status = 403


class NotFound(ImageProxyError):
    status = 404


class PayloadTooLarge(ImageProxyError):
    status = 413


class UnsupportedMedia(ImageProxyError):
    status = 415


class BadGateway(ImageProxyError):
    status = 502


class Overloaded(ImageProxyError):
    status = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class GatewayTimeout(ImageProxyError):
    status = 504


class StorageUnavailable(ImageProxyError):
    """The object store (or the upload directory) cannot be reached or failed: try again later."""

    status = 503

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after)})
