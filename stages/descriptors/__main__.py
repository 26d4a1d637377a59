"""Command line: ``python -m stages.descriptors {generate,validate,import-published,compare} ...``.

``generate`` runs the paper's three-step protocol against an LLM and writes a bank (refusing to
put different content over an existing file); ``validate`` checks bank files (schema, template
slots, sha256); ``import-published`` turns a published descriptor list into a bank; ``compare``
measures one bank against another (overlap, nearest neighbours in CLIP text space, coverage). Errors
are printed as one ``error: ...`` line (exit status 2, stages.cli), never with the API key.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from stages.cli import command as cli_command
from stages.descriptors import compare
from stages.descriptors.bank import load_bank
from stages.descriptors.generate import (
    BACKENDS,
    DEFAULT_OPENAI_MODEL,
    PROTOCOLS,
    GenerateConfig,
    generate_bank,
    import_published,
    write_versioned,
)
from stages.descriptors.llm import LLMError

log = logging.getLogger("stages.descriptors")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _default(name: str) -> object:
    """GenerateConfig's default of `name`: the generator owns every default of ``generate`` (flags read it)."""
    return GenerateConfig.__dataclass_fields__[name].default


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the three sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m stages.descriptors", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="generate a bank with an LLM (StarFT Appendix C.1 protocol)")
    gen.add_argument("--backend", choices=BACKENDS, default="openai")
    gen.add_argument(
        "--model", help=f"model name, or a path / hub id for transformers (openai default: {DEFAULT_OPENAI_MODEL})"
    )
    gen.add_argument(
        "--base-url",
        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: OPENAI_BASE_URL or the OpenAI API)",
    )
    gen.add_argument("--concepts", help="comma-separated concepts, e.g. background,texture,resolution (skips step 1)")
    gen.add_argument("--runs", type=_positive_int, default=_default("runs"),
                     help=f"keyword runs per concept (default {_default('runs')}, as the paper)")
    gen.add_argument("--temperature", type=float, default=_default("temperature"),
                     help=f"sampling temperature (default {_default('temperature')}, the API's own)")
    gen.add_argument("--seed", type=int, default=_default("seed"), help="request seed; run r sends seed + r")
    gen.add_argument("--max-tokens", type=_positive_int, default=_default("max_tokens"))
    gen.add_argument("--batch-size", type=_positive_int, default=_default("batch_size"), help="keywords per step-3 request")
    gen.add_argument("--cache-dir", type=Path, default=_default("cache_dir"),
                     help=f"answer cache (default {_default('cache_dir')})")
    gen.add_argument("--timeout", type=float, default=_default("timeout"),
                     help=f"seconds per request attempt (default {_default('timeout'):g})")
    gen.add_argument("--max-retries", type=int, default=_default("max_retries"),
                     help="retries on 429, 5xx, timeouts and connection errors, one line each "
                     f"(default {_default('max_retries')})")
    gen.add_argument("--attempts", type=_positive_int, default=_default("attempts"),
                     help=f"times a malformed answer is asked, each with a fresh seed (default {_default('attempts')})")
    gen.add_argument("--protocol", choices=PROTOCOLS, default=_default("protocol"),
                     help="json: structured output (response_format JSON schema) where the server supports it, "
                     "else numbered lists; numbered: the paper's numbered lists only (default %(default)s)")
    gen.add_argument("--out", type=Path, required=True,
                     help="bank file to write, e.g. descriptor_banks/<model>/v1.json (a new file, or the same bank)")

    val = commands.add_parser("validate", help="check bank files: schema, one {} per template, sha256")
    val.add_argument("files", type=Path, nargs="+")

    imp = commands.add_parser("import-published", help="make a bank from a published descriptor list (JSON)")
    imp.add_argument("source", type=Path, help='JSON {"source": ..., "concepts": {concept: [descriptors]}}')
    imp.add_argument("--model", required=True, help="where the list comes from, e.g. alinlab/StarFT@4d11b94")
    imp.add_argument("--out", type=Path, required=True)

    cmp = commands.add_parser("compare", help="compare a bank with another (default: the official bank)")
    cmp.add_argument("bank_a", type=Path, metavar="BANK_A")
    cmp.add_argument("bank_b", type=Path, nargs="?", default=compare.REFERENCE_BANK, metavar="BANK_B",
                     help=f"reference bank (default {compare.REFERENCE_BANK})")
    cmp.add_argument("--concept", default="all", help="concept to compare, or 'all' (the union; default)")
    cmp.add_argument("--model", default=compare.DEFAULT_MODEL, help="open_clip architecture of the text space")
    cmp.add_argument("--pretrained", default=compare.DEFAULT_PRETRAINED, help="its pretrained tag or weights file")
    cmp.add_argument("--threshold", type=float, default=compare.COVERAGE_COSINE,
                     help="cosine at which a nearest neighbour covers a descriptor")
    cmp.add_argument("--out", type=Path, default=Path("results/bank_compare"), help="folder (default results/bank_compare)")
    cmp.add_argument("--name", help="file stem of the outputs (default <A>_vs_<B> from the bank paths)")
    return parser


