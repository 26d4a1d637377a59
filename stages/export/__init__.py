"""Export a finished run in open_clip's own Hub format, with a model card, and optionally push it.

``export_run(run_dir, out, alpha)`` writes into `out`:

- ``open_clip_model.safetensors``: the model's state dict (WiSE-FT-interpolated with the run's
  zero-shot start when `alpha` is given, exactly as ``stages.evaluation`` scores it);
- ``open_clip_config.json``: ``{"model_cfg": the full architecture, "preprocess_cfg": ...}``, so
  plain open_clip loads it with ``create_model_and_transforms("local-dir:OUT")`` (or
  ``"hf-hub:ORG/NAME"`` once pushed) without this package's tiny configs registered;
- ``head.safetensors`` + ``head_classnames.json`` for head methods (FT, CAR-FT, Lipsum-FT): logits
  are ``normalize(encode_image(x)) @ weight.T``;
- ``README.md``: a Hugging Face model card (YAML metadata: library_name open_clip, base_model,
  datasets, metrics) with the recipe, the bank and its sha256, the run's evaluation results
  (the run's metrics files, ``RunDir.metrics_files``), how to load it and the StarFT citation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import safetensors.torch
from huggingface_hub import ModelCard, ModelCardData

from stages.errors import PipelineError, read_json
from stages.evaluation.run import load_run
from stages.io import atomic_write_json, atomic_write_text, sha256_file
from stages.rundir import RunDir, RunRecord

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
HEAD = "head.safetensors"
HEAD_CLASSES = "head_classnames.json"

CITATION = """@inproceedings{kim2025starft,
  title     = {StarFT: Robust Fine-tuning of Zero-shot Models via Spuriosity Alignment},
  author    = {Kim, Younghyun and Jeong, Jongheon and Kwak, Sangkyung and Lee, Kyungmin and Lee, Juho and Shin, Jinwoo},
  booktitle = {Proceedings of the Thirty-Fourth International Joint Conference on Artificial Intelligence (IJCAI)},
  year      = {2025},
  note      = {arXiv:2505.13232}
}"""


class ExportError(PipelineError, RuntimeError):
    """A run that cannot be exported (not finished, or an architecture open_clip does not know)."""


def _model_cfg(name: str) -> dict[str, Any]:
    """The full open_clip architecture config of `name` (tiny test configs included)."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ExportError(f"open_clip has no config for architecture {name!r}; cannot write {CONFIG}")
    return cfg


def _eval_results(run_dir: RunDir, alpha: float | None) -> list[dict[str, Any]]:
    """The metrics JSONs of the exported weights: the run's requests at `alpha` (None: as trained)."""
    results = []
    for request, path in run_dir.metrics_files().items():
        if request.alpha != alpha:
            continue
        payload = read_json(path, "metrics file", "; rerun the run's evaluation to rewrite it")
        results.append({"benchmark": payload.get("benchmark", request.benchmark), "n": payload.get("n"),
                        "metrics": payload.get("metrics", {})})
    return results


