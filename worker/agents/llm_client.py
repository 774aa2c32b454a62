"""One chat-completion request to an OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, LM Studio).

Shared by the ``llm`` agent and the ``llm`` evolver. What can go wrong is sorted by who can fix it:

- the server or the network (a timeout, a refused connection, 408/429/5xx): :class:`AgentInfrastructureError`
  with the server's ``Retry-After`` — Celery retries the task, no ReAct iteration is spent;
- the operator (401/403: the key; 404: the model or the base URL; a base URL that is not http(s)):
  :class:`AgentConfigurationError` — the run ends at once with the message as its error;
- the request itself (another 4xx, e.g. an input over the model's context) or an unreadable answer:
  :class:`LlmResponseError` — an ordinary failed attempt.

The API key (``WRE_LLM_API_KEY``) goes into the ``Authorization`` header of the request and nowhere else:
every message raised from here passes through :func:`redact`, because servers and proxies may echo it.
"""

from __future__ import annotations

import email.utils
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from worker.settings import Settings

from .base import AgentConfigurationError, AgentInfrastructureError
from .isolation import trim

CHAT_PATH = "/chat/completions"
JSON_RESPONSE_FORMAT = {"type": "json_object"}
# Statuses that say "not now": retry later, without spending a ReAct iteration.
RETRY_LATER_STATUSES = frozenset({408, 425, 429})
FIRST_SERVER_ERROR = 500
REFUSED_KEY_STATUSES = frozenset({401, 403})
NOT_FOUND_STATUS = 404
BAD_REQUEST_STATUS = 400
# A Retry-After beyond this is capped: a task parked for hours holds its message and its run hostage.
MAX_RETRY_AFTER_SECONDS = 300.0
MAX_SERVER_MESSAGE_CHARS = 300
REDACTED = "[redacted]"
# Servers echo keys partly masked ("sk-abc***xyz"); any run of this many key characters is redacted too.
KEY_FRAGMENT_CHARS = 6
TOKEN_PATTERN = re.compile(r"[^\s\"'`,;:()\[\]{}<>]+")
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")

# (base URL, model) pairs whose server refused ``response_format``: ask them for JSON in words only, and
# spare them the refused request on every later attempt of this process.
_NO_RESPONSE_FORMAT: set[tuple[str, str]] = set()
_NO_RESPONSE_FORMAT_LOCK = threading.Lock()
_CLIENT: httpx.Client | None = None
_CLIENT_LOCK = threading.Lock()


class LlmResponseError(RuntimeError):
    """The server refused this request (a 4xx other than the key's or the model's) or answered nonsense.

    The attempt fails with this as its error, as it would for any other output that does not do the job.
    """


@dataclass(frozen=True)
class Completion:
    """The model's answer.

    :param text: the assistant message's text ("" when the server sent none).
    :param usage: ``{"prompt_tokens", "completion_tokens", "total_tokens"}``, or None if the server sent none.
    :param json_mode: whether the server was asked for JSON with ``response_format``.
    """

    text: str
    usage: dict[str, int] | None
    json_mode: bool


