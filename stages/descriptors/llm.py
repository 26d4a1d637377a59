"""Chat backends (an OpenAI-compatible endpoint, or a local transformers model) behind one cache.

Every request goes through `CachedChat`: its answer is stored on disk under the sha256 of
(backend, model, messages, sampling parameters, run index, seed), so a rerun makes zero requests
and an interrupted run resumes where it stopped. The endpoint's address is not part of the key:
the same model behind another URL gives the same answers. The API key is never part of a key, a
cache file, a bank or a message: error texts are scrubbed of it.

Retries on HTTP 429, 5xx and timeouts are the `openai` client's own (exponential backoff, bounded
by ``max_retries`` and ``timeout``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from stages.io import atomic_write_json, sha256_json

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "sk-no-key-required"
"""Sent to a custom ``--base-url`` when OPENAI_API_KEY is unset: local servers ignore the key."""

Message = dict[str, str]


class LLMError(RuntimeError):
    """A request that could not be answered: endpoint unreachable, key rejected, HTTP error."""


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

    def complete(self, messages: list[Message], sampling: Sampling, seed: int | None) -> Completion:
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
            max_retries=max_retries,
        )

    def complete(self, messages: list[Message], sampling: Sampling, seed: int | None) -> Completion:
        """One chat completion; client errors become `LLMError` with the key scrubbed."""
        import openai

        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=sampling.temperature,
                max_tokens=sampling.max_tokens,
                **({"seed": seed} if seed is not None else {}),
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            state = "is set" if self._api_key else "is not set"
            raise LLMError(
                f"the endpoint {self.base_url} rejected the API key (HTTP {error.status_code}); "
                f"check {API_KEY_ENV} (it {state})"
            ) from None
        except openai.APITimeoutError:
            raise LLMError(
                f"the endpoint {self.base_url} did not answer within {self._timeout:g} s "
                f"({self._max_retries} retries); check --base-url / {BASE_URL_ENV} and the server's load"
            ) from None
        except openai.APIConnectionError as error:
            cause = self._scrub(str(error.__cause__ or error))
            raise LLMError(
                f"cannot reach the LLM endpoint {self.base_url} ({cause}) after {self._max_retries} retries; "
                f"check --base-url / {BASE_URL_ENV}, that the server is running, and {API_KEY_ENV}"
            ) from None
        except openai.APIStatusError as error:
            retryable = error.status_code == 429 or error.status_code >= 500
            retried = f" after {self._max_retries} retries" if retryable else ""
            raise LLMError(
                f"the endpoint {self.base_url} answered HTTP {error.status_code}{retried}: "
                f"{self._scrub(str(error.message))[:500]}"
            ) from None
        if not response.choices:
            raise LLMError(f"the endpoint {self.base_url} returned no choices")
        choice = response.choices[0]
        return Completion(
            text=choice.message.content or "", model=response.model or self.model, finish_reason=choice.finish_reason
        )

    def _scrub(self, text: str) -> str:
        """`text` with the API key (if any) replaced by ``***``."""
        return text.replace(self._api_key, "***") if self._api_key else text


class TransformersBackend:
    """A local chat model (folder, ``.gguf`` file or hub id) run with `transformers` and its chat template.

    The model is loaded on the first request, so a rerun answered from the cache never loads it.
    """

    name = "transformers"
    base_url = None

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

    def complete(self, messages: list[Message], sampling: Sampling, seed: int | None) -> Completion:
        """Generate one answer with the model's chat template (greedy when temperature is 0)."""
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

    def request_seed(self, run: int) -> int | None:
        """The seed sent with run `run`: ``seed + run``, so repeated runs are distinct requests."""
        return None if self.seed is None else self.seed + run

    def key(self, messages: list[Message], run: int) -> str:
        """Cache key of one request."""
        return sha256_json(self._key_fields(messages, run))

    def _key_fields(self, messages: list[Message], run: int) -> dict[str, Any]:
        """What identifies a request (never the endpoint's address or the API key)."""
        return {
            "backend": self.backend.name,
            "model": self.backend.model,
            "messages": messages,
            "parameters": asdict(self.sampling),
            "run": run,
            "seed": self.seed,
        }

    def path(self, key: str) -> Path:
        """Where the answer with cache key `key` is stored."""
        return self.cache_dir / key[:2] / f"{key}.json"

    def ask(self, messages: list[Message], run: int) -> Answer:
        """The cached answer to `messages` for run `run`, or a fresh one (then cached)."""
        key = self.key(messages, run)
        path = self.path(key)
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
                completion = Completion(**stored["response"])
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("ignoring unreadable cache entry %s", path)
            else:
                self.hits += 1
                return Answer(completion, key, cached=True)
        self.requests += 1
        completion = self.backend.complete(messages, self.sampling, self.request_seed(run))
        atomic_write_json(path, {"request": self._key_fields(messages, run), "response": asdict(completion)})
        return Answer(completion, key, cached=False)
