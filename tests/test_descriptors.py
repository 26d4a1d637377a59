"""Descriptor stage: prompts, parsing, shipped banks, and generation against a scripted server.

The server (tests/descriptor_server.py) is the remote end; the code under test talks to it with
the real `openai` client, its real retries and its real cache.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from descriptor_server import FakeLLMServer, Reply, error_reply, html_reply, prompt_of, protocol_answer

from stages.descriptors.__main__ import main
from stages.descriptors.bank import BankError, ConceptEntry, load_bank
from stages.descriptors.generate import GenerateConfig, generate_bank, write_versioned
from stages.descriptors.llm import public_base_url
from stages.descriptors.parse import ParseError, dedupe, numbered_items, parse_keywords, to_template
from stages.descriptors.prompts import PROMPTS, descriptors_prompt, keywords_prompt

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-4f1c2a"
FAST = ["--timeout", "5", "--max-retries", "2"]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with a recognisable key, and no OPENAI_BASE_URL from the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def generate(server: FakeLLMServer, tmp_path: Path, *extra: str, out: str = "bank/v1.json") -> int:
    """Run the generate CLI against `server` with a cache under `tmp_path`."""
    argv = ["generate", "--model", "gpt-test", "--base-url", server.url, "--cache-dir", str(tmp_path / "cache")]
    return main([*argv, "--seed", "0", *FAST, *extra, "--out", str(tmp_path / out)])


# --- prompts and parsing ---------------------------------------------------------------------


def test_prompts_are_the_papers_and_fill_only_their_placeholders() -> None:
    assert (
        "Question: List possible spurious correlations while classifying natural images. Answer in a word."
        in PROMPTS["concepts"]
    )
    step2 = keywords_prompt("background")
    assert "Question: List 20 background bias keywords that may lead to a spurious correlation." in step2
    step3 = descriptors_prompt(["snow", "beach"])
    assert "Question: Design a prompt with following keywords: snow, beach\n" in step3
    assert 'The base prompt is "a photo of a [class]."' in step3
    assert all(prompt.endswith("Answer: 1.") for prompt in PROMPTS.values())


def test_numbered_items_accept_a_primed_first_item_and_reject_bad_lists() -> None:
    assert numbered_items("Snow\n2. Beach\n3) **Forest**", step="keywords", concept="bg") == [
        "Snow",
        "Beach",
        "**Forest**",
    ]
    with pytest.raises(ParseError, match=r"step 2 \(keywords\), concept 'bg': the answer has no numbered items"):
        numbered_items("I cannot help with that.", step="keywords", concept="bg")
    # a one-line answer to a one-item question continues the prompt's "Answer: 1."
    assert numbered_items("A photo of a [class] in snow.", step="descriptors", concept="bg", max_items=1) == [
        "A photo of a [class] in snow."
    ]
    with pytest.raises(ParseError, match="no numbered items"):
        numbered_items("A photo of a [class] in snow.", step="descriptors", concept="bg", max_items=2)
    too_many = "\n".join(f"{i}. word{i}" for i in range(1, 22))
    with pytest.raises(ParseError, match="21 numbered items but 20 were asked for"):
        parse_keywords(too_many, concept="bg", asked=20)


def test_dedupe_ignores_case_space_punctuation_and_plurals_keeping_first_spelling() -> None:
    items = ["City streets", "city  street.", "Beaches", "beach", "Cities", "city", "glass", "Glass!"]
    assert dedupe(items, step="keywords", concept="bg") == ["City streets", "Beaches", "Cities", "glass"]
    assert parse_keywords('1. "Snow" - cold weather\n2. Beach: sand\n3. snow.', concept="bg", asked=20) == [
        "Snow",
        "Beach",
    ]
    with pytest.raises(ParseError, match="every item was empty or a duplicate"):
        parse_keywords("1. **\n2. ''", concept="bg", asked=20)


@pytest.mark.parametrize(
    ("descriptor", "template"),
    [
        ("A photo of a [class] in the snow", "{} in the snow."),
        ("a photo of an [Class] on the beach.", "{} on the beach."),
        ("snow: a photo of a {class} in the snow.", "{} in the snow."),
        ("[class] in the snow", "{} in the snow."),
        ("blurred [class]", "blurred {}."),
        ("{} with shadow.", "{} with shadow."),
    ],
)
def test_descriptors_become_templates_with_one_slot(descriptor: str, template: str) -> None:
    assert to_template(descriptor) == template
    assert template.format("a photo of a dog").count("a photo of a dog") == 1


@pytest.mark.parametrize(
    ("descriptor", "reason"),
    [
        ("a snowy mountain", "missing the class slot"),
        ("a photo of a [class] next to a photo of a [class]", "2 class slots"),
        ("{} and {}", "2 class slots"),
        ("{} in {the} snow", "exactly one '{}' slot"),
    ],
)
def test_bad_descriptors_are_refused(descriptor: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        to_template(descriptor)


def test_public_base_url_drops_credentials() -> None:
    assert (
        public_base_url("https://user:pw@llm.example.org:8443/v1/?api_key=x#frag") == "https://llm.example.org:8443/v1"
    )
    assert public_base_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


# --- shipped banks and the bank file ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("official-code.json", {"background": 58, "texture": 54, "resolution": 20}),
        ("paper-table15.json", {"background": 30, "texture": 15, "resolution": 15}),
    ],
)
def test_shipped_banks_validate(name: str, sizes: dict[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "descriptor_banks" / name
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"ok {path}")
    bank = load_bank(path)
    assert {concept: len(entry.descriptors) for concept, entry in bank.concepts.items()} == sizes
    assert bank.generator.backend == "published"
    assert len(bank.descriptors("all")) == len(set(bank.descriptors("all")))
    assert "{} in the snow." in bank.descriptors("background")


def test_official_bank_keeps_the_released_strings_verbatim() -> None:
    bank = load_bank(REPO / "descriptor_banks" / "official-code.json")
    assert bank.generator.model == "alinlab/StarFT@4d11b94"
    assert "{} with low visibility" in bank.descriptors("resolution")  # no full stop in the release
    assert bank.descriptors("background")[0] == "{} surrounded by fall and autumn leaves."


def test_hand_edited_bank_fails_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edited.json"
    data = json.loads((REPO / "descriptor_banks" / "paper-table15.json").read_text())
    data["concepts"]["texture"]["descriptors"][0] = "{} made of cheese."
    path.write_text(json.dumps(data))
    assert main(["validate", str(path)]) == 2
    assert "does not match its content" in capsys.readouterr().err
    data["concepts"]["texture"]["descriptors"][0] = "made of cheese."
    path.write_text(json.dumps(data))
    with pytest.raises(BankError, match="exactly one"):
        load_bank(path)


def test_bank_refuses_templates_without_one_slot() -> None:
    for bad in (["in the snow."], ["{} in {} snow."]):
        with pytest.raises(ValueError, match="exactly one"):
            ConceptEntry(descriptors=bad)


# --- generation against the scripted server --------------------------------------------------


def test_generate_with_given_concepts_and_rerun_from_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeLLMServer() as server:
        assert generate(server, tmp_path, "--concepts", "background,texture", "--batch-size", "4") == 0
        # 2 concepts x 3 keyword runs + 2 descriptor batches for 7 keywords; the scripted server
        # gives texture the same keywords, so its step-3 requests are identical and come from the cache
        assert len(server.requests) == 8
        assert [r["seed"] for r in server.requests[:3]] == [0, 1, 2]  # the three runs are distinct requests
        assert set(server.authorization) == {f"Bearer {SECRET}"}
        bank = load_bank(tmp_path / "bank" / "v1.json")
        # rerun: every answer comes from the cache, the bank is unchanged (no-op)
        first = (tmp_path / "bank" / "v1.json").read_text()
        assert generate(server, tmp_path, "--concepts", "background,texture", "--batch-size", "4") == 0
        assert len(server.requests) == 8
        assert (tmp_path / "bank" / "v1.json").read_text() == first
        assert "unchanged" in capsys.readouterr().err
    # 12 keywords across 3 runs, 5 duplicates (case, punctuation, plural) removed, first spelling kept
    assert bank.concepts["background"].keywords == [
        "Snow",
        "Beach",
        "Forest",
        "City streets",
        "desert",
        "Mountains",
        "Underwater",
    ]
    assert bank.concepts["background"].descriptors[0] == "{} with snow in the background."
    assert bank.generator.model_dump() == {
        "backend": "openai",
        "model": "gpt-test",
        "base_url": server.url,
        "temperature": 1.0,
        "runs_per_concept": 3,
        "seed": 0,
        "max_tokens": 512,
        "batch_size": 4,
    }
    assert bank.prompts == PROMPTS
    assert len(bank.raw_responses) == 10
    assert {r["step"] for r in bank.raw_responses} == {"keywords", "descriptors"}


def test_generate_runs_step_one_without_concepts(tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        assert generate(server, tmp_path, "--runs", "1") == 0
        assert "List possible spurious correlations" in prompt_of(server.requests[0])
    bank = load_bank(tmp_path / "bank" / "v1.json")
    assert set(bank.concepts) == {"background", "texture", "resolution"}
    assert bank.raw_responses[0]["step"] == "concepts"


def test_rate_limit_then_success_is_retried_by_the_client(tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        server.fail_next(error_reply(429, "slow down"), times=2)
        assert generate(server, tmp_path, "--concepts", "background", "--runs", "1") == 0
        assert len(server.requests) == 2 + 2  # two 429s, then one keyword and one descriptor request


def test_server_error_keeps_progress_and_a_rerun_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeLLMServer() as server:
        # background: 3 keyword runs + 1 descriptor batch succeed, then texture's first request fails
        assert generate(server, tmp_path, "--concepts", "background", "--runs", "3") == 0
        server.fail_next(error_reply(500, "boom"), times=3)
        assert generate(server, tmp_path, "--concepts", "background,texture", out="bank/v2.json") == 2
        err = capsys.readouterr().err
        assert "step 2 (keywords), concept 'texture', run 1" in err
        assert f"{server.url} answered HTTP 500 after 2 retries" in err
        assert "rerun the same command to resume" in err
        made = len(server.requests)
        assert generate(server, tmp_path, "--concepts", "background,texture", out="bank/v2.json") == 0
        # only texture's 3 keyword runs: background's answers and the (identical) step-3 batch are cached
        assert len(server.requests) - made == 3


def test_malformed_answer_names_step_and_concept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def no_list(request: dict) -> str:
        return "Sorry, I cannot list keywords." if "bias keywords" in prompt_of(request) else protocol_answer(request)

    with FakeLLMServer(no_list) as server:
        assert generate(server, tmp_path, "--concepts", "texture", "--runs", "1") == 2
    err = capsys.readouterr().err
    assert "error: step 2 (keywords), concept 'texture': the answer has no numbered items" in err
    assert "The answer is cached as" in err and "delete that file" in err


def test_descriptor_without_class_slot_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def no_slot(request: dict) -> str:
        return "1. a snowy day" if "Design a prompt" in prompt_of(request) else protocol_answer(request)

    with FakeLLMServer(no_slot) as server:
        assert generate(server, tmp_path, "--concepts", "background", "--runs", "1") == 2
    assert (
        "step 3 (descriptors), concept 'background': descriptor 'a snowy day' is missing the class slot"
        in capsys.readouterr().err
    )


def test_unreachable_endpoint_names_it_and_the_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    argv = ["generate", "--base-url", url, "--concepts", "background", "--max-retries", "0", "--timeout", "2"]
    assert main([*argv, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the LLM endpoint {url}" in err
    assert "OPENAI_BASE_URL" in err and "OPENAI_API_KEY" in err


def test_slow_endpoint_times_out_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeLLMServer() as server:
        server.fail_next(Reply(200, {}, delay_s=1.5))
        argv = [
            "generate",
            "--base-url",
            server.url,
            "--concepts",
            "background",
            "--timeout",
            "0.3",
            "--max-retries",
            "0",
        ]
        assert main([*argv, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "b.json")]) == 2
    assert "did not answer within 0.3 s" in capsys.readouterr().err


def test_missing_api_key_for_openai_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["generate", "--concepts", "background", "--out", str(tmp_path / "b.json")]) == 2
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err


def test_rejected_key_is_named_but_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeLLMServer() as server:
        server.fail_next(error_reply(401, f"Incorrect API key provided: {SECRET}"))
        assert generate(server, tmp_path, "--concepts", "background") == 2
    err = capsys.readouterr().err
    assert "rejected the API key (HTTP 401); check OPENAI_API_KEY (it is set)" in err
    assert SECRET not in err


def test_no_secret_in_bank_cache_or_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeLLMServer() as server:
        url_with_user = server.url.replace("http://", "http://alice:pw-SECRET-2@") + "?token=SECRET-3"
        argv = ["generate", "--base-url", url_with_user, "--concepts", "background", "--runs", "1", *FAST]
        assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "bank.json")]) == 0
    stored = [p.read_text() for p in tmp_path.rglob("*.json")]
    logged = capsys.readouterr()
    for text in [*stored, logged.out, logged.err]:
        assert SECRET not in text and "SECRET-2" not in text and "SECRET-3" not in text and "alice" not in text
    assert "ignoring the user name, password, query or fragment in the base URL" in logged.err
    assert set(server.authorization) == {f"Bearer {SECRET}"}
    assert load_bank(tmp_path / "bank.json").generator.base_url == server.url


def test_different_content_over_a_version_is_refused(tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        config = GenerateConfig(
            "openai", "gpt-test", server.url, ("background",), runs=1, cache_dir=tmp_path / "c", max_retries=0
        )
        bank, chat = generate_bank(config)
        out = tmp_path / "slug" / "v1.json"
        write_versioned(out, bank)
        assert write_versioned(out, bank)[1] is False  # same content: no-op
        other, _ = generate_bank(replace(config, temperature=0.0))
    with pytest.raises(BankError, match=r"already holds a different bank .* write it to .*slug/v2\.json instead"):
        write_versioned(out, other)
    assert chat.requests == 2


def test_transformers_backend_reports_a_missing_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("transformers") is not None:
        pytest.skip("transformers is installed: the missing-package message cannot be observed here")
    argv = ["generate", "--backend", "transformers", "--model", "some/model", "--concepts", "background"]
    assert main([*argv, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "b.json")]) == 2
    assert "needs the `transformers` package" in capsys.readouterr().err


# --- structured output, retries, endpoint faults (issue 13) ----------------------------------


def test_requests_ask_for_json_items_and_step3_needs_one_slot(tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        assert generate(server, tmp_path, "--concepts", "background", "--runs", "1") == 0
    keywords, descriptors = server.requests
    assert keywords["messages"][0]["role"] == "system" and keywords["messages"][-1]["content"] == keywords_prompt(
        "background")  # the paper's prompt, verbatim
    schema = keywords["response_format"]["json_schema"]["schema"]
    assert keywords["response_format"]["type"] == "json_schema"
    assert schema["properties"]["items"]["maxItems"] == 20 and schema["required"] == ["items"]
    item = descriptors["response_format"]["json_schema"]["schema"]["properties"]["items"]["items"]
    assert re.fullmatch(item["pattern"], "{} in the snow.") and not re.fullmatch(item["pattern"], "in the snow.")
    assert not re.fullmatch(item["pattern"], "{} and {}.")
    bank = load_bank(tmp_path / "bank" / "v1.json")
    assert bank.concepts["background"].descriptors == [
        "{} with snow in the background.", "{} with beach in the background.", "{} with forest in the background.",
        "{} with city streets in the background."]
    assert {r["protocol"] for r in bank.raw_responses} == {"json_schema"}


@pytest.mark.parametrize("accepts,used", [(("json_object",), "json_object"), ((), "numbered")])
def test_a_server_without_json_schema_falls_back(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 accepts: tuple[str, ...], used: str) -> None:
    with FakeLLMServer(accepts=accepts) as server:
        assert generate(server, tmp_path, "--concepts", "background", "--runs", "2") == 0
        refused = 2 - len(accepts)  # each refused format is asked once, then never again
        assert len(server.requests) == refused + 3
        assert [r.get("response_format", {}).get("type") for r in server.requests[refused:]] == [
            None if used == "numbered" else used] * 3
        err = capsys.readouterr().err
        assert f"the endpoint {server.url} refused response_format json_schema (HTTP 500: " in err
        assert "'literal_error', 'loc': ('body', 'response_format', 'type')" in err
        assert ("asking for a numbered list instead" if used == "numbered" else
                "asking with response_format json_object instead") in err
        assert generate(server, tmp_path, "--concepts", "background", "--runs", "2") == 0  # rerun: all cached
        assert len(server.requests) == refused + 3
    assert {r["protocol"] for r in load_bank(tmp_path / "bank" / "v1.json").raw_responses} == {used}


def test_malformed_answer_is_asked_again_with_a_fresh_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def flaky(request: dict) -> str:
        if "Design a prompt" in prompt_of(request) and request["seed"] < 2000:
            return json.dumps({"items": ["in the snow."]})  # no slot: refused after parsing too
        return protocol_answer(request)

    with FakeLLMServer(flaky) as server:
        assert generate(server, tmp_path, "--concepts", "background", "--runs", "1") == 0
        assert [r["seed"] for r in server.requests] == [0, 0, 1000, 2000]
    err = capsys.readouterr().err
    assert ("step 3 (descriptors), concept 'background', run 1: malformed answer (descriptor 'in the snow.' is "
            "missing the class slot") in err
    assert "asking again with a fresh seed (attempt 2/3)" in err and "(attempt 3/3)" in err
    bank = load_bank(tmp_path / "bank" / "v1.json")
    assert [r.get("attempt", 0) for r in bank.raw_responses] == [0, 0, 1, 2]

    with FakeLLMServer(flaky) as server:
        assert generate(server, tmp_path, "--concepts", "background", "--runs", "1", "--attempts", "2",
                        out="bank/v2.json") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: step 3 (descriptors), concept 'background': descriptor 'in the snow.' is missing "
                          "the class slot")
    assert "(attempt 2 of 2). The answer is cached as" in err


def test_hanging_server_is_retried_with_a_visible_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert GenerateConfig("openai", "m").timeout == 60.0
    with FakeLLMServer() as server:
        server.fail_next(Reply(200, {}, delay_s=1.5))
        assert generate(server, tmp_path, "--concepts", "background", "--runs", "1", "--timeout", "0.5",
                        "--max-retries", "1") == 0
    assert f"the endpoint {server.url} did not answer within 0.5 s; retry 1/1 in 0.5 s" in capsys.readouterr().err


def test_html_answer_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeLLMServer() as server:
        server.fail_next(html_reply())
        assert generate(server, tmp_path, "--concepts", "background") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: step 2 (keywords), concept 'background', run 1: the endpoint {server.url} "
                              "answered HTTP 200 with a non-JSON body ('<!DOCTYPE html><html><body><h1>Welcome to nginx!")
    assert "is --base-url the OpenAI-compatible API root" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_cache_is_keyed_by_endpoint(tmp_path: Path) -> None:
    with FakeLLMServer() as first, FakeLLMServer() as second:
        assert generate(first, tmp_path, "--concepts", "background", "--runs", "1") == 0
        assert generate(second, tmp_path, "--concepts", "background", "--runs", "1", out="bank/v2.json") == 0
        assert len(first.requests) == len(second.requests) == 2  # the new endpoint is asked, not replayed


def test_import_published_without_slot_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "published.json"
    source.write_text(json.dumps({"source": "x", "concepts": {"background": ["[class] in the snow", "on a beach"]}}))
    assert main(["import-published", str(source), "--model", "m", "--out", str(tmp_path / "b.json")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {source}: concepts.background[1]: descriptor 'on a beach' is missing the class slot: expected the "
        "base prompt 'a photo of a [class]' with a postfix, e.g. 'a photo of a [class] in the snow.'")
