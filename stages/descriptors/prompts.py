"""The three prompts of the paper's descriptor protocol, verbatim from Appendix C.1.

The paper prints each prompt in a box. The text below is that box with the PDF's line wrapping
undone; the box ends with ``Answer: 1.``, which primes the model to continue a numbered list
(so an answer may start with item 1's text without its number; see `stages.descriptors.parse`).
The ``-`` printed under each box is the box's rule, not part of the prompt.

Placeholders, written as the paper writes them and filled by `keywords_prompt` and `descriptors_prompt`:
``[spurious concept]`` (step 2) and ``[keyword1], [keyword2], ...`` (step 3).
``[class]`` inside step 3 is *not* filled: it is the class slot that the model echoes back and
that becomes the template's ``{}``.
"""

from __future__ import annotations

STEP_CONCEPTS = "concepts"
STEP_KEYWORDS = "keywords"
STEP_DESCRIPTORS = "descriptors"
STEP_NUMBERS = {STEP_CONCEPTS: 1, STEP_KEYWORDS: 2, STEP_DESCRIPTORS: 3}

CONCEPTS_PROMPT = (
    "### Your Task ### You are an image classifier classifying a given natural image into a certain class.\n"
    "\n"
    "Question: List possible spurious correlations while classifying natural images. Answer in a word.\n"
    "\n"
    "Answer: 1."
)

KEYWORDS_PROMPT = (
    "### Your Task ### You are an image classifier classifying a given natural image into a certain class.\n"
    "\n"
    "Question: List 20 [spurious concept] bias keywords that may lead to a spurious correlation.\n"
    "\n"
    "Answer: 1."
)

DESCRIPTORS_PROMPT = (
    '### Your Task ### You design a proper prompt with a given keyword. The base prompt is "a photo of a '
    '[class]." You append an appropriate postfix to the base prompt with the given keyword. You use only '
    "one keyword to design each prompt.\n"
    "\n"
    "Question: Design a prompt with following keywords: [keyword1], [keyword2], ...\n"
    "\n"
    "Answer: 1."
)

PROMPTS = {STEP_CONCEPTS: CONCEPTS_PROMPT, STEP_KEYWORDS: KEYWORDS_PROMPT, STEP_DESCRIPTORS: DESCRIPTORS_PROMPT}

KEYWORDS_PER_RUN = 20
"""Step 2 asks for exactly this many keywords ("List 20 ...")."""

CONCEPT_PLACEHOLDER = "[spurious concept]"
KEYWORDS_PLACEHOLDER = "[keyword1], [keyword2], ..."


def concepts_prompt() -> str:
    """Step 1: ask for high-level spurious concepts."""
    return CONCEPTS_PROMPT


def keywords_prompt(concept: str) -> str:
    """Step 2: ask for 20 bias keywords of `concept`."""
    return KEYWORDS_PROMPT.replace(CONCEPT_PLACEHOLDER, concept)


def descriptors_prompt(keywords: list[str]) -> str:
    """Step 3: ask for one prompt-like descriptor per keyword of the batch."""
    return DESCRIPTORS_PROMPT.replace(KEYWORDS_PLACEHOLDER, ", ".join(keywords))
