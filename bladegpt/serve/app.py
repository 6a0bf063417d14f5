"""The routes: OpenAI's completions, chat completions and models, a health check and the chat page, on
Starlette. Every refusal is in OpenAI's error shape with its status; generation runs on the Batcher's thread."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bladegpt.config import REPETITION_PENALTY
from bladegpt.data.copymeter import Background
from bladegpt.data.frames import Frame
from bladegpt.errors import UserError
from bladegpt.generate.engine import prompt_ids
from bladegpt.generate.nocopy import NoCopy
from bladegpt.serve.batcher import Batcher, Job, QueueFull
from bladegpt.serve.params import ApiError, Asked, asked, chat_text, prompt_of
from bladegpt.serve.text import TextStream
from bladegpt.tokenizer import Tokenizer

PAGE = Path(__file__).with_name("page.html")


@dataclass
class Voice:
    """What the routes serve: the model's tokenizer and context, its name, its chat frame, its copy meter."""

    tokenizer: Tokenizer
    block: int
    model_id: str
    frame: Frame
    meter: Background | None
    batcher: Batcher
    api_key: str | None = None
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    rules: dict[int, NoCopy] = dataclasses.field(default_factory=dict)  # no_copy's, by span length

    def copy_rule(self, chars: int) -> NoCopy:
        """A request's no_copy rule over the training text; ApiError while that text is not (yet) indexed."""
        if chars not in self.rules:
            if self.meter is None:
                raise ApiError(400, "'no_copy' needs the training text, and this checkpoint is not in a run "
                               "folder; leave it out.", "no_copy")
            index = self.meter.ready()
            if index is None:
                if self.meter.busy:
                    raise ApiError(503, "The training text is being indexed for 'no_copy'; try again in a "
                                   "moment.", "no_copy", kind="server_error")
                raise ApiError(400, f"'no_copy' needs the run's training text: {self.meter.error}", "no_copy")
            self.rules[chars] = NoCopy.for_tokenizer(index, chars, self.tokenizer)
        return self.rules[chars]


def error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _check(request: Request, body: dict | None = None) -> None:
    """The API key (constant-time), and the model asked for."""
    voice: Voice = request.app.state.voice
    if voice.api_key is not None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {voice.api_key}".encode()):
            raise ApiError(401, "Missing or wrong API key: send the key serve was started with as "
                           "'Authorization: Bearer KEY'.", code="invalid_api_key")
    if body is not None and body.get("model") not in (None, "", voice.model_id):
        raise ApiError(404, f"The model '{body['model']}' does not exist here; this server serves "
                       f"'{voice.model_id}'.", "model", "model_not_found")


async def _json(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"The request body is not valid JSON ({e}).") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _ids(voice: Voice, text: str, field: str, what: str) -> list[int]:
    try:
        ids = prompt_ids(voice.tokenizer, text)
    except UserError as e:  # characters the tokenizer never saw
        raise ApiError(400, str(e), field) from None
    if len(ids) > voice.block:
        raise ApiError(400, f"The {what} is {len(ids):,} tokens, past this model's context of {voice.block:,} "
                       f"tokens; shorten it.", field, "context_length_exceeded")
    return ids


async def completions(request: Request) -> Response:
    body = await _json(request)
    _check(request, body)
    voice: Voice = request.app.state.voice
    want = asked(body, ("max_tokens",), REPETITION_PENALTY)  # as `sample` draws, so a seed gives sample's text
    return await _respond(request, _ids(voice, prompt_of(body), "prompt", "prompt"), want, want.stops, chat=False)


async def chat_completions(request: Request) -> Response:
    body = await _json(request)
    _check(request, body)
    voice: Voice = request.app.state.voice
    want = asked(body, ("max_completion_tokens", "max_tokens"))
    ids = _ids(voice, chat_text(body.get("messages"), voice.frame), "messages", "conversation")
    return await _respond(request, ids, want, [*want.stops, voice.frame.close()], chat=True)


class Run:
    """A request's choices on their way: their jobs in the batcher and the text each has made."""

    def __init__(self, voice: Voice, ids: list[int], want: Asked, stops: list[str]):
        loop, self.events = asyncio.get_running_loop(), asyncio.Queue()

        def teller(i: int):
            def tell(token: int | None, finish: str | None) -> None:
                try:
                    loop.call_soon_threadsafe(self.events.put_nowait, (i, token, finish))
                except RuntimeError:  # the event loop has closed: the server is stopping
                    pass
            return tell

        chars = want.settings.no_copy
        self.jobs = [Job(ids, dataclasses.replace(want.settings, seed=want.settings.seed + i), teller(i),
                         None if chars is None else voice.copy_rule(chars).guard())
                     for i in range(want.n)]
        self.streams = [TextStream(voice.tokenizer, stops) for _ in self.jobs]
        self.finishes: list[str | None] = [None] * want.n
        try:
            voice.batcher.submit(self.jobs)
        except QueueFull as e:
            raise ApiError(429, str(e), code="rate_limit_exceeded", kind="requests") from None

    async def pieces(self) -> AsyncIterator[tuple[int, str, str | None]]:
        """(choice, new text, finish reason or None) as the decode thread makes tokens."""
        while None in self.finishes:
            i, token, finish = await self.events.get()
            if self.finishes[i] is not None:
                continue
            if finish == "error":
                raise ApiError(500, "Generation failed on the server; try again.", kind="server_error")
            stream = self.streams[i]
            piece = stream.feed(token) if token is not None else stream.finish()
            if stream.stopped:
                self.jobs[i].cancel()
                finish = "stop"
            self.finishes[i] = finish
            yield i, piece, finish

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    def usage(self, prompt_tokens: int) -> dict:
        made = sum(s.tokens for s in self.streams)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": made, "total_tokens": prompt_tokens + made}


