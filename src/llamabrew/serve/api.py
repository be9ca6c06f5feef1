"""The OpenAI-compatible HTTP API and the web chat page, over the engines of a `Registry`.

Every error is OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``) so clients show it as they
show OpenAI's. Requests are validated before they queue, so bad input is answered at once even when the engine
is busy; good ones wait for a slot in arrival order (`Scheduler`), and past ``max_queue`` waiting get 429.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from llamabrew.engines import ContextLengthError, Engine, GenerationStats, Sampling
from llamabrew.errors import LlamabrewError
from llamabrew.serve.registry import Registry, ServedModel
from llamabrew.serve.server import STARTED, BodyLimit, Scheduler

STATIC = resources.files("llamabrew.serve") / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# --- request bodies: strict (no "5" for 5); unknown fields pass, as OpenAI's SDKs send extras --------------

# OpenAI options this server does not implement, with the values that mean "not used": anything else is refused
# rather than silently ignored.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "best_of": (None, 1), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}), "echo": (None, False),
    "suffix": (None, ""), "tools": (None, []), "functions": (None, []), "response_format": (None, {"type": "text"})}


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(Strict):
    include_usage: bool = False


class Generation(Strict):
    """Fields shared by chat and plain completions; ``top_k``, ``repetition_penalty`` as vLLM takes them."""

    model: str | None = None  # default: the first served model
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    seed: int | None = None
    stream: bool | None = None  # clients send null for "not set": every optional field takes it
    stream_options: StreamOptions | None = None

    def check_supported(self) -> None:
        for field, unused in UNSUPPORTED.items():
            if (value := (self.model_extra or {}).get(field)) not in unused:
                raise ApiError(400, f"'{field}': {value!r} is not supported by this server"
                               + (" (use repetition_penalty)" if field.endswith("penalty") else ""),
                               field, "unsupported_parameter")

    def sampling(self, context_length: int, default_max: int) -> Sampling:
        limit = self.max_completion_tokens or self.max_tokens
        if limit is not None and limit > context_length:
            raise ApiError(400, f"max_tokens is too large: {limit}. This model's maximum context length is "
                           f"{context_length} tokens.", "max_tokens", "invalid_value")
        given = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                 "repetition_penalty": self.repetition_penalty, "seed": self.seed}
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return replace(Sampling(max_new_tokens=limit or default_max, stop=stop),
                       **{k: v for k, v in given.items() if v is not None})


class ChatRequest(Generation):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Generation):
    prompt: str | list[str]


FIELDS = {f for m in (Generation, ChatRequest, CompletionRequest, Message, TextPart, StreamOptions)
          for f in m.model_fields}


def parse(model: type[Strict], body: bytes) -> Any:
    """Validate a body, mapping pydantic's first error to OpenAI's wording, with ``param`` the field path."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)  # of failed union branches, prefer a value error to a type one
        err = min(errors, key=lambda x: x["type"].endswith("_type"))
        if err["type"] == "json_invalid":
            why = err["msg"].removeprefix("Invalid JSON: ")
            raise ApiError(400, f"The body is not valid JSON ({why}).", None, "invalid_json") from None
        path = ""
        for part in err["loc"]:  # drop pydantic's union-member tags ('str', 'list[TextPart]', ...)
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in FIELDS:
                path += f".{part}" if path else part
            else:
                break
        if not path:
            raise ApiError(400, "The request body must be a JSON object.", None, "invalid_type") from None
        kind = err["type"]
        if kind == "missing":
            raise ApiError(400, f"Missing required parameter: '{path}'.", path,
                           "missing_required_parameter") from None
        if kind == "too_short" and isinstance(err.get("input"), list):
            raise ApiError(400, f"Invalid '{path}': empty array. Expected an array with minimum length 1.",
                           path, "empty_array") from None
        code = "invalid_type" if kind.endswith("_type") or kind.endswith("_parsing") else "invalid_value"
        raise ApiError(400, f"Invalid {'type' if code == 'invalid_type' else 'value'} for '{path}': "
                       f"{err['msg']}.", path, code) from None


# --- responses ----------------------------------------------------------------------------------------------


def usage(stats: GenerationStats) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