def model_card(run: RunRecord, results: list[dict[str, Any]], alpha: float | None, has_head: bool) -> ModelCard:
    """The Hub model card (README.md) of an export: metadata, recipe, bank, results, loading, citation."""
    config = run.config
    model, data, optim, spurious = config.model, config.data, config.optim, config.spurious
    card_data = ModelCardData(
        library_name="open_clip", license="mit", tags=["clip", "robust-fine-tuning", config.method],
        base_model=None if model.pretrained == "none" else f"{model.name}/{model.pretrained}",
        datasets=[data.train_set],
        metrics=sorted({name for result in results for name in result["metrics"]}) or None,
    )
    rows = "\n".join(f"| {r['benchmark']} | {r['n']} | " + ", ".join(f"{k} {100 * v:.2f}" for k, v in
                                                                      sorted(r["metrics"].items())) + " |"
                     for r in results)
    bank = (f"`{spurious.bank}` (concept {spurious.concept}, sha256 `{run.bank_sha256}`, "
            f"{run.num_descriptors} descriptors)" if run.bank_sha256 else "none (no spurious captions)")
    head = (f"\nThe trained classification head is in `{HEAD}` (key `weight`, one row per class of `{HEAD_CLASSES}`):"
            " logits = `F.normalize(model.encode_image(x), dim=-1) @ weight.T`.\n" if has_head else "")
    content = f"""---
{card_data.to_yaml()}
---

# {model.name} fine-tuned on {data.train_set} with {config.method}

Fine-tuned from open_clip `{model.name}` (`pretrained={model.pretrained}`) with the
`stages` pipeline{'' if alpha is None else f', WiSE-FT-interpolated with its zero-shot start at alpha {alpha:g}'}.

## Recipe

| setting | value |
|---|---|
| method | {config.method} |
| λ (Star term) | {config.lam} (decay {spurious.decay}, mask {spurious.mask}, suffix {spurious.suffix}) |
| descriptor bank | {bank} |
| training data | {data.train_set} / {data.train_split}, caption `{data.caption_template}` |
| optimiser | AdamW lr {optim.lr}, weight decay {optim.weight_decay}, {optim.warmup_steps} warm-up steps, cosine |
| epochs, batch | {optim.epochs}, {optim.batch_size} |
| steps | {run.total_steps} |
| seed | {config.seed} |
| code | {run.code_version} |

## Evaluation results

| benchmark | images | metrics (%) |
|---|---|---|
{rows or '| (none found in the run directory) | | |'}

## How to load

```python
import open_clip
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:PATH")  # or "hf-hub:ORG/NAME"
tokenizer = open_clip.get_tokenizer("local-dir:PATH")
```
{head}
## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(content)


def export_run(run_dir: Path, out: Path, alpha: float | None = None) -> list[Path]:
    """Write the open_clip Hub folder of a finished run into `out`; return the files written."""
    run_dir, out = RunDir(Path(run_dir)), Path(out)
    loaded = load_run(run_dir.path, alpha=alpha)
    run = run_dir.read_record()
    model = loaded.bundle.model
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{WEIGHTS}.tmp"
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    safetensors.torch.save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS)
    visual = model.visual
    preprocess = {"mean": list(visual.image_mean), "std": list(visual.image_std),
                  **{key: visual.preprocess_cfg[key] for key in ("interpolation", "resize_mode")
                     if key in visual.preprocess_cfg}}
    atomic_write_json(out / CONFIG, {"model_cfg": _model_cfg(loaded.bundle.name), "preprocess_cfg": preprocess})
    written = [out / WEIGHTS, out / CONFIG]
    if loaded.head_weight is not None:
        tmp = out / f".{HEAD}.tmp"
        safetensors.torch.save_file({"weight": loaded.head_weight.detach().float().cpu().contiguous()}, str(tmp))
        tmp.replace(out / HEAD)
        atomic_write_json(out / HEAD_CLASSES, list(loaded.head_classnames or []))
        written += [out / HEAD, out / HEAD_CLASSES]
    card = model_card(run, _eval_results(run_dir, alpha), alpha, loaded.head_weight is not None)
    atomic_write_text(out / "README.md", str(card))
    written.append(out / "README.md")
    atomic_write_json(out / "export.json", {"run_dir": str(run_dir.path), "alpha": alpha,
                                            "checkpoint_sha256": loaded.identity["checkpoint_sha256"],
                                            "weights_sha256": sha256_file(out / WEIGHTS)})
    written.append(out / "export.json")
    return written


def check_push(repo_id: str) -> None:
    """Refuse a push that cannot happen before anything is written: offline mode, no token, a bad repo id."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ExportError("--push-to: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it (HF_HUB_OFFLINE=0)")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ExportError(f"--push-to {repo_id!r}: expected ORG/NAME (a Hub model repo id, e.g. me/vit-b-16-starft)")
    if not get_token():
        raise ExportError("--push-to: no Hugging Face token found; set one with HF_TOKEN=hf_... (a write token from "
                          "https://huggingface.co/settings/tokens) or `huggingface-cli login` (`hf auth login`), "
                          "then rerun; nothing was written")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The exceptions of an endpoint that cannot be reached: the HTTP client's transport errors (httpx, or
    httpx2 in huggingface_hub >= 2), and OSError (requests' ConnectionError is one)."""
    errors: list[type[BaseException]] = [OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(__import__(client).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` to the Hub repo `repo_id` (created if missing) with ``HfApi.upload_folder``; its URL.

    The endpoint is ``$HF_ENDPOINT`` (default huggingface.co) and the token ``$HF_TOKEN`` or the
    cached login (`check_push`); a refusal by the Hub or an unreachable endpoint is an `ExportError`.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    check_push(repo_id)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                   commit_message="Add fine-tuned open_clip model", ignore_patterns=[".*"])
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        hint = ("the token is invalid or cannot write there: set a write token (HF_TOKEN or `huggingface-cli login`)"
                if status in (401, 403) else "check the repo id and your rights on it")
        raise ExportError(f"--push-to {repo_id}: the Hub ({constants.ENDPOINT}) refused the upload (HTTP {status}); "
                          f"{hint}. {folder} is written: rerun to push it") from None
    except _transport_errors() as error:
        raise ExportError(f"--push-to {repo_id}: cannot reach {constants.ENDPOINT} ({type(error).__name__}); check "
                          f"the network or HF_ENDPOINT. {folder} is written: rerun to push it") from None
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)


__all__ = ["ExportError", "check_push", "export_run", "model_card", "push"]
