"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status.

Library errors map to statuses by class (`STATUS`); request validation errors become 400s naming the field;
anything unexpected is a 500 whose body says only "internal server error" (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (ConcurrentWriteError, CorruptSessionError, DeltaMemError, InvalidMessageError,
                      InvalidSessionDataError, InvalidSessionIdError, InvalidStateError, SessionBusyError,
                      SessionExistsError, SessionNotFoundError)

__all__ = ["APIError", "error_body", "install_error_handlers", "status_of"]

logger = logging.getLogger(__name__)

# most specific first: the first class an error is an instance of decides
STATUS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (SessionNotFoundError, 404, "not_found_error", "session_not_found"),
    (SessionBusyError, 409, "conflict_error", "session_busy"),
    (ConcurrentWriteError, 409, "conflict_error", "concurrent_write"),
    (SessionExistsError, 409, "conflict_error", "session_exists"),
    (InvalidSessionIdError, 400, "invalid_request_error", "invalid_session_id"),
    (InvalidMessageError, 400, "invalid_request_error", "invalid_message"),
    (InvalidSessionDataError, 400, "invalid_request_error", "invalid_session_data"),
    (CorruptSessionError, 400, "invalid_request_error", "invalid_export"),
    (InvalidStateError, 400, "invalid_request_error", "invalid_state"),
)


class APIError(Exception):
    """An error the API answers with ``status`` and an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def status_of(exc: BaseException) -> APIError:
    """The API error for an exception raised while serving a request (500 for anything unexpected)."""
    if isinstance(exc, APIError):
        return exc
    for cls, status, kind, code in STATUS:
        if isinstance(exc, cls):
            return APIError(status, str(exc), type=kind, code=code)
    if isinstance(exc, DeltaMemError) and isinstance(exc, ValueError):
        return APIError(400, str(exc), code="invalid_value")
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return APIError(500, "internal server error", type="server_error", code="internal_error")


def _response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status)


def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request body")
    return _response(APIError(400, f"invalid request: {param + ': ' if param else ''}{msg}", param=param,
                              code="invalid_body"))


def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}.get(
        exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
    return _response(APIError(exc.status_code, str(exc.detail), type=kind))


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers is OpenAI-shaped."""
    app.add_exception_handler(APIError, lambda _r, e: _response(e))  # type: ignore[arg-type]
    app.add_exception_handler(DeltaMemError, lambda _r, e: _response(status_of(e)))  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, lambda _r, e: _response(status_of(e)))