def redact(text: str, secret: str) -> str:
    """``text`` without ``secret`` or any run of :data:`KEY_FRAGMENT_CHARS` of its characters.

    :param text: what may be shown (an error message, a server's answer).
    :param secret: the API key; nothing is redacted when it is empty.
    """
    if not secret:
        return text
    text = text.replace(secret, REDACTED)
    if len(secret) < KEY_FRAGMENT_CHARS:
        return text
    fragments = {secret[i : i + KEY_FRAGMENT_CHARS] for i in range(len(secret) - KEY_FRAGMENT_CHARS + 1)}

    def scrub(match: re.Match[str]) -> str:
        token = match.group(0)
        windows = (token[i : i + KEY_FRAGMENT_CHARS] for i in range(len(token) - KEY_FRAGMENT_CHARS + 1))
        return REDACTED if any(window in fragments for window in windows) else token

    return TOKEN_PATTERN.sub(scrub, text)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date), capped; None if absent or garbage.

    :param value: the header's value.
    :param now: the current time, for an HTTP date (the clock when None).
    """
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, seconds))


def chat_url(base_url: str) -> str:
    """The chat-completions endpoint under a base URL (``http://host:port/v1`` → ``.../v1/chat/completions``).

    :param base_url: ``WRE_LLM_BASE_URL``.
    """
    return base_url.rstrip("/") + CHAT_PATH


def _client() -> httpx.Client:
    # One pooled client per process: connections to the server are reused across attempts and threads.
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            _CLIENT = httpx.Client()
        return _CLIENT


def _server_message(response: httpx.Response) -> str:
    """The server's own explanation: ``error.message`` of an OpenAI-style error body, else the text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message: object = None
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or body.get("message") or body.get("detail")
    text = str(message) if message else response.text
    return trim(" ".join(text.split()), MAX_SERVER_MESSAGE_CHARS) or "(no message)"


def _raise_for_status(response: httpx.Response, url: str, model: str) -> None:
    """Turn a non-2xx answer into the error that says who can fix it (messages are redacted by the caller)."""
    status = response.status_code
    if status < 300:
        return
    message = _server_message(response)
    if status in RETRY_LATER_STATUSES or status >= FIRST_SERVER_ERROR:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        wait = f"; retry after {retry_after:g}s" if retry_after is not None else ""
        raise AgentInfrastructureError(
            f"LLM server at {url} answered {status}{wait}: {message}", retry_after=retry_after
        )
    if status in REFUSED_KEY_STATUSES:
        raise AgentConfigurationError(
            f"LLM server refused the API key ({status}) at {url}: {message} "
            "(set WRE_LLM_API_KEY to a key this server accepts)"
        )
    if status == NOT_FOUND_STATUS:
        raise AgentConfigurationError(
            f"LLM server answered 404 for model {model!r} at {url}: {message} "
            "(check WRE_LLM_MODEL or the skill's llm.model, and that WRE_LLM_BASE_URL ends in /v1)"
        )
    raise LlmResponseError(f"LLM server refused the request ({status}): {message}")


def _usage(body: dict[str, Any]) -> dict[str, int] | None:
    raw = body.get("usage")
    if not isinstance(raw, dict):
        return None
    figures = {
        name: int(raw[name])
        for name in USAGE_FIELDS
        if isinstance(raw.get(name), int | float) and not isinstance(raw.get(name), bool)
    }
    if not figures:
        return None
    figures.setdefault("prompt_tokens", 0)
    figures.setdefault("completion_tokens", 0)
    figures.setdefault("total_tokens", figures["prompt_tokens"] + figures["completion_tokens"])
    return figures


def _text(body: object) -> str:
    """The first choice's message text; content given as a list of parts is joined."""
    if not isinstance(body, dict):
        raise LlmResponseError(f"LLM server answered {type(body).__name__}, not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LlmResponseError("LLM server answered without choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        content = "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return content if isinstance(content, str) else ""


def _post(
    url: str, payload: dict[str, Any], headers: dict[str, str], timeout: float, model: str
) -> httpx.Response:
    try:
        return _client().post(url, json=payload, headers=headers, timeout=timeout)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
        raise AgentConfigurationError(
            f"WRE_LLM_BASE_URL gives {url!r}, not an http(s) URL: {error}"
        ) from None
    except httpx.TimeoutException:
        raise AgentInfrastructureError(
            f"LLM server at {url} did not answer within {timeout:.1f}s (model {model!r})"
        ) from None
    except httpx.TransportError as error:
        raise AgentInfrastructureError(f"cannot reach the LLM server at {url}: {error}") from None


def _refuses_response_format(response: httpx.Response) -> bool:
    return response.status_code == BAD_REQUEST_STATUS and "response_format" in response.text


def chat_completion(
    settings: Settings,
    messages: list[dict[str, str]],
    *,
    model: str,
    deadline: float,
    temperature: float | None = None,
    max_tokens: int | None = None,
    json_mode: bool = False,
    seed: int | None = None,
) -> Completion:
    """Ask the model once (twice if the server refuses ``response_format``: then again without it).

    :param settings: base URL and API key (``llm_base_url``, ``llm_api_key``).
    :param messages: the chat messages (``role``, ``content``).
    :param model: the model's name.
    :param deadline: ``time.monotonic()`` by which the answer must be in; the request times out then.
    :param temperature: sampling temperature, or None for the server's default.
    :param max_tokens: most tokens to generate, or None for the server's default.
    :param json_mode: ask for a JSON object with ``response_format`` where the server supports it.
    :param seed: the sampling seed (OpenAI's ``seed``), or None; servers that do not know it ignore it.
    :raises AgentInfrastructureError: timeout, connection error, 408/425/429 or 5xx (``retry_after`` set
        from the server's Retry-After).
    :raises AgentConfigurationError: 401/403, 404, or a base URL that is not http(s).
    :raises LlmResponseError: another refusal, or an answer that is not a chat completion.
    """
    secret = settings.llm_api_key.get_secret_value()
    # Every message is redacted on its way out: the server's words are quoted, and servers echo keys.
    clean: Exception
    try:
        return _chat_completion(
            settings.llm_base_url, secret, messages, model, deadline, temperature, max_tokens, json_mode, seed
        )
    except AgentInfrastructureError as error:
        clean = AgentInfrastructureError(redact(str(error), secret), retry_after=error.retry_after)
    except AgentConfigurationError as error:
        clean = AgentConfigurationError(redact(str(error), secret))
    except LlmResponseError as error:
        clean = LlmResponseError(redact(str(error), secret))
    # Raised outside the handlers, so the unredacted original is not even attached as __context__.
    raise clean


def _chat_completion(
    base_url: str,
    secret: str,
    messages: list[dict[str, str]],
    model: str,
    deadline: float,
    temperature: float | None,
    max_tokens: int | None,
    json_mode: bool,
    seed: int | None = None,
) -> Completion:
    url = chat_url(base_url)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    payload: dict[str, Any] = {"model": model, "messages": messages}
    if temperature is not None:
        payload["temperature"] = temperature
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    if seed is not None:
        payload["seed"] = seed
    with _NO_RESPONSE_FORMAT_LOCK:
        use_format = json_mode and (base_url, model) not in _NO_RESPONSE_FORMAT
    if use_format:
        payload["response_format"] = JSON_RESPONSE_FORMAT
    response = _post(url, payload, headers, _remaining(deadline, url, model), model)
    if use_format and _refuses_response_format(response):
        with _NO_RESPONSE_FORMAT_LOCK:
            _NO_RESPONSE_FORMAT.add((base_url, model))
        use_format = False
        del payload["response_format"]
        response = _post(url, payload, headers, _remaining(deadline, url, model), model)
    _raise_for_status(response, url, model)
    try:
        body = response.json()
    except ValueError:
        raise LlmResponseError(
            f"LLM server answered {response.status_code} with a body that is not JSON"
        ) from None
    return Completion(_text(body), _usage(body), use_format)


def _remaining(deadline: float, url: str, model: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise AgentInfrastructureError(f"no time left to ask the LLM server at {url} (model {model!r})")
    return remaining
