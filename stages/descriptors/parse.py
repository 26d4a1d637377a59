"""Turn LLM answers into clean concept names, keywords and descriptor templates.

An answer is either JSON ``{"items": [...]}`` (structured output: the generator asks for it with a
JSON schema where the server supports one) or a numbered list (the paper's protocol: the prompts
end with ``Answer: 1.``, so an answer may also start directly with item 1's text and continue
with ``2.``); `answer_items` reads both. Items are cleaned
(markdown, quotes, whitespace), deduplicated case-, whitespace-, punctuation- and simple-plural-
insensitively keeping the first spelling, and descriptors become templates with exactly one
``{}`` that stands for the base caption ``"a photo of a [class]"``:
``"A photo of a [class] in the snow"`` -> ``"{} in the snow."``.

Anything unusable raises `ParseError`, whose message names the step and the concept.
"""

from __future__ import annotations

import json
import re

from stages.descriptors.bank import check_template
from stages.descriptors.prompts import STEP_CONCEPTS, STEP_DESCRIPTORS, STEP_KEYWORDS, STEP_NUMBERS
from stages.errors import PipelineError

_NUMBERED = re.compile(r"^\s*(?:[-*]\s*)?(?:\*\*)?(\d{1,3})\s*[.)](?:\*\*)?\s*(.*?)\s*$")
_QUOTES = "\"'`“”‘’«»"
_EXPLANATION = re.compile(r"\s*(?::\s|\s[-–—]\s|\s\().*$")
_BASE_CAPTION = re.compile(r"\ba\s+photo\s+of\s+an?\s+(?:[\[<{]\s*class(?:\s*name)?\s*[\]>}]|\{\})", re.IGNORECASE)
_CLASS_SLOT = re.compile(r"[\[<{]\s*class(?:\s*name)?\s*[\]>}]", re.IGNORECASE)
_PUNCTUATION = re.compile(r"[^\w\s]")
TEMPLATE_SLOT = "{}"
_SLOT_MARK = "\0"
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class ParseError(PipelineError, ValueError):
    """An LLM answer that cannot be used; the message names the step and the concept."""

    def __init__(self, step: str, concept: str | None, message: str) -> None:
        where = f"step {STEP_NUMBERS[step]} ({step})" + (f", concept {concept!r}" if concept else "")
        super().__init__(f"{where}: {message}")
        self.step = step
        self.concept = concept
        self.detail = message


def numbered_items(text: str, *, step: str, concept: str | None, max_items: int | None = None) -> list[str]:
    """The items of the numbered list in `text`, in order, as written (uncleaned).

    Lines that are not numbered items are ignored, except that the prompt ends with
    ``Answer: 1.``, so a first line without a number is item 1 when item 2 follows, and a one-line
    answer is item 1 when exactly one item was asked for.
    Raises `ParseError` when there is no numbered item or more than `max_items`.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    items: list[tuple[int, str]] = []
    for line in lines:
        match = _NUMBERED.match(line)
        if match:
            items.append((int(match.group(1)), match.group(2)))
    if items and items[0][0] == 2 and not _NUMBERED.match(lines[0]):
        items.insert(0, (1, lines[0].strip()))
    if not items and max_items == 1 and len(lines) == 1:
        items = [(1, lines[0].strip())]
    if not items:
        raise ParseError(
            step, concept, "the answer has no numbered items (expected '1. ...', '2. ...', or JSON "
            f'{{"items": [...]}}): {_preview(text)}'
        )
    if max_items is not None and len(items) > max_items:
        raise ParseError(
            step,
            concept,
            f"the answer has {len(items)} numbered items but {max_items} were asked for: {_preview(text)}",
        )
    return [item for _, item in items]


def answer_items(text: str, *, step: str, concept: str | None, max_items: int | None = None) -> list[str]:
    """The items of a JSON answer ``{"items": [str, ...]}`` (or a bare JSON list), else of a numbered list.

    A server that ignores ``response_format`` answers in free text, so a non-JSON answer is read
    as a numbered list (`numbered_items`). Raises `ParseError` for JSON of another shape, too many
    items, or text that is neither.
    """
    body = _FENCE.sub(r"\1", text.strip())
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        try:
            return numbered_items(text, step=step, concept=concept, max_items=max_items)
        except ParseError:
            if body.startswith(("{", "[")):
                raise ParseError(step, concept, f"the JSON answer is cut short or malformed: {_preview(text)}") from None
            raise
    items = payload.get("items") if isinstance(payload, dict) else payload
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise ParseError(step, concept, f'the JSON answer is not {{"items": ["...", ...]}} (a non-empty list of '
                         f"strings): {_preview(text)}")
    if max_items is not None and len(items) > max_items:
        raise ParseError(step, concept, f"the answer has {len(items)} items but {max_items} were asked for: "
                         f"{_preview(text)}")
    return items


def clean_item(item: str) -> str:
    """Strip markdown emphasis, surrounding quotes, list punctuation and extra whitespace."""
    item = item.replace("**", "").replace("__", "")
    item = " ".join(item.split())
    previous = None
    while previous != item:
        previous = item
        item = item.strip().strip(_QUOTES).rstrip(",;").strip()
    return item


def clean_keyword(item: str) -> str:
    """A keyword or concept name: the item without a trailing explanation or full stop."""
    item = clean_item(item)
    item = _EXPLANATION.sub("", item)
    return clean_item(item.rstrip(".!"))


def dedupe_key(text: str) -> str:
    """Comparison key: case, whitespace, punctuation and simple plurals do not matter."""
    words = _PUNCTUATION.sub(" ", text.replace(TEMPLATE_SLOT, " slot ").lower()).split()
    return " ".join(_singular(word) for word in words)


def _singular(word: str) -> str:
    """Undo the simplest English plurals (``cities`` -> ``city``, ``beaches`` -> ``beach``, ``trees`` -> ``tree``)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def dedupe(items: list[str], *, step: str, concept: str | None) -> list[str]:
    """Drop empty items and duplicates (see `dedupe_key`), keeping the first spelling.

    Raises `ParseError` when nothing is left.
    """
    kept: dict[str, str] = {}
    for item in items:
        key = dedupe_key(item)
        if key and key not in kept:
            kept[key] = item
    if not kept:
        raise ParseError(step, concept, f"every item was empty or a duplicate after normalisation: {items!r}")
    return list(kept.values())


