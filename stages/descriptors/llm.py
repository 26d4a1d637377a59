"""Chat backends (an OpenAI-compatible endpoint, or a local transformers model) behind one cache.

Every request goes through `CachedChat`: its answer is stored on disk under the sha256 of
(backend, model, endpoint, messages, response format, sampling parameters, run index, attempt,
seed), so a rerun makes zero requests and an interrupted run resumes where it stopped; another
``--base-url`` (another server, maybe another model behind the same name) is asked afresh. The
API key is never part of a key, a cache file, a bank or a message: error texts are scrubbed of it.

`OpenAIBackend` retries HTTP 429, 5xx, timeouts and connection errors itself (exponential
backoff, or the server's retry-after), printing one line per retry, at most ``max_retries``
times; each attempt waits at most ``timeout`` seconds (60 by default). A server that refuses
``response_format`` raises `ResponseFormatRejected`, so the caller can ask without it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from stages.errors import PipelineError
from stages.io import atomic_write_json, sha256_json

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "sk-no-key-required"
"""Sent to a custom ``--base-url`` when OPENAI_API_KEY is unset: local servers ignore the key."""

Message = dict[str, str]
RETRY_SEED_STRIDE = 1000
"""A malformed answer's retry `a` is sent seed ``seed + run + 1000 a`` (runs stay below 1000)."""


class LLMError(PipelineError, RuntimeError):
    """A request that could not be answered: endpoint unreachable, key rejected, HTTP error."""


class ResponseFormatRejected(LLMError):
    """The endpoint refused the request's ``response_format`` (it has no structured output of that kind)."""


