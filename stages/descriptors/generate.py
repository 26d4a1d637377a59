"""The paper's three-step descriptor protocol (Appendix C.1), and writing versioned bank files.

Step 1 asks for spurious concepts (skipped when they are given); step 2 asks each concept for 20
bias keywords, `runs` times (distinct requests: the run index is in the cache key and in the
seed), and keeps the deduplicated union; step 3 asks for one prompt-like descriptor per keyword,
`batch_size` keywords per request, and stores each as a template with one ``{}`` for the base
caption. Every request goes through the on-disk cache, so a failed run is resumed by rerunning it.

Structured output: each request asks for JSON ``{"items": [...]}`` through OpenAI's
``response_format`` (a JSON schema: a list of strings, and in step 3 each with exactly one ``{}``),
which llama.cpp, vLLM and Ollama turn into a grammar, so even a small local model answers in
shape. A server that refuses ``json_schema`` is asked with llama-cpp-python's ``json_object`` +
schema, and one that refuses both with the paper's numbered-list protocol (the prompts are the
paper's in every case). A malformed answer is asked again with a fresh seed, up to `attempts`
times, before the step fails.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any

from stages.descriptors.bank import (
    BankError,
    ConceptEntry,
    DescriptorBank,
    GeneratorInfo,
    check_template,
    load_bank,
    write_bank,
)
from stages.descriptors.llm import (
    Answer,
    CachedChat,
    ChatBackend,
    LLMError,
    OpenAIBackend,
    ResponseFormatRejected,
    Sampling,
    TransformersBackend,
)
from stages.descriptors.parse import (
    TEMPLATE_SLOT,
    ParseError,
    dedupe,
    parse_concepts,
    parse_descriptors,
    parse_keywords,
    to_template,
)
from stages.descriptors.prompts import (
    KEYWORDS_PER_RUN,
    PROMPTS,
    STEP_CONCEPTS,
    STEP_DESCRIPTORS,
    STEP_KEYWORDS,
    STEP_NUMBERS,
    concepts_prompt,
    descriptors_prompt,
    keywords_prompt,
)

log = logging.getLogger(__name__)

BACKENDS = ("openai", "transformers")
DEFAULT_OPENAI_MODEL = "gpt-3.5-turbo"
DEFAULT_CACHE_DIR = Path(".cache/llm")
_VERSIONED_NAME = re.compile(r"^v(\d+)\.json$")
PROTOCOLS = ("json", "numbered")
STRUCTURED_SYSTEM = (
    'Reply with JSON only: {"items": ["...", ...]}, one string per answer item. '
    "Where an answer contains the class, write {} in its place."
)
"""The system message of a structured request (the user message is the paper's prompt, verbatim)."""


@dataclass(frozen=True)
class GenerateConfig:
    """Everything that decides a generated bank (and how hard to try the endpoint)."""

    backend: str
    model: str
    base_url: str | None = None
    concepts: tuple[str, ...] | None = None
    runs: int = 3
    temperature: float = 1.0
    seed: int | None = None
    max_tokens: int = 512
    batch_size: int = 10
    cache_dir: Path = DEFAULT_CACHE_DIR
    timeout: float = 60.0
    max_retries: int = 5
    attempts: int = 3
    protocol: str = "json"


def items_schema(step: str, max_items: int | None) -> dict[str, Any]:
    """JSON schema of an answer: ``{"items": [string, ...]}``; step 3's strings hold exactly one ``{}``."""
    item: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 60}
    least = 1
    if step == STEP_DESCRIPTORS:  # one template per keyword; a JSON string without quotes, backslashes, newlines
        item = {"type": "string", "pattern": r'^[^{}"\\\n]{0,100}\{\}[^{}"\\\n]{0,100}$'}
        least = max_items or 1
    items = {"type": "array", "items": item, "minItems": least, **({"maxItems": max_items} if max_items else {})}
    return {"type": "object", "properties": {"items": items}, "required": ["items"], "additionalProperties": False}


