"""The paper's three-step descriptor protocol (Appendix C.1), and writing versioned bank files.

Step 1 asks for spurious concepts (skipped when they are given); step 2 asks each concept for 20
bias keywords, `runs` times (distinct requests: the run index is in the cache key and in the
seed), and keeps the deduplicated union; step 3 asks for one prompt-like descriptor per keyword,
`batch_size` keywords per request, and stores each as a template with one ``{}`` for the base
caption. Every request goes through the on-disk cache, so a failed run is resumed by rerunning it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
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
    CachedChat,
    ChatBackend,
    LLMError,
    OpenAIBackend,
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

    def ask(self, step: str, concept: str | None, run: int, prompt: str, **extra: Any) -> str:
        """Ask `prompt` (cached), record the answer in the transcript and return its text."""
        where = f"step {STEP_NUMBERS[step]} ({step})" + (f", concept {concept!r}" if concept else "")
        messages = [{"role": "user", "content": prompt}]
        try:
            answer = self.chat.ask(messages, run)
        except LLMError as error:
            raise LLMError(
                f"{where}, run {run + 1}: {error}. Answers received so far are cached in "
                f"{self.chat.cache_dir}; rerun the same command to resume"
            ) from None
        log.info("%s, run %d: %s", where, run + 1, "cached" if answer.cached else "requested")
        self.transcript.append(
            {
                "step": step,
                "concept": concept,
                "run": run,
                **extra,
                "prompt": prompt,
                "response": answer.completion.text,
                "response_model": answer.completion.model,
                "finish_reason": answer.completion.finish_reason,
                "cache_key": answer.key,
            }
        )
        return answer.completion.text

    def parsed(self, parse_error: ParseError) -> ParseError:
        """`parse_error` plus where its (cached) answer lies and how to ask again."""
        key = self.transcript[-1]["cache_key"]
        return ParseError(
            parse_error.step,
            parse_error.concept,
            f"{parse_error.detail}. The answer is cached as {self.chat.path(key)}: "
            "delete that file (or change --seed) to ask again",
        )

    def concepts(self) -> list[str]:
        """Step 1, or the given concepts."""
        if self.config.concepts:
            return list(self.config.concepts)
        text = self.ask(STEP_CONCEPTS, None, 0, concepts_prompt())
        try:
            return parse_concepts(text)
        except ParseError as error:
            raise self.parsed(error) from None

    def keywords(self, concept: str) -> list[str]:
        """Step 2: the deduplicated union of `runs` keyword lists."""
        union: list[str] = []
        for run in range(self.config.runs):
            text = self.ask(STEP_KEYWORDS, concept, run, keywords_prompt(concept))
            try:
                union += parse_keywords(text, concept=concept, asked=KEYWORDS_PER_RUN)
            except ParseError as error:
                raise self.parsed(error) from None
        return dedupe(union, step=STEP_KEYWORDS, concept=concept)

    def descriptors(self, concept: str, keywords: list[str]) -> list[str]:
        """Step 3: templates for `keywords`, `batch_size` keywords per request."""
        templates: list[str] = []
        size = self.config.batch_size
        for start in range(0, len(keywords), size):
            batch = keywords[start : start + size]
            text = self.ask(STEP_DESCRIPTORS, concept, 0, descriptors_prompt(batch), keywords=batch)
            try:
                templates += parse_descriptors(text, concept=concept, asked=len(batch))
            except ParseError as error:
                raise self.parsed(error) from None
        return dedupe(templates, step=STEP_DESCRIPTORS, concept=concept)


def generate_bank(config: GenerateConfig, backend: ChatBackend | None = None) -> tuple[DescriptorBank, CachedChat]:
    """Run the protocol; return the (unstamped) bank and the chat, whose counters tell the cost."""
    if config.runs < 1 or config.batch_size < 1:
        raise ValueError("runs and batch_size must be at least 1")
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
    published = json.loads(Path(source_file).read_text(encoding="utf-8"))
    concepts = {
        concept: ConceptEntry(
            descriptors=[check_template(d) if TEMPLATE_SLOT in d else to_template(d) for d in descriptors]
        )
        for concept, descriptors in published["concepts"].items()
    }
    bank = DescriptorBank(
        source=published["source"],
        generator=GeneratorInfo(backend="published", model=model),
        prompts=PROMPTS,
        concepts=concepts,
        created_at=_now(),
    )
    return write_versioned(out, bank)


def _now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