REJECTED_FORMAT_STATUS = (400, 415, 422, 501)
"""HTTP statuses with which servers refuse an unknown ``response_format``; llama-cpp-python answers 500
naming ``response_format`` in its validation error, which counts as a refusal too."""


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters sent with every request (and part of the cache key)."""

    temperature: float
    max_tokens: int


@dataclass(frozen=True)
class Completion:
    """One answer: its text and what the server said about it."""

    text: str
    model: str
    finish_reason: str | None


class ChatBackend(Protocol):
    """Something that answers a list of chat messages."""

    name: str
    model: str
    base_url: str | None
    structured: bool
    """Whether the backend may be sent a ``response_format`` (structured output)."""

    def complete(self, messages: list[Message], sampling: Sampling, seed: int | None,
                 response_format: dict[str, Any] | None = None) -> Completion:
        """Answer `messages` (one request, no cache)."""
        ...


def public_base_url(url: str) -> str:
    """`url` without user name, password, query string or fragment (where tokens hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint through the official `openai` client."""

    name = "openai"
    structured = True

    def __init__(self, model: str, base_url: str | None, *, timeout: float, max_retries: int) -> None:
        """Build the client; `base_url` None means OPENAI_BASE_URL or the OpenAI API."""
        from openai import OpenAI

        url = base_url or os.environ.get(BASE_URL_ENV) or OPENAI_DEFAULT_URL
        self._api_key = os.environ.get(API_KEY_ENV) or None
        if self._api_key is None and public_base_url(url) == OPENAI_DEFAULT_URL:
            raise LLMError(
                f"{API_KEY_ENV} is not set: export it to use {OPENAI_DEFAULT_URL}, "
                "or pass --base-url for a server that needs no key (vLLM, Ollama, llama.cpp)"
            )
        self.model = model
        self.base_url = public_base_url(url)
        if self.base_url != url.rstrip("/"):
            log.warning(
                "ignoring the user name, password, query or fragment in the base URL (not stored, not sent); "
                "put the key in %s",
                API_KEY_ENV,
            )
        self._timeout = timeout
        self._max_retries = max_retries
        self._client = OpenAI(
            api_key=self._api_key or LOCAL_PLACEHOLDER_KEY,
            base_url=self.base_url,
            timeout=timeout,
            max_retries=0,  # retried in `complete`, one visible line per retry
        )

    def complete(self, messages: list[Message], sampling: Sampling, seed: int | None,
                 response_format: dict[str, Any] | None = None) -> Completion:
        """One chat completion, retried on 429/5xx/timeouts; errors become one-line `LLMError`s (key scrubbed)."""
        import openai

        retryable = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                     openai.InternalServerError)
        retry = 0
        while True:
            try:
                return self._complete_once(messages, sampling, seed, response_format)
            except openai.OpenAIError as error:
                if self._refuses_format(error, response_format):
                    message = " ".join(self._scrub(str(error.message)).split())[:200]  # type: ignore[attr-defined]
                    raise ResponseFormatRejected(
                        f"the endpoint {self.base_url} refused response_format {response_format['type']} "  # type: ignore[index]
                        f"(HTTP {error.status_code}: {message})"  # type: ignore[attr-defined]
                    ) from None
                if not isinstance(error, retryable) or retry == self._max_retries:
                    raise self._error(error) from None
                delay = self._retry_delay(error, retry)
                retry += 1
                log.warning("%s; retry %d/%d in %.1f s", self._describe(error), retry, self._max_retries, delay)
                time.sleep(delay)

    @staticmethod
    def _refuses_format(error: Exception, response_format: dict[str, Any] | None) -> bool:
        """Whether `error` is the server refusing the request's response_format (not retried: asked without it)."""
        import openai

        return (response_format is not None and isinstance(error, openai.APIStatusError)
                and (error.status_code in REJECTED_FORMAT_STATUS or "response_format" in str(error.message)))

    @staticmethod
    def _retry_delay(error: Exception, retry: int) -> float:
        """The server's retry-after(-ms) header if any, else 0.5 s doubling per retry (at most 8 s)."""
        response = getattr(error, "response", None)
        headers = response.headers if response is not None else {}
        for header, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            try:
                return min(60.0, float(headers[header]) * scale)
            except (KeyError, ValueError):
                continue
        return min(8.0, 0.5 * 2**retry)

    def _describe(self, error: Exception) -> str:
        """A short reason for a retry line."""
        import openai

        if isinstance(error, openai.APITimeoutError):
            return f"the endpoint {self.base_url} did not answer within {self._timeout:g} s"
        if isinstance(error, openai.APIStatusError):
            return f"the endpoint {self.base_url} answered HTTP {error.status_code}"
        return f"cannot reach the LLM endpoint {self.base_url} ({self._scrub(str(error.__cause__ or error))})"

    def _complete_once(self, messages: list[Message], sampling: Sampling, seed: int | None,
                       response_format: dict[str, Any] | None) -> Completion:
        """One request, no retry; a 200 that is not a chat completion is an `LLMError`."""
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=sampling.temperature,
                max_tokens=sampling.max_tokens,
                **({"seed": seed} if seed is not None else {}),
                **({"response_format": response_format} if response_format is not None else {}),
            )
        except json.JSONDecodeError as error:
            raise LLMError(f"the endpoint {self.base_url} answered HTTP 200 with a body that is not valid JSON "
                           f"({error}); is --base-url the OpenAI-compatible API root (e.g. http://host:8000/v1)?") from None
        if isinstance(response, str):  # the client returns a non-JSON body as text
            preview = " ".join(response.split())[:80]
            raise LLMError(f"the endpoint {self.base_url} answered HTTP 200 with a non-JSON body ({preview!r}); "
                           "is --base-url the OpenAI-compatible API root (e.g. http://host:8000/v1), not a web page?")
        choices = getattr(response, "choices", None)
        if not choices:
            raise LLMError(f"the endpoint {self.base_url} returned no choices (not an OpenAI chat completion)")
        choice = choices[0]
        return Completion(
            text=choice.message.content or "", model=response.model or self.model, finish_reason=choice.finish_reason
        )

    def _error(self, error: Exception) -> LLMError:
        """The one-line `LLMError` for a client error (after any retries)."""
        import openai

        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            state = "is set" if self._api_key else "is not set"
            return LLMError(
                f"the endpoint {self.base_url} rejected the API key (HTTP {error.status_code}); "
                f"check {API_KEY_ENV} (it {state})"
            )
        if isinstance(error, openai.APITimeoutError):
            return LLMError(
                f"the endpoint {self.base_url} did not answer within {self._timeout:g} s "
                f"({self._max_retries} retries); check --base-url / {BASE_URL_ENV} and the server's load, "
                "or raise --timeout"
            )
        if isinstance(error, openai.APIConnectionError):
            cause = self._scrub(str(error.__cause__ or error))
            return LLMError(
                f"cannot reach the LLM endpoint {self.base_url} ({cause}) after {self._max_retries} retries; "
                f"check --base-url / {BASE_URL_ENV}, that the server is running, and {API_KEY_ENV}"
            )
        if isinstance(error, openai.APIStatusError):
            retryable = error.status_code == 429 or error.status_code >= 500
            retried = f" after {self._max_retries} retries" if retryable else ""
            return LLMError(
                f"the endpoint {self.base_url} answered HTTP {error.status_code}{retried}: "
                f"{self._scrub(str(error.message))[:500]}"
            )
        return LLMError(f"the endpoint {self.base_url} failed: {self._scrub(str(error))[:500]}")

    def _scrub(self, text: str) -> str:
        """`text` with the API key (if any) replaced by ``***``."""
        return text.replace(self._api_key, "***") if self._api_key else text