def response_formats(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The structured-output requests tried in order: OpenAI's json_schema, then llama-cpp-python's json_object."""
    return [{"type": "json_schema", "json_schema": {"name": "items", "schema": schema}},
            {"type": "json_object", "schema": schema}]


def make_backend(config: GenerateConfig) -> ChatBackend:
    """The chat backend named by `config.backend`."""
    if config.backend == "openai":
        return OpenAIBackend(config.model, config.base_url, timeout=config.timeout, max_retries=config.max_retries)
    if config.backend == "transformers":
        if config.base_url:
            raise LLMError("--base-url is for the openai backend; the transformers backend runs the model locally")
        return TransformersBackend(config.model)
    raise LLMError(f"unknown backend {config.backend!r}; choose one of {BACKENDS}")


class _Run:
    """One generation: the cached chat plus the transcript of every answer used."""

    def __init__(self, config: GenerateConfig, chat: CachedChat) -> None:
        self.config = config
        self.chat = chat
        self.transcript: list[dict[str, Any]] = []
        # How many structured formats the endpoint has refused so far (2: numbered lists only).
        self.refused = 0 if config.protocol == "json" and chat.backend.structured else 2

    def ask(self, step: str, concept: str | None, run: int, prompt: str, parse: Callable[[str], list[str]],
            max_items: int | None, **extra: Any) -> list[str]:
        """Ask `prompt` (cached) until `parse` accepts the answer, at most `attempts` times; record every answer."""
        where = f"step {STEP_NUMBERS[step]} ({step})" + (f", concept {concept!r}" if concept else "")
        formats = [*response_formats(items_schema(step, max_items)), None]
        attempt = 0
        while True:
            answer, response_format = self._answer(where, run, attempt, prompt, formats)
            self.transcript.append(
                {
                    "step": step,
                    "concept": concept,
                    "run": run,
                    **extra,
                    **({"attempt": attempt} if attempt else {}),
                    "protocol": response_format["type"] if response_format else "numbered",
                    "prompt": prompt,
                    "response": answer.completion.text,
                    "response_model": answer.completion.model,
                    "finish_reason": answer.completion.finish_reason,
                    "cache_key": answer.key,
                }
            )
            try:
                return parse(answer.completion.text)
            except ParseError as error:
                if attempt + 1 == self.config.attempts:
                    raise ParseError(
                        error.step, error.concept,
                        f"{error.detail} (attempt {attempt + 1} of {self.config.attempts}). The answer is cached as "
                        f"{self.chat.path(answer.key)}: delete that file (or change --seed) to ask again",
                    ) from None
                log.warning("%s, run %d: malformed answer (%s); asking again with a fresh seed (attempt %d/%d)",
                            where, run + 1, error.detail[:160], attempt + 2, self.config.attempts)
                attempt += 1

    def _answer(self, where: str, run: int, attempt: int, prompt: str,
                formats: list[dict[str, Any] | None]) -> tuple[Answer, dict[str, Any] | None]:
        """A cached answer in any format, else a request in the first format the endpoint has not refused."""
        def messages(response_format: dict[str, Any] | None) -> list[dict[str, str]]:
            user = [{"role": "user", "content": prompt}]
            return user if response_format is None else [{"role": "system", "content": STRUCTURED_SYSTEM}, *user]

        for response_format in formats[self.refused:]:
            cached = self.chat.cached(messages(response_format), run, attempt, response_format)
            if cached is not None:
                log.info("%s, run %d: cached", where, run + 1)
                return cached, response_format
        while True:
            response_format = formats[self.refused]
            try:
                answer = self.chat.ask(messages(response_format), run, attempt, response_format)
            except ResponseFormatRejected as error:
                self.refused += 1
                fallback = formats[self.refused]
                log.warning("%s; asking %s instead", error,
                            f"with response_format {fallback['type']}" if fallback else "for a numbered list")
                continue
            except LLMError as error:
                raise LLMError(
                    f"{where}, run {run + 1}: {error}. Answers received so far are cached in "
                    f"{self.chat.cache_dir}; rerun the same command to resume"
                ) from None
            log.info("%s, run %d: requested", where, run + 1)
            return answer, response_format

    def concepts(self) -> list[str]:
        """Step 1, or the given concepts."""
        if self.config.concepts:
            return list(self.config.concepts)
        return self.ask(STEP_CONCEPTS, None, 0, concepts_prompt(), parse_concepts, None)

    def keywords(self, concept: str) -> list[str]:
        """Step 2: the deduplicated union of `runs` keyword lists."""
        union: list[str] = []
        for run in range(self.config.runs):
            union += self.ask(STEP_KEYWORDS, concept, run, keywords_prompt(concept),
                              lambda text: parse_keywords(text, concept=concept, asked=KEYWORDS_PER_RUN),
                              KEYWORDS_PER_RUN)
        return dedupe(union, step=STEP_KEYWORDS, concept=concept)

    def descriptors(self, concept: str, keywords: list[str]) -> list[str]:
        """Step 3: templates for `keywords`, `batch_size` keywords per request."""
        templates: list[str] = []
        size = self.config.batch_size
        for start in range(0, len(keywords), size):
            batch = keywords[start : start + size]
            templates += self.ask(STEP_DESCRIPTORS, concept, 0, descriptors_prompt(batch),
                                  lambda text, n=len(batch): parse_descriptors(text, concept=concept, asked=n),
                                  len(batch), keywords=batch)
        return dedupe(templates, step=STEP_DESCRIPTORS, concept=concept)


def generate_bank(config: GenerateConfig, backend: ChatBackend | None = None) -> tuple[DescriptorBank, CachedChat]:
    """Run the protocol; return the (unstamped) bank and the chat, whose counters tell the cost."""
    if config.runs < 1 or config.batch_size < 1 or config.attempts < 1:
        raise ValueError("runs, batch_size and attempts must be at least 1")
    if config.protocol not in PROTOCOLS:
        raise LLMError(f"unknown protocol {config.protocol!r}; choose one of {PROTOCOLS}")
    backend = backend or make_backend(config)
    chat = CachedChat(backend, Sampling(config.temperature, config.max_tokens), config.seed, config.cache_dir)
    protocol = _Run(config, chat)
    entries = {}
    for concept in protocol.concepts():
        keywords = protocol.keywords(concept)
        entries[concept] = ConceptEntry(keywords=keywords, descriptors=protocol.descriptors(concept, keywords))
    bank = DescriptorBank(
        source=f"generated with the StarFT Appendix C.1 protocol by {backend.name}:{backend.model}",
        generator=GeneratorInfo(
            backend=backend.name,
            model=backend.model,
            base_url=backend.base_url,
            temperature=config.temperature,
            runs_per_concept=config.runs,
            seed=config.seed,
            max_tokens=config.max_tokens,
            batch_size=config.batch_size,
        ),
        prompts=PROMPTS,
        concepts=entries,
        raw_responses=protocol.transcript,
        created_at=_now(),
    )
    return bank, chat


def next_version_path(path: Path) -> Path | None:
    """``v<N+1>.json`` beside `path` (N the highest existing version) if `path` is ``v<N>.json``."""
    if not _VERSIONED_NAME.match(path.name):
        return None
    versions = [int(m.group(1)) for p in path.parent.iterdir() if (m := _VERSIONED_NAME.match(p.name))]
    return path.parent / f"v{max(versions) + 1}.json"


def write_versioned(path: Path, bank: DescriptorBank) -> tuple[DescriptorBank, bool]:
    """Write `bank` unless `path` already holds it; return (the bank on disk, whether written).

    Banks are immutable: different content over an existing file is refused with a `BankError`
    that suggests the next free version.
    """
    path = Path(path)
    if path.exists():
        try:
            existing = load_bank(path)
        except BankError as error:
            raise BankError(f"refusing to overwrite {path}: {error}") from None
        if existing.sha256 == bank.canonical_sha256():
            return existing, False
        suggestion = next_version_path(path)
        hint = f"write it to {suggestion} instead" if suggestion else "write it to another path"
        raise BankError(
            f"{path} already holds a different bank (sha256 {existing.sha256[:12]}..., new content "
            f"{bank.canonical_sha256()[:12]}...); banks are immutable: {hint}"
        )
    return write_bank(path, bank), True


def import_published(source_file: Path, out: Path, *, model: str) -> tuple[DescriptorBank, bool]:
    """Turn a published descriptor list into a bank file (see `write_versioned`).

    `source_file` is JSON ``{"source": "...", "concepts": {"background": [...], ...}}`` whose
    entries are templates with ``{}`` (kept verbatim) or the paper's ``[class] in the snow``
    form (converted by `to_template`).
    """
    try:
        published = json.loads(Path(source_file).read_text(encoding="utf-8"))
        source, listed = published["source"], published["concepts"].items()
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise BankError(f'{source_file}: cannot read a published list {{"source": ..., "concepts": '
                        f"{{concept: [descriptors]}}}} ({type(error).__name__}: {error})") from None
    concepts = {}
    for concept, descriptors in listed:
        templates = []
        for index, descriptor in enumerate(descriptors):
            try:
                templates.append(check_template(descriptor) if TEMPLATE_SLOT in descriptor else to_template(descriptor))
            except ValueError as error:
                raise BankError(f"{source_file}: concepts.{concept}[{index}]: {error}") from None
        concepts[concept] = ConceptEntry(descriptors=templates)
    bank = DescriptorBank(
        source=source,
        generator=GeneratorInfo(backend="published", model=model),
        prompts=PROMPTS,
        concepts=concepts,
        created_at=_now(),
    )
    return write_versioned(out, bank)


def _now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
