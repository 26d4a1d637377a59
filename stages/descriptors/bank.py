"""The descriptor bank file: a versioned JSON list of spurious-descriptor templates per concept.

A bank is what training reads to build spurious captions (paper Sec. 3.2): each descriptor is a
template with exactly one ``{}`` that receives the base caption ``"a photo of a <class>"``
(``"{} in the snow."`` -> ``"a photo of a husky in the snow."``), as the official code does.
The ``sha256`` inside the file is computed over the canonical content (everything but
``sha256`` and ``created_at``), so a run can record exactly which bank it used and a bank edited
by hand is detected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages.errors import PipelineError, validation_summary
from stages.io import atomic_write_json, sha256_json

SCHEMA_VERSION = 1
ALL_CONCEPTS = "all"


class BankError(PipelineError, ValueError):
    """A bank file that is missing, malformed, or does not match its own checksum."""


class GeneratorInfo(BaseModel):
    """How the bank was produced; never holds credentials."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(description="openai | transformers | published (copied from a paper or code release)")
    model: str
    base_url: str | None = None
    temperature: float | None = None
    runs_per_concept: int | None = None
    seed: int | None = None
    max_tokens: int | None = None
    batch_size: int | None = Field(default=None, description="keywords per step-3 request")


class ConceptEntry(BaseModel):
    """Keywords and descriptor templates of one spurious concept."""

    model_config = ConfigDict(extra="forbid")

    keywords: list[str] = Field(default_factory=list)
    descriptors: list[str]

    @field_validator("descriptors")
    @classmethod
    def _one_slot_each(cls, descriptors: list[str]) -> list[str]:
        if not descriptors:
            raise ValueError("a concept needs at least one descriptor")
        for descriptor in descriptors:
            check_template(descriptor)
        if len(set(descriptors)) != len(descriptors):
            raise ValueError("descriptors must be unique")
        return descriptors


class DescriptorBank(BaseModel):
    """The whole bank file (``descriptor_banks/<model-slug>/v<N>.json``)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    source: str = Field(description="where the descriptors come from, in words")
    generator: GeneratorInfo
    prompts: dict[str, str] = Field(default_factory=dict)
    concepts: dict[str, ConceptEntry]
    raw_responses: list[dict[str, Any]] = Field(default_factory=list)
    created_at: str
    sha256: str = ""

    def canonical_sha256(self) -> str:
        """sha256 of the canonical content: all fields except ``sha256`` and ``created_at``."""
        return sha256_json(self.model_dump(mode="json", exclude={"sha256", "created_at"}))

    def descriptors(self, concept: str) -> list[str]:
        """Descriptor templates of `concept`; ``"all"`` is the ordered union of every concept."""
        if concept == ALL_CONCEPTS:
            union: dict[str, None] = {}
            for entry in self.concepts.values():
                union.update(dict.fromkeys(entry.descriptors))
            return list(union)
        if concept not in self.concepts:
            raise BankError(f"concept {concept!r} is not in this bank; it has {sorted(self.concepts)} (or 'all')")
        return list(self.concepts[concept].descriptors)


def check_template(descriptor: str) -> str:
    """Raise unless `descriptor` has exactly one ``{}`` slot and no other braces."""
    if descriptor.count("{}") != 1 or descriptor.count("{") != 1 or descriptor.count("}") != 1:
        raise ValueError(
            f"descriptor {descriptor!r} must contain exactly one '{{}}' slot for the base caption "
            "'a photo of a <class>' (e.g. '{} in the snow.')"
        )
    return descriptor


def load_bank(path: Path) -> DescriptorBank:
    """Read and validate a bank file; the stored sha256 must match its content."""
    path = Path(path)
    if not path.is_file():
        raise BankError(
            f"descriptor bank {path} does not exist; use a shipped bank "
            "(descriptor_banks/official-code.json, descriptor_banks/paper-table15.json) "
            "or generate one with `python -m stages.descriptors generate`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BankError(f"descriptor bank {path} is not JSON ({error}); a bank is the JSON file "
                        "`python -m stages.descriptors generate` writes") from None
    if not isinstance(raw, dict) or "concepts" not in raw:
        raise BankError(f"{path} is not a descriptor bank (no \"concepts\" mapping); give a bank file, e.g. "
                        "descriptor_banks/official-code.json, or write one with `python -m stages.descriptors generate`")
    try:
        bank = DescriptorBank.model_validate(raw)
    except ValidationError as error:
        raise BankError(f"descriptor bank {path} is malformed: {validation_summary(error)}; regenerate it, or fix the "
                        "fields named") from None
    expected = bank.canonical_sha256()
    if bank.sha256 != expected:
        raise BankError(
            f"descriptor bank {path}: stored sha256 {bank.sha256[:12]}... does not match its content "
            f"({expected[:12]}...); the file was edited by hand. Regenerate it, or write it with "
            "stages.descriptors.bank.write_bank so the checksum is recomputed"
        )
    return bank


def write_bank(path: Path, bank: DescriptorBank) -> DescriptorBank:
    """Stamp the canonical sha256 into `bank` and write it atomically; return the stamped bank."""
    stamped = bank.model_copy(update={"sha256": bank.canonical_sha256()})
    atomic_write_json(Path(path), stamped.model_dump(mode="json"))
    return stamped
