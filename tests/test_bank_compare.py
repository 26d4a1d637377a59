"""Bank comparison (python -m stages.descriptors compare): the maths on hand-made banks, the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.descriptors import compare
from stages.descriptors.__main__ import main
from stages.descriptors.bank import ConceptEntry, DescriptorBank, GeneratorInfo, write_bank

A = ["{} in the snow.", "{} in a forest.", "{} under a clear blue sky at noon.", "{} at the beach."]
B = ["{} in the Snow!", "{} in forests", "{} under a clear blue sky at midday.", "{} in a desert.", "{} on grass."]


def test_exact_and_near_duplicate_overlap_known_answer() -> None:
    a_in_b = compare.overlap(A, B)
    # snow: case and punctuation differ only; "in a forest" vs "in forests": {in, a, forest} vs {in, forest},
    # Jaccard 2/3; sky: 6 shared tokens of 8 (noon / midday) -> 0.75 < 0.8; beach: nothing close.
    assert a_in_b.exact == [True, False, False, False]
    assert a_in_b.best_jaccard[1] == pytest.approx(2 / 3)
    assert a_in_b.best_jaccard[2] == pytest.approx(0.75)
    assert a_in_b.near == [False, False, False, False]
    assert compare.overlap(A, B, near_threshold=0.75).near == [False, False, True, False]
    b_in_a = compare.overlap(B, A)
    assert b_in_a.exact == [True, False, False, False, False] and sum(b_in_a.exact) == 1
    assert compare.tokens("{} in the Snow!") == frozenset({"in", "the", "snow"})
    assert compare.jaccard(frozenset(), frozenset()) == 1.0


def test_nearest_neighbours_and_coverage_on_hand_made_embeddings() -> None:
    a = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])  # norms do not matter
    b = np.array([[0.6, 0.8, 0.0], [3.0, 0.0, 0.0]])
    a_to_b, a_cos, b_to_a, b_cos = compare.nearest(a, b)
    assert a_to_b.tolist() == [1, 0, 0] and np.allclose(a_cos, [1.0, 0.8, 0.0])
    assert b_to_a.tolist() == [1, 0] and np.allclose(b_cos, [0.8, 1.0])
    assert compare.coverage(a_cos, 0.9) == pytest.approx(1 / 3) and compare.coverage(a_cos, 0.8) == pytest.approx(2 / 3)
    assert compare.coverage(b_cos, 0.8) == 1.0 and compare.coverage(b_cos, 0.9) == 0.5


def test_captions_fill_the_slot_and_labels_name_versioned_banks() -> None:
    assert compare.captions(["{} in the snow."]) == ["a photo of an object in the snow."]
    assert compare.bank_label(Path("descriptor_banks/llama-3.3-70b-instruct/v1.json")) == "llama-3.3-70b-instruct-v1"
    assert compare.bank_label(Path("descriptor_banks/official-code.json")) == "official-code"


def _bank(path: Path, descriptors: list[str], model: str) -> Path:
    bank = DescriptorBank(source="test", generator=GeneratorInfo(backend="published", model=model),
                          concepts={"background": ConceptEntry(descriptors=descriptors)}, created_at="now")
    write_bank(path, bank)
    return path


def test_cli_compares_two_banks_with_the_tiny_model(tmp_path: Path) -> None:
    bank_a, bank_b = _bank(tmp_path / "a.json", A, "llm-a"), _bank(tmp_path / "b.json", B, "llm-b")
    out = tmp_path / "out"
    assert main(["compare", str(bank_a), str(bank_b), "--concept", "background", "--model", "TinyCLIP-test",
                 "--pretrained", "none", "--out", str(out)]) == 0
    result = json.loads((out / "a_vs_b.json").read_text())
    assert result["banks"]["a"]["size"] == 4 and result["banks"]["b"]["size"] == 5
    assert result["exact_shared"] == 1 and result["exact_jaccard"] == pytest.approx(1 / 8)
    assert result["a_vs_b"]["exact_in_other"] == 1 and result["b_vs_a"]["exact_in_other"] == 1
    rows = result["a_vs_b"]["descriptors"]
    assert [row["descriptor"] for row in rows] == A and all(row["nearest"] in B for row in rows)
    # Same words (the tokenizer lower-cases), other punctuation: even random weights find the duplicate.
    assert rows[0]["nearest"] == "{} in the Snow!" and rows[0]["exact"]
    assert result["a_vs_b"]["coverage"] == pytest.approx(np.mean([row["cosine"] >= 0.9 for row in rows]))
    assert "A in B | 4 | 1 (25.0 %)" in (out / "a_vs_b.md").read_text()
    assert (out / "a_vs_b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_missing_concept_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bank_a = _bank(tmp_path / "a.json", A, "llm-a")
    assert main(["compare", str(bank_a), str(bank_a), "--concept", "texture", "--model", "TinyCLIP-test",
                 "--pretrained", "none", "--out", str(tmp_path)]) == 2  # stages.cli: an error is status 2
    assert "concept 'texture' is not in this bank" in capsys.readouterr().err


def test_the_workflow_compares_table_12s_banks_with_its_reference_and_the_demo_none(tmp_path: Path) -> None:
    import yaml

    from stages import plan
    from stages.config import validate_workflow_config

    repo = Path(__file__).resolve().parents[1]
    paper = validate_workflow_config(yaml.safe_load((repo / "config/paper.yaml").read_text()))
    (comparison,) = plan.bank_comparisons(paper)
    assert comparison == plan.BankComparison("llama-3.3-70b-instruct", "official-code", "background", "ViT-B-16", "openai")
    assert plan.bank_comparisons(paper, 12) == [comparison] and plan.bank_comparisons(paper, 2) == []
    assert [path.name for path in comparison.outputs(Path("results"))] == [
        f"llama-3.3-70b-instruct_vs_official-code.{suffix}" for suffix in ("json", "md", "png")]
    demo = validate_workflow_config(yaml.safe_load((repo / "config/config.yaml").read_text()))
    assert plan.bank_comparisons(demo) == []