class Reply:
    """Builds the objects of one chat or completion answer, streamed or whole."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model, self.created = chat, model, int(time.time())
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _wrap(self, choices: list[dict[str, Any]], chunk: bool, **extra: Any) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, "system_fingerprint": None, **extra}

    def chunk(self, text: str | None = None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._wrap([choice], True)

    def usage_chunk(self, stats: GenerationStats) -> dict[str, Any]:
        return self._wrap([], True, usage=usage(stats))

    def whole(self, text: str, stats: GenerationStats) -> dict[str, Any]:
        answer = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        choice = {"index": 0, **answer, "logprobs": None, "finish_reason": stats.finish_reason}
        return self._wrap([choice], False, usage=usage(stats))


def sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


def engine_error(e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, ContextLengthError):
        return ApiError(400, f"This model's maximum context length was exceeded: {e}.", "messages",
                        "context_length_exceeded")
    if isinstance(e, LlamabrewError):
        return ApiError(400, str(e), "messages", "invalid_value")
    return ApiError(500, "The engine failed; see the server log.", None, None, "server_error")


# --- the app ------------------------------------------------------------------------------------------------


def create_app(registry: Registry, api_key: str | None = None, *, max_body: int = 1 << 20,
               max_queue: int = 256, default_max_tokens: int = 512,
               cors_origins: list[str] | None = None) -> FastAPI:
    """The FastAPI app: /v1 API (Bearer ``api_key`` when given), /health, and the chat page at /."""
    app = FastAPI(title="llamabrew", docs_url=None, redoc_url=None, openapi_url=None)
    scheduler = Scheduler(max_queue)
    app.state.scheduler, app.state.registry = scheduler, registry
    expected = api_key.encode() if api_key else None

    async def authorize(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if expected is not None and not (hmac.compare_digest(given.strip().encode(), expected)  # const. time
                                         and scheme.lower() == "bearer"):
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.", None,
                           "invalid_api_key")

    auth = [Depends(authorize)]
    app.add_exception_handler(ApiError, lambda _r, e: e.response())  # type: ignore[arg-type,return-value]

    @app.exception_handler(HTTPException)
    async def http_error(_r: Request, e: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return ApiError(e.status_code, str(e.detail), None, code).response()

    @app.exception_handler(Exception)
    async def crash(_r: Request, e: Exception) -> JSONResponse:
        return engine_error(e).response()

    def lookup(name: str | None) -> ServedModel:
        served = registry.get(name) if name is not None else registry.get(registry.names[0])
        if served is None:
            raise ApiError(404, f"The model '{name}' does not exist. Served here: "
                           f"{', '.join(registry.names)}.", "model", "model_not_found")
        return served

    def card(m: ServedModel) -> dict[str, Any]:
        return {"id": m.name, "object": "model", "created": 0, "owned_by": "llamabrew", "root": m.name,
                "parent": m.parent, "max_model_len": m.engine.context_length}

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card(m) for m in registry.models.values()]}

    @app.get("/v1/models/{name:path}", dependencies=auth)
    async def model(name: str) -> dict[str, Any]:
        return card(lookup(name))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(request: Request) -> Response:
        req = parse(ChatRequest, await request.body())
        served = lookup(req.model)
        return await answer(request, req, served, served.engine, [m.as_dict() for m in req.messages], True)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request) -> Response:
        req = parse(CompletionRequest, await request.body())
        if isinstance(req.prompt, list) and len(req.prompt) != 1:
            raise ApiError(400, "Send one prompt per request.", "prompt", "unsupported_parameter")
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        served = lookup(req.model)
        return await answer(request, req, served, served.raw, [{"role": "user", "content": prompt}], False)

    async def answer(request: Request, req: Generation, served: ServedModel, engine: Engine,
                     messages: list[dict[str, str]], chat: bool) -> Response:
        req.check_supported()
        sampling = req.sampling(engine.context_length, default_max_tokens)
        try:
            n = await scheduler.tokenize(engine.count_prompt_tokens, messages)
        except LlamabrewError as e:
            raise engine_error(e) from None
        if n >= engine.context_length:
            raise ApiError(400, f"This model's maximum context length is {engine.context_length} tokens; "
                           f"your {'messages' if chat else 'prompt'} came to {n} tokens.",
                           "messages" if chat else "prompt", "context_length_exceeded")
        if scheduler.full():
            wait = scheduler.reject()
            raise ApiError(429, f"The server is busy: too many requests are waiting. Retry in {wait} s.", None,
                           "queue_full", "rate_limit_error", {"Retry-After": str(wait)})
        reply = Reply(chat, served.name)
        pieces = scheduler.generate(request, engine, messages, sampling)
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(events(reply, pieces, include), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, stats = [], GenerationStats()
        async with contextlib.aclosing(pieces):
            async for item in pieces:
                if isinstance(item, BaseException):
                    raise engine_error(item)
                if isinstance(item, GenerationStats):
                    stats = item
                elif isinstance(item, str):
                    text.append(item)
        return JSONResponse(reply.whole("".join(text), stats))

    async def events(reply: Reply, pieces: AsyncIterator[Any], include_usage: bool) -> AsyncIterator[str]:
        async for item in pieces:
            if item is STARTED:  # the first chunk, as OpenAI sends it; the page times generation from here
                if reply.chat:
                    yield sse(reply.chunk(role=True))
            elif isinstance(item, BaseException):
                yield sse(engine_error(item).body())
                break
            elif isinstance(item, GenerationStats):
                yield sse(reply.chunk(finish=item.finish_reason))
                if include_usage:
                    yield sse(reply.usage_chunk(item))
            else:
                yield sse(reply.chunk(item))
        yield sse("[DONE]")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **scheduler.counts()}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, limit=max_body, error=lambda: ApiError(
        413, f"The request body is larger than this server's limit of {max_body} bytes.", None,
        "request_too_large").body())
    return app

