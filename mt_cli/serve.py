"""`mt serve`: a trained model behind an HTTP JSON API (FastAPI on uvicorn, the `serve` extra).

Requests from concurrent clients are translated together: the first request of a batch waits at most
`max_wait_ms` for others with the same beam and n-best, up to `max_batch` lines, so a busy server decodes
full batches while a lone client waits only a few milliseconds. Decoding runs in one worker thread; the
event loop stays free to accept, validate and refuse requests meanwhile."""

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import Callable

from mt_cli.config.schema import MAX_BEAM


@dataclass
class Limits:
    max_lines: int = 64  # lines per request
    max_chars: int = 2000  # characters per line
    max_batch: int = 64  # lines decoded together
    max_wait_ms: float = 5.0  # how long a batch's first request waits for company


@dataclass
class Engine:
    """What the server translates with: `translate(lines, beam, nbest)` -> n-best lists; `info` for GET /info."""

    translate: Callable[[list[str], int, int], list[list[str]]]
    info: dict
    default_beam: int
    src_lang: str
    tgt_lang: str


def load_engine(path: str | list[str], device) -> Engine:
    """A checkpoint from mt train (decoded by mt_cli's own search), several (their ensemble), or a folder from
    mt export (CTranslate2)."""
    from mt_cli.ct2_engine import is_exported, load_translator
    from mt_cli.data.multilingual import for_direction
    from mt_cli.steps import resolve_precision
    from mt_cli.translate import translate_lines

    paths = [path] if isinstance(path, str) else list(path)
    model, cfg, codecs = load_translator(paths, device)
    codecs = for_direction(codecs, cfg.data, cfg.data.directions[0])  # a multilingual model serves its main one
    exported = is_exported(paths[0])
    amp = resolve_precision("auto", device)  # as mt translate

    def translate(lines: list[str], beam: int, nbest: int) -> list[list[str]]:
        return translate_lines(model, cfg, codecs, lines, device, beam, nbest, amp, warn=lambda *_: None)

    info = {
        "model": " + ".join(paths),
        "engine": "ctranslate2" if exported else "pytorch",
        "device": str(device),
        "src_lang": cfg.data.src_lang,
        "tgt_lang": cfg.data.tgt_lang,
        "beam": cfg.decode.beam_size,
    }
    if not exported:
        info["parameters"] = sum(p.numel() for p in model.parameters())
    return Engine(translate, info, cfg.decode.beam_size, cfg.data.src_lang, cfg.data.tgt_lang)


@dataclass
class _Request:
    lines: list[str]
    key: tuple[int, int]  # (beam, nbest): requests batched together decode alike
    future: asyncio.Future


@dataclass
class Batcher:
    """Collects requests into batches and decodes each batch in the worker thread."""

    engine: Engine
    limits: Limits
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    worker: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="decode")
    )

    async def submit(self, lines: list[str], beam: int, nbest: int) -> list[list[str]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(lines, (beam, nbest), future))
        return await future

    async def _gather(self) -> list[_Request]:
        """One request, then whatever else arrives within max_wait_ms, up to max_batch lines."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.limits.max_wait_ms / 1000
        lines = len(batch[0].lines)
        while lines < self.limits.max_batch and (left := deadline - loop.time()) > 0:
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
            lines += len(batch[-1].lines)
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            for key in dict.fromkeys(r.key for r in batch):
                group = [r for r in batch if r.key == key and not r.future.done()]
                lines = [line for r in group for line in r.lines]
                try:
                    results = await loop.run_in_executor(self.worker, self.engine.translate, lines, *key)
                except Exception as e:  # noqa: BLE001 - answered to the requests of this batch, the server goes on
                    for r in group:
                        r.future.set_exception(e)
                    continue
                at = 0
                for r in group:
                    if not r.future.done():  # a client that went away cancelled its future
                        r.future.set_result(results[at : at + len(r.lines)])
                    at += len(r.lines)


def _lifespan(engine: Engine, limits: Limits):
    """The server's lifetime: the Batcher's task runs from start-up to shutdown, then its worker is joined."""
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(engine, limits)
        task = asyncio.create_task(batcher.run())
        app.state.batcher = batcher
        try:
            yield
        finally:
            task.cancel()
            batcher.worker.shutdown(wait=True, cancel_futures=True)

    return lifespan


def build_app(engine: Engine, limits: Limits):
    """The FastAPI application: POST /translate, GET /health, GET /info; bad requests get a 4xx JSON error."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict

    class TranslateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        text: list[str]
        beam: int | None = None
        nbest: int = 1
        src_lang: str | None = None
        tgt_lang: str | None = None

    app = FastAPI(title="mt_cli", lifespan=_lifespan(engine, limits))

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return {**engine.info, "limits": vars(limits)}

    @app.post("/translate")
    async def translate(req: TranslateRequest, request: Request):
        problem = _refusal(req, engine, limits)
        if problem:
            return error(*problem)
        beam = engine.default_beam if req.beam is None else req.beam
        try:
            results = await request.app.state.batcher.submit(req.text, beam, req.nbest)
        except ValueError as e:  # e.g. a line longer than the model's learned positions
            return error(400, str(e))
        translations = [r[0] for r in results] if req.nbest == 1 else results
        return {"translations": translations}

    return app


def _refusal(req, engine: Engine, limits: Limits) -> tuple[int, str] | None:
    """(status, message) for a well-formed request the server will not translate, else None."""
    if len(req.text) > limits.max_lines:
        return 413, f"text: {len(req.text)} lines; at most {limits.max_lines} per request"
    for i, line in enumerate(req.text):
        if len(line) > limits.max_chars:
            return 413, f"text[{i}]: {len(line)} characters; at most {limits.max_chars} per line"
    for name, have in (("src_lang", engine.src_lang), ("tgt_lang", engine.tgt_lang)):
        asked = getattr(req, name)
        if asked is not None and asked != have:
            return 400, f"{name}: unknown language {asked!r}; this model translates {engine.src_lang}→{engine.tgt_lang}"
    beam = engine.default_beam if req.beam is None else req.beam
    if not 1 <= beam <= MAX_BEAM:
        return 422, f"beam: {beam}; must be in [1, {MAX_BEAM}]"
    if not 1 <= req.nbest <= beam:
        return 422, f"nbest: {req.nbest}; must be in [1, beam={beam}]"
    return None


def serve(engine: Engine, limits: Limits, host: str, port: int, log_level: str = "info") -> str | None:
    """Run until SIGTERM or Ctrl-C: uvicorn finishes the requests in flight, then returns; the signal that
    stopped it (which uvicorn raises again once it is down) is named in the return value, not fatal."""
    import signal

    import uvicorn

    received: list[str] = []
    previous = {sig: signal.signal(sig, lambda number, _: received.append(signal.Signals(number).name)) for sig in (
        signal.SIGTERM, signal.SIGINT)}  # fmt: skip
    try:
        uvicorn.run(build_app(engine, limits), host=host, port=port, log_level=log_level)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else None