def _generate(args: argparse.Namespace) -> None:
    """The ``generate`` sub-command."""
    if args.model is None and args.backend != "openai":
        raise LLMError("--model is required for the transformers backend (a local path or a hub id)")
    concepts = tuple(c.strip() for c in args.concepts.split(",") if c.strip()) if args.concepts else None
    config = GenerateConfig(
        backend=args.backend,
        model=args.model or DEFAULT_OPENAI_MODEL,
        base_url=args.base_url,
        concepts=concepts,
        runs=args.runs,
        temperature=args.temperature,
        seed=args.seed,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        timeout=args.timeout,
        max_retries=args.max_retries,
        attempts=args.attempts,
        protocol=args.protocol,
    )
    start = time.perf_counter()
    bank, chat = generate_bank(config)
    bank, written = write_versioned(args.out, bank)
    sizes = ", ".join(f"{concept}={len(entry.descriptors)}" for concept, entry in bank.concepts.items())
    log.info(
        "%s %s (%s; sha256 %s): %d requests, %d cache hits, %.1f s",
        "wrote" if written else "unchanged",
        args.out,
        sizes,
        bank.sha256[:12],
        chat.requests,
        chat.hits,
        time.perf_counter() - start,
    )


def _validate(args: argparse.Namespace) -> None:
    """The ``validate`` sub-command: every file must load (checksum included)."""
    for path in args.files:
        bank = load_bank(path)
        sizes = ", ".join(f"{concept}={len(entry.descriptors)}" for concept, entry in bank.concepts.items())
        generator = f"{bank.generator.backend}:{bank.generator.model}"
        print(f"ok {path}: schema {bank.schema_version}, {generator}, {sizes}, sha256 {bank.sha256}")


def _import(args: argparse.Namespace) -> None:
    """The ``import-published`` sub-command."""
    bank, written = import_published(args.source, args.out, model=args.model)
    log.info("%s %s (sha256 %s)", "wrote" if written else "unchanged", args.out, bank.sha256[:12])


def _compare(args: argparse.Namespace) -> None:
    """The ``compare`` sub-command: writes <out>/<name>.{json,md,png} and prints the headline numbers."""
    name = args.name or f"{compare.bank_label(args.bank_a)}_vs_{compare.bank_label(args.bank_b)}"
    result = compare.compare_banks(args.bank_a, args.bank_b, concept=args.concept, model=args.model,
                                   pretrained=args.pretrained, threshold=args.threshold)
    paths = compare.write_comparison(result, args.out, name)
    a, b = result["a_vs_b"], result["b_vs_a"]
    log.info("%s: sizes %d / %d, exact %d / %d, near %d / %d, coverage %.1f %% / %.1f %% -> %s",
             name, result["banks"]["a"]["size"], result["banks"]["b"]["size"], a["exact_in_other"], b["exact_in_other"],
             a["near_in_other"], b["near_in_other"], 100 * a["coverage"], 100 * b["coverage"],
             ", ".join(map(str, paths)))


@cli_command(messages_on="stderr")
def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; return the exit status (an error: one line, status 2, stages.cli)."""
    args = build_parser().parse_args(argv)
    for noisy in ("httpx", "httpx2"):  # the openai client's HTTP layer logs every request URL at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = {"generate": _generate, "validate": _validate, "import-published": _import,
               "compare": _compare}[args.command]
    command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