class TransformersBackend:
    """A local chat model (folder, ``.gguf`` file or hub id) run with `transformers` and its chat template.

    The model is loaded on the first request, so a rerun answered from the cache never loads it.
    """

    name = "transformers"
    base_url = None
    structured = False

    def __init__(self, model: str) -> None:
        """Remember the model path or hub id; nothing is loaded yet."""
        self.model = model
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        """Import transformers and load the tokenizer and model once."""
        if self._loaded is None:
            try:
                from transformers import AutoModelForCausalLM, AutoTokenizer
            except ImportError as error:
                raise LLMError(
                    "the transformers backend needs the `transformers` package: pip install transformers"
                ) from error
            source, options = self.model, {}
            if self.model.endswith(".gguf"):  # transformers reads GGUF files (needs `gguf` and `accelerate`)
                source, options = str(Path(self.model).parent), {"gguf_file": Path(self.model).name}
            try:
                tokenizer = AutoTokenizer.from_pretrained(source, **options)
                model = AutoModelForCausalLM.from_pretrained(source, **options)
            except (OSError, ValueError) as error:  # not found / not a model, or a missing optional package
                raise LLMError(f"cannot load the local model {self.model!r}: {error}") from error
            self._loaded = (tokenizer, model.eval())
        return self._loaded

    def complete(self, messages: list[Message], sampling: Sampling, seed: int | None,
                 response_format: dict[str, Any] | None = None) -> Completion:
        """Generate one answer with the model's chat template (greedy when temperature is 0; never structured)."""
        import torch

        tokenizer, model = self._load()
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        if seed is not None:
            torch.manual_seed(seed)
        sample = sampling.temperature > 0
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=sampling.max_tokens,
                do_sample=sample,
                **({"temperature": sampling.temperature} if sample else {}),
            )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        finish = "length" if len(new_tokens) >= sampling.max_tokens else "stop"
        return Completion(
            text=tokenizer.decode(new_tokens, skip_special_tokens=True), model=self.model, finish_reason=finish
        )


@dataclass(frozen=True)
class Answer:
    """A cached or fresh answer with its cache key."""

    completion: Completion
    key: str
    cached: bool


class CachedChat:
    """`backend` behind a content-addressed on-disk cache; counts requests and cache hits."""

    def __init__(self, backend: ChatBackend, sampling: Sampling, seed: int | None, cache_dir: Path) -> None:
        """Answers are stored as ``cache_dir/<key[:2]>/<key>.json``."""
        self.backend = backend
        self.sampling = sampling
        self.seed = seed
        self.cache_dir = Path(cache_dir)
        self.requests = 0
        self.hits = 0

    def request_seed(self, run: int, attempt: int = 0) -> int | None:
        """The seed sent with run `run`: ``seed + run`` (+ 1000 per retry of a malformed answer), so all differ."""
        return None if self.seed is None else self.seed + run + RETRY_SEED_STRIDE * attempt

    def key(self, messages: list[Message], run: int, attempt: int = 0,
            response_format: dict[str, Any] | None = None) -> str:
        """Cache key of one request."""
        return sha256_json(self._key_fields(messages, run, attempt, response_format))

    def _key_fields(self, messages: list[Message], run: int, attempt: int,
                    response_format: dict[str, Any] | None) -> dict[str, Any]:
        """What identifies a request: the endpoint too (its public address), never the API key."""
        fields = {
            "backend": self.backend.name,
            "model": self.backend.model,
            "base_url": self.backend.base_url,
            "messages": messages,
            "parameters": asdict(self.sampling),
            "run": run,
            "seed": self.seed,
        }
        if attempt:
            fields["attempt"] = attempt
        if response_format is not None:
            fields["response_format"] = response_format
        return fields

    def path(self, key: str) -> Path:
        """Where the answer with cache key `key` is stored."""
        return self.cache_dir / key[:2] / f"{key}.json"

    def cached(self, messages: list[Message], run: int, attempt: int = 0,
               response_format: dict[str, Any] | None = None) -> Answer | None:
        """The cached answer to this request, or None (no request is made)."""
        key = self.key(messages, run, attempt, response_format)
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            completion = Completion(**stored["response"])
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring unreadable cache entry %s", path)
            return None
        self.hits += 1
        return Answer(completion, key, cached=True)

    def ask(self, messages: list[Message], run: int, attempt: int = 0,
            response_format: dict[str, Any] | None = None) -> Answer:
        """The cached answer to `messages` for (run, attempt, response format), or a fresh one (then cached)."""
        answer = self.cached(messages, run, attempt, response_format)
        if answer is not None:
            return answer
        self.requests += 1
        completion = self.backend.complete(messages, self.sampling, self.request_seed(run, attempt), response_format)
        key = self.key(messages, run, attempt, response_format)
        request = self._key_fields(messages, run, attempt, response_format)
        atomic_write_json(self.path(key), {"request": request, "response": asdict(completion)})
        return Answer(completion, key, cached=False)