def copy_meter(voice: Voice, texts: list[str]) -> dict:
    """The copy meter's figure for these texts: the share of their 50-character spans found verbatim in
    the training text, and the longest copied span; null with the reason while it is not at hand."""
    index = voice.meter.ready() if voice.meter is not None else None
    if index is None:
        why = "not a run's checkpoint: its training text is not known" if voice.meter is None else \
            "the training text is still being indexed" if voice.meter.busy else str(voice.meter.error)
        return {"copied": None, "longest_copy": None, "note": why}
    return index.measure(texts).record()


async def _respond(request: Request, ids: list[int], want: Asked, stops: list[str], chat: bool) -> Response:
    voice: Voice = request.app.state.voice
    run = Run(voice, ids, want, stops)
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": voice.model_id}
    if want.stream:
        return StreamingResponse(_events(voice, run, head, len(ids), want, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    texts = [""] * want.n

    async def collect() -> None:
        async for i, piece, _ in run.pieces():
            texts[i] += piece

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(collect()), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        run.cancel()
        watch.cancel()
    if not work.done():  # the client went away: its generation has stopped
        work.cancel()
        return Response(status_code=499)
    work.result()  # raises the ApiError of a failed generation
    choices = [{"index": i, "finish_reason": run.finishes[i], "logprobs": None,
                **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
               for i, text in enumerate(texts)]
    return JSONResponse({**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                         "usage": run.usage(len(ids)), "copy_meter": await asyncio.to_thread(copy_meter, voice, texts)})


async def _events(voice: Voice, run: Run, head: dict, prompt_tokens: int, want: Asked, chat: bool
                  ) -> AsyncIterator[str]:
    """Server-sent events as OpenAI's clients read them: a chunk per piece, then [DONE]. The copy meter rides on
    the chunk that ends the last choice; only when include_usage asks does a last chunk with no choices follow,
    with the usage and the meter (as OpenAI's): clients read `chunk.choices[0]` of every other chunk. A client
    that goes away cancels this, and its generation stops."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict], **extra) -> str:
        return f"data: {json.dumps({**head, 'object': kind, 'choices': choices, **extra})}\n\n"

    def choice(i: int, piece: str, finish: str | None, first: bool = False) -> dict:
        text = {"delta": {**({"role": "assistant"} if first else {}), "content": piece}} if chat else {"text": piece}
        return {"index": i, **text, "finish_reason": finish, "logprobs": None}

    try:
        if chat:
            yield chunk([choice(i, "", None, first=True) for i in range(want.n)])
        try:
            async for i, piece, finish in run.pieces():
                if finish and None not in run.finishes and not want.usage_chunk:  # the last choice ends
                    yield chunk([choice(i, piece, finish)], copy_meter=await measured(voice, run))
                elif piece or finish:
                    yield chunk([choice(i, piece, finish)])
        except ApiError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
            return
        if want.usage_chunk:
            yield chunk([], usage=run.usage(prompt_tokens), copy_meter=await measured(voice, run))
        yield "data: [DONE]\n\n"
    finally:
        run.cancel()


async def measured(voice: Voice, run: Run) -> dict:
    """The copy meter of a run's texts so far, off the event loop."""
    return await asyncio.to_thread(copy_meter, voice, [s.text for s in run.streams])


async def models(request: Request) -> Response:
    _check(request)
    voice: Voice = request.app.state.voice
    return JSONResponse({"object": "list", "data": [{"id": voice.model_id, "object": "model", "created": voice.created,
                                                     "owned_by": "bladegpt", "context_length": voice.block}]})


async def health(request: Request) -> Response:
    voice: Voice = request.app.state.voice
    return JSONResponse({"status": "ok", "model": voice.model_id, "decoding": len(voice.batcher.jobs),
                         "waiting": voice.batcher.waiting.qsize()})


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


async def _api_error(request: Request, e: ApiError) -> Response:
    return error(e)


async def _http_error(request: Request, e: HTTPException) -> Response:
    return error(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}.", code=str(e.status_code)))


async def _bug(request: Request, e: Exception) -> Response:
    return error(ApiError(500, f"The server failed on this request ({type(e).__name__}); it keeps serving.",
                          kind="server_error"))


def create_app(voice: Voice) -> Starlette:
    """The ASGI app serving `voice`; its batcher's thread is started and stopped with it."""
    app = Starlette(
        routes=[Route("/", page), Route("/health", health), Route("/v1/models", models),
                Route("/v1/completions", completions, methods=["POST"]),
                Route("/v1/chat/completions", chat_completions, methods=["POST"])],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _bug},
    )
    app.state.voice = voice
    return app