def parse_concepts(text: str) -> list[str]:
    """Step 1: lower-case concept names such as ``background``, deduplicated."""
    items = answer_items(text, step=STEP_CONCEPTS, concept=None)
    return dedupe([clean_keyword(item).lower() for item in items], step=STEP_CONCEPTS, concept=None)


def parse_keywords(text: str, *, concept: str, asked: int) -> list[str]:
    """Step 2: the keywords of one run (at most `asked`), cleaned and deduplicated."""
    items = answer_items(text, step=STEP_KEYWORDS, concept=concept, max_items=asked)
    return dedupe([clean_keyword(item) for item in items], step=STEP_KEYWORDS, concept=concept)


def to_template(descriptor: str) -> str:
    """Convert one step-3 descriptor to a template with exactly one ``{}``.

    The base caption ``a photo of a [class]`` (any case, ``a``/``an``, ``[class]``, ``{class}``,
    ``<class>`` or ``{}``) becomes ``{}``; a lone class slot also becomes ``{}`` (the paper's Table 15
    writes ``[class] in the snow``); a ``{}`` already present counts as a slot. A leading
    ``keyword:`` label is dropped and a final full stop added. Raises ValueError when the result
    has no slot, several slots, or stray braces.
    """
    text = clean_item(descriptor)
    label, colon, rest = text.partition(": ")
    if colon and not _CLASS_SLOT.search(label) and _CLASS_SLOT.search(rest):
        text = rest
    text = _CLASS_SLOT.sub(_SLOT_MARK, _BASE_CAPTION.sub(_SLOT_MARK, text))
    slots = text.count(_SLOT_MARK) + text.count(TEMPLATE_SLOT)
    text = text.replace(_SLOT_MARK, TEMPLATE_SLOT)
    if slots == 0:
        raise ValueError(
            f"descriptor {descriptor!r} is missing the class slot: expected the base prompt "
            "'a photo of a [class]' with a postfix, e.g. 'a photo of a [class] in the snow.'"
        )
    if slots > 1:
        raise ValueError(f"descriptor {descriptor!r} has {slots} class slots; a template needs exactly one")
    if text[-1] not in ".!?":
        text += "."
    return check_template(text)


def parse_descriptors(text: str, *, concept: str, asked: int) -> list[str]:
    """Step 3: one template per non-empty item (at most `asked`), deduplicated."""
    items = answer_items(text, step=STEP_DESCRIPTORS, concept=concept, max_items=asked)
    templates = []
    for item in filter(clean_item, items):
        try:
            templates.append(to_template(item))
        except ValueError as error:
            raise ParseError(STEP_DESCRIPTORS, concept, str(error)) from error
    return dedupe(templates, step=STEP_DESCRIPTORS, concept=concept)


def _preview(text: str, limit: int = 300) -> str:
    """`text` shortened for an error message."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")
