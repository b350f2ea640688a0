"""The HTTP application: routers for /v1, the probes, /metrics and the chat page, and a lifespan
that loads the model in the background (so the probes answer while it loads) and drains the
engine on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine import Engine
from .errors import ApiError, api_error_handler, http_error_handler, internal_error_handler, validation_error_handler
from .limits import BodyLimitMiddleware
from .metrics import UNTRACKED_PATHS, HttpMetricsMiddleware, Metrics
from .protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from .serving import LoadedModel, OpenAIServing, ServeOptions

log = logging.getLogger("alpaca_jobs.serve")
STATIC = Path(__file__).parent / "static"
REQUEST_ID_HEADER = "x-request-id"


@dataclass
class ServerState:
    """What the routers need; filled in by the lifespan once the model is loaded."""

    options: ServeOptions
    api_key: str | None
    metrics: Metrics = field(default_factory=Metrics)
    serving: OpenAIServing | None = None
    load_error: str | None = None
    stopping: bool = False

    @property
    def engine(self) -> Engine | None:
        return self.serving.engine if self.serving else None


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _serving(state: ServerState = Depends(_state)) -> OpenAIServing:
    if state.serving is None or not state.serving.engine.alive:
        raise ApiError(503, "the model is still loading" if state.load_error is None else "the model failed to load",
                       type="server_error", code="unavailable", headers={"Retry-After": "5"})
    return state.serving


class AuthMiddleware:
    """Bearer auth on /v1 (and /metrics when asked), checked from the headers before any body is read,
    so that a client without the key cannot make the server parse anything."""

    def __init__(self, app: ASGIApp, api_key: str | None, metrics_auth: bool = False) -> None:
        self.app, self.api_key, self.metrics_auth = app, api_key, metrics_auth

    def _protected(self, path: str) -> bool:
        return path == "/v1" or path.startswith("/v1/") or (self.metrics_auth and path == "/metrics")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.api_key is None or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            await self.app(scope, receive, send)
            return
        error = ApiError(
            401,
            "Incorrect or missing API key: send it as `Authorization: Bearer <key>`.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)


def _request_id(request: Request) -> str:
    return request.scope["state"]["request_id"]


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[object]) -> object | None:
    """`work`'s result, or None once the client left first; then the work is cancelled, which
    cancels its sequences in the engine. (A stream is watched by its StreamingResponse instead:
    `work` returns as soon as the stream is set up.)"""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


v1 = APIRouter(prefix="/v1")


def _cards(state: ServerState) -> list[ModelCard]:
    """The base model, then its adapters (with the base as their parent, as vLLM lists them)."""
    base = state.options.served_model_name
    adapters = state.serving.engine.adapter_order if state.serving else ()
    return [ModelCard(id=base), *(ModelCard(id=name, parent=base) for name in adapters)]


@v1.get("/models")
async def list_models(state: ServerState = Depends(_state)) -> ModelList:
    return ModelList(data=_cards(state))


@v1.get("/models/{model:path}")
async def get_model(model: str, state: ServerState = Depends(_state)) -> ModelCard:
    card = next((c for c in _cards(state) if c.id == model), None)
    if card is None:
        raise ApiError(404, f"The model `{model}` does not exist.", type="not_found_error", param="model",
                       code="model_not_found")
    return card


def _respond(result: object) -> Response:
    if result is None:  # the client went away: nobody reads this, the access log does (nginx's 499)
        return Response(status_code=499)
    if hasattr(result, "__aiter__"):
        return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})  # type: ignore[arg-type]
    return JSONResponse(result.model_dump())  # type: ignore[attr-defined]


@v1.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, serving: OpenAIServing = Depends(_serving)
) -> Response:
    return _respond(await _unless_disconnected(request, serving.chat(body, _request_id(request))))


@v1.post("/completions")
async def completions(body: CompletionRequest, request: Request, serving: OpenAIServing = Depends(_serving)) -> Response:
    return _respond(await _unless_disconnected(request, serving.completions(body, _request_id(request))))


ops = APIRouter()


@ops.get("/healthz")
async def healthz(state: ServerState = Depends(_state)) -> JSONResponse:
    """Alive while loading and while the engine runs; 503 once it died or the model failed to load."""
    if state.load_error is not None:
        return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
    if state.serving is not None and not state.engine.alive and not state.stopping:  # type: ignore[union-attr]
        return JSONResponse({"status": "failed", "error": "the engine stopped"}, status_code=503)
    return JSONResponse({"status": "ok"})


@ops.get("/readyz")
async def readyz(state: ServerState = Depends(_state)) -> JSONResponse:
    ready = state.serving is not None and state.serving.engine.alive and not state.stopping
    reason = "ready" if ready else ("shutting down" if state.stopping else "loading")
    return JSONResponse({"status": reason}, status_code=200 if ready else 503)


@ops.get("/metrics")
async def metrics(state: ServerState = Depends(_state)) -> Response:
    if not state.options.metrics_on_api_port:
        raise StarletteHTTPException(404)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@ops.get("/info")
async def info(state: ServerState = Depends(_state)) -> JSONResponse:
    """What the chat page shows before the first request: nothing secret."""
    loaded = state.serving.loaded if state.serving else None
    return JSONResponse(
        {
            "model": state.options.served_model_name,
            "prompt_format": loaded.prompt_style.format.value if loaded else None,
            "auth": state.api_key is not None,
            "max_new_tokens": state.options.max_new_tokens,
            "ready": state.serving is not None,
        }
    )


@ops.get("/", include_in_schema=False)
async def chat_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


class RequestContextMiddleware:
    """Gives each request an id (the client's X-Request-Id, or a new one), returns it, logs the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if given and len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            level = logging.DEBUG if scope["path"] in UNTRACKED_PATHS else logging.INFO
            log.log(
                level,
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={"request_id": request_id, "status": status, "duration_s": round(time.perf_counter() - start, 4)},
            )


Loader = Callable[[], LoadedModel]


def create_app(loader: Loader, options: ServeOptions, *, api_key: str | None = None,
               on_fatal: Callable[[], None] | None = None, watch: Callable[[Engine], Callable[[], None]] | None = None) -> FastAPI:
    """The server for one model. `loader` runs in a thread at startup; /readyz turns 200 when it returns.

    `watch(engine)`, once the engine runs, starts whatever follows the config (its adapters) and
    returns how to stop it.
    """
    state = ServerState(options=options, api_key=api_key or None)
    stop_watching: list[Callable[[], None]] = []

    async def load() -> None:
        try:
            loaded = await asyncio.to_thread(loader)
        except Exception as error:
            log.exception("loading the model failed")
            state.load_error = f"{type(error).__name__}: {error}"
            if on_fatal:
                on_fatal()
            return
        engine = Engine(
            loaded.model,
            loaded.tokenizer,
            max_batch_size=options.max_batch_size,
            max_queue=options.max_queue,
            max_prefill_tokens=options.max_prefill_tokens,
            max_prefill_tokens_while_decoding=options.max_prefill_tokens_while_decoding,
            prefix_cache_tokens=options.prefix_cache_tokens,
            on_step=state.metrics.observe_step,
            on_abandon=state.metrics.abandoned.observe,
        )
        engine.start()
        state.metrics.watch_engine(lambda: engine.waiting, lambda: engine.running)
        state.serving = OpenAIServing(loaded, engine, options, state.metrics)
        if watch is not None:
            stop_watching.append(watch(engine))
        log.info("serving %s (%s prompts)", options.served_model_name, loaded.prompt_style.format.value)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(load())
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for open requests; what is left in the
            # engine (requests whose clients went away) is finished before the process exits.
            state.stopping = True
            loading.cancel()
            for stop in stop_watching:
                stop()
            if state.engine is not None:
                await asyncio.to_thread(state.engine.stop, 60.0)

    app = FastAPI(title="alpaca serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    app.include_router(v1)
    app.include_router(ops)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
    # Outermost last: request id and log line, metrics, auth on headers alone, then the body limit.
    app.add_middleware(BodyLimitMiddleware, limit=options.max_request_bytes)
    app.add_middleware(AuthMiddleware, api_key=state.api_key, metrics_auth=options.metrics_auth)
    app.add_middleware(HttpMetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestContextMiddleware)
    return app
