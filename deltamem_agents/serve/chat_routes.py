"""``POST /v1/chat/completions`` (whole or streamed by server-sent events) and ``GET /v1/models``.

The δ-session of a request is, in this order: the body field ``session_id``, the header ``X-Session-Id``,
the OpenAI field ``user``. A request naming none is stateless: it is answered from an empty memory and
nothing is written or stored. A client may resend the whole history or only the new messages: the chat
model writes only what its session's log does not hold yet (see `deltamem_agents.runtime.history`).
Temperature 0 (also the default when it is omitted) decodes greedily.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..chat import StreamHoldback, aiter_in_thread
from .engine import ChatEngine, TurnRequest
from .errors import APIError, error_body, status_of
from .openai_format import SSE_DONE, chunk, completion, completion_id, model_card, models, sse, tool_calls_of
from .schemas import ChatCompletionRequest, to_chat_messages

__all__ = ["router", "session_of"]

router = APIRouter()


def session_of(body: ChatCompletionRequest, header: Optional[str]) -> Optional[str]:
    """The request's δ-session id (body ``session_id``, else header ``X-Session-Id``, else ``user``)."""
    for sid in (body.session_id, header, body.user):
        if sid:
            return sid
    return None


def _turn(body: ChatCompletionRequest, sid: Optional[str], settings: dict[str, Any]) -> TurnRequest:
    if body.n not in (None, 1):
        raise APIError(400, "n > 1 is not supported", param="n", code="unsupported_parameter")
    return TurnRequest(
        messages=to_chat_messages(body.messages), session_id=sid, tools=body.tools or None,
        tool_choice="auto" if body.tool_choice is None else body.tool_choice,
        parallel_tool_calls=True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        max_new_tokens=body.max_new_tokens(settings["default_max_tokens"], settings["max_tokens_cap"]),
        temperature=0.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, stop=body.stops())


def _headers(sid: Optional[str]) -> dict[str, str]:
    return {"X-Session-Id": sid} if sid else {}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           x_session_id: Optional[str] = Header(default=None)) -> Any:
    engine: ChatEngine = request.app.state.engine
    sid = session_of(body, x_session_id)
    turn = _turn(body, sid, request.app.state.settings)
    chunks = aiter_in_thread(lambda: engine.turn(turn))
    if not body.stream:
        last = None
        async for ch in chunks:
            last = ch
        assert last is not None and last.message is not None
        return JSONResponse(completion(completion_id(), engine.model_name, last.message, last.finish_reason or "stop",
                                       last.usage or {}), headers=_headers(sid))
    it = chunks.__aiter__()
    try:  # the first chunk comes before the response starts: a refused turn still gets its status
        first = await it.__anext__()
    except StopAsyncIteration:  # pragma: no cover - a turn always ends with its last chunk
        raise APIError(500, "the turn produced nothing", type="server_error")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = _events(first, it, engine.model_name, turn, include_usage)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={**_headers(sid), "Cache-Control": "no-cache"})


async def _events(first: Any, rest: AsyncIterator[Any], model: str, turn: TurnRequest,
                  include_usage: bool) -> AsyncIterator[str]:
    """The SSE stream: a role chunk, content deltas (only text that stays in the reply), the reply's tool
    calls, the finish chunk, the usage chunk if asked for, ``[DONE]``; an error mid-stream is one
    ``data: {"error": ...}`` event."""
    cid, created = completion_id(), int(time.time())
    hold = StreamHoldback(turn.stop, tools=bool(turn.tools))
    yield sse(chunk(cid, created, model, {"role": "assistant", "content": ""}))
    last = None
    try:
        ch = first
        while True:
            if ch.finish_reason is None and ch.usage is None:
                out = hold.push(ch.text)
                if out:
                    yield sse(chunk(cid, created, model, {"content": out}))
            else:
                last = ch
            try:
                ch = await rest.__anext__()
            except StopAsyncIteration:
                break
    except Exception as exc:  # noqa: BLE001 - reported to the client as an OpenAI error event
        err = status_of(exc)
        yield sse(error_body(err.message, err.type, err.param, err.code))
        return
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
    assert last is not None and last.message is not None
    tail = hold.rest(last.message.get("content", ""))
    if tail:
        yield sse(chunk(cid, created, model, {"content": tail}))
    calls = tool_calls_of(last.message)
    if calls:
        yield sse(chunk(cid, created, model, {"tool_calls": [dict(c, index=i) for i, c in enumerate(calls)]}))
    yield sse(chunk(cid, created, model, {}, last.finish_reason or "stop"))
    if include_usage:
        yield sse(chunk(cid, created, model, None, usage=last.usage or {}))
    yield SSE_DONE


@router.get("/v1/models")
def list_models(request: Request) -> dict[str, Any]:
    return models(request.app.state.engine.model_name, request.app.state.started)


@router.get("/v1/models/{model_id}")
def get_model(model_id: str, request: Request) -> dict[str, Any]:
    name = request.app.state.engine.model_name
    if model_id != name:
        raise APIError(404, f"no model {model_id!r}; this server runs {name!r}", type="not_found_error",
                       param="model", code="model_not_found")
    return model_card(name, request.app.state.started)


