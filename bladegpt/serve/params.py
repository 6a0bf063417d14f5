"""What an OpenAI-style request asks for, read and checked: sampling settings, stop strings, the prompt or the
chat laid into the voice's frame. Each problem is an ApiError naming the field, in OpenAI's error shape."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass

from bladegpt.data.frames import Frame
from bladegpt.errors import UserError
from bladegpt.generate.settings import SampleSettings

MAX_N = 16  # choices one request may ask for
# OpenAI fields this server cannot honour, and the value that means "not asked for": any other value is
# refused by name rather than ignored.
UNSUPPORTED = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
               "suffix": (None, ""), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
               "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none"),
               "functions": (None, []), "response_format": (None, {"type": "text"})}


class ApiError(Exception):
    """A request the server refuses: HTTP status, OpenAI's error type and code, and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Asked:
    """One request's generation: settings (seed: choice 0's; choice i uses seed + i, as sample --num-samples)."""

    settings: SampleSettings
    n: int
    stream: bool
    stops: list[str]
    usage_chunk: bool  # stream_options.include_usage: a last chunk with the token counts


def as_field(e: UserError) -> str:
    """A settings error in the API's words: the CLI's flags (--top-p) named as the fields (top_p)."""
    return re.sub(r"--([a-z-]+)", lambda m: m[1].replace("-", "_"), str(e))


def _number(body: dict, name: str, default, whole: bool = False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not float(value).is_integer()) \
            or not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be {'a whole number' if whole else 'a number'}, got {value!r}.", name)
    return int(value) if whole else float(value)


def asked(body: dict, max_tokens_names: tuple[str, ...], repetition_penalty: float | None = None) -> Asked:
    """The settings a completions or chat request asks for; sample's defaults for what it leaves out, and
    `repetition_penalty` where it leaves that out (completions: sample's; chat: off, as chat's)."""
    for name, neutral in UNSUPPORTED.items():
        if name in body and body[name] not in neutral:
            raise ApiError(400, f"'{name}' is not supported by this server; leave it out.", name)
    defaults = SampleSettings()
    max_tokens = next((_number(body, name, None, whole=True) for name in max_tokens_names if body.get(name) is not None),
                      defaults.max_new_tokens)
    if max_tokens < 1:
        raise ApiError(400, f"'{max_tokens_names[0]}' must be at least 1, got {max_tokens}.", max_tokens_names[0])
    seed = _number(body, "seed", None, whole=True)
    top_k = _number(body, "top_k", defaults.top_k, whole=True)
    try:
        settings = SampleSettings(
            max_new_tokens=max_tokens, temperature=_number(body, "temperature", defaults.temperature),
            top_k=None if top_k in (0, -1) else top_k,  # 0 and -1 mean "off" to llama.cpp and vLLM
            top_p=_number(body, "top_p", defaults.top_p), min_p=_number(body, "min_p", defaults.min_p),
            repetition_penalty=_number(body, "repetition_penalty", repetition_penalty),
            seed=random.randrange(2**31) if seed is None else seed, no_copy=_number(body, "no_copy", None, whole=True))
    except UserError as e:
        raise ApiError(400, as_field(e)) from None
    n = _number(body, "n", 1, whole=True)
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"'n' must be from 1 to {MAX_N}, got {n}.", "n")
    try:  # choice i draws with seed + i
        dataclasses.replace(settings, seed=settings.seed + n - 1)
    except UserError as e:
        raise ApiError(400, f"choice {n - 1} would draw with seed {settings.seed + n - 1}: {as_field(e)}", "seed") from None
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "'stop' must be a string or a list of strings.", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", "stream")
    options = body.get("stream_options") or {}
    return Asked(settings, n, stream, stops, bool(isinstance(options, dict) and options.get("include_usage")))


def prompt_of(body: dict) -> str:
    """A completions request's prompt: one string (a list holding one string is the same)."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be one string (send several prompts as several requests).", "prompt")
    return prompt


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI's content parts: the text ones are the message
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"messages[{i}]: only text content parts are supported.", "messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{i}].content must be a string.", "messages")
    return content.strip()


def chat_text(messages: object, frame: Frame) -> str:
    """The conversation as the voice's corpus writes dialogue (chat's frame, as `bladegpt chat` lays it),
    ending where the voice's turn opens. System messages come first as a paragraph of plain text: no
    frame has a narrator's slot, so the voice reads them as the text's opening."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.", "messages")
    opening, talk = "", ""
    for i, message in enumerate(messages):
        role, content = message.get("role"), _content(message, i)
        if role in ("system", "developer"):
            if talk:
                raise ApiError(400, f"messages[{i}]: a system message must come before the conversation.", "messages")
            opening += f"{content}\n\n"
        elif role == "user":
            talk += frame.user(content)
        elif role == "assistant":
            talk += f"{frame.turn()}{content}{frame.after()}"
        else:
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant, got {role!r}.", "messages")
    return opening + talk + frame.turn()
