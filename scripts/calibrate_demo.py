#!/usr/bin/env python
"""Calibrate the embedded demo's held-out test on the baselines only (issue 23; README, "Calibration").

One configuration per call: build the demo data, pretrain the tiny CLIP (one or more seeds), score
zero-shot, fine-tune FT and FLYP with the pipeline's own training and evaluation code (the recipe of
config/config.yaml, fine-tuning budget overridable), and print the criteria numbers as one JSON line
per model plus a summary. StarFT is never run here (the calibration looks at the baselines only).

    OMP_NUM_THREADS=1 nice -n 15 python scripts/calibrate_demo.py --name c1 --steps 1200 --width 96
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CRITERIA = ("zs worst 15-45", "zs group avg >= 60", "zs heldout uniform >= 80", "FLYP ID - zs ID >= 8", "std < 3")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/calib"))
    # pretraining
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--pretrain-correlation", type=float, default=0.5)
    p.add_argument("--pretrain-size", type=int, default=20000)
    p.add_argument("--sketch-share", type=float, default=0.15)
    p.add_argument("--rendition-share", type=float, default=0.15)
    p.add_argument("--caption-mix", default="0.60,0.25,0.15", help="class+bg, class only, bg only")
    p.add_argument("--seeds", default="0", help="pretraining (and data) seeds, comma-separated")
    # fine-tuning (same budget for every method)
    p.add_argument("--methods", default="ft,flyp", help="baselines to fine-tune ('' = zero-shot only)")
    p.add_argument("--ft-seeds", default="0")
    p.add_argument("--ft-lr", type=float, default=None)
    p.add_argument("--ft-epochs", type=int, default=None)
    p.add_argument("--ft-steps-per-epoch", type=int, default=None)
    p.add_argument("--correlation", type=float, default=0.8)
    p.add_argument("--heldout", default="t-shirt,pullover")
    return p.parse_args()


def model_config(args: argparse.Namespace) -> dict:
    width = args.width
    return {"embed_dim": width,
            "vision_cfg": {"image_size": 32, "layers": args.vision_layers, "width": width, "head_width": 32,
                           "patch_size": 4},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": width, "heads": max(2, width // 32),
                         "layers": args.text_layers}}


def main() -> None:
    args = parse()
    import open_clip

    import stages.data.fmnist_demo as fm
    import stages.demo.data as dd
    import stages.demo.pretrain as dp

    # Knobs that live in module constants: the held-out pair, the pretraining styles and caption mix.
    heldout = [fm.FMNIST_NAMES.index(name) for name in args.heldout.split(",")]
    fm.HELDOUT_CLASSES[:] = heldout
    fm.ID_CLASSES[:] = [c for c in range(10) if c not in heldout]
    dd.PRETRAIN_SKETCH, dd.PRETRAIN_RENDITION = args.sketch_share, args.rendition_share
    dp.CAPTION_MIX = tuple(float(v) for v in args.caption_mix.split(","))

    from stages.config import VariantSpec, validate_workflow_config
    from stages.evaluation.run import evaluate, load_pretrained, load_run
    from stages.plan import train_config
    from stages.training.loop import train

    work = args.work / args.name
    (work / "models").mkdir(parents=True, exist_ok=True)
    model_name = f"TinyCLIP-calib-{args.name}"
    (work / "models" / f"{model_name}.json").write_text(json.dumps(model_config(args)))
    open_clip.add_model_config(work / "models")
    sizes = {"pretrain": args.pretrain_size, "train": 5000, "val": 500, "test": 1000, "group": 200, "sketch": 200,
             "rendition": 200, "heldout-group": 1000, "heldout": 500, "all": 500}
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    optim = raw["train_sets"]["fmnist-demo"]["optim"]
    for key, value in (("lr", args.ft_lr), ("epochs", args.ft_epochs), ("max_steps_per_epoch", args.ft_steps_per_epoch)):
        if value is not None:
            optim[key] = value
    rows = []
    print(json.dumps({"config": vars(args) | {"work": str(args.work)}, "model": model_config(args), "optim": optim}),
          flush=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        root = work / f"data-s{seed}"
        if not (root / "fmnist-demo" / "info.json").is_file():
            dd.build_demo_data(root / "fmnist-demo", dd.find_fashion_mnist(Path(".cache/fashion-mnist")), seed,
                               args.correlation, args.pretrain_correlation, sizes)
        weights = work / f"pretrained-s{seed}.pt"
        if not weights.is_file():
            summary = dp.pretrain(root, weights, model_name, args.steps, args.batch_size, args.lr, seed)
            print(json.dumps({"pretrain_seed": seed, **summary}), flush=True)

        def score(loaded) -> dict:
            out = {}
            for bench, metrics in (("demo-heldout-group", ("worst_group", "mean_group", "swap_rate")),
                                   ("demo-heldout", ("top1",)), ("demo-id", ("top1",))):
                payload = evaluate(bench, root, loaded, batch_size=500).payload
                for metric in metrics:
                    out[f"{bench}:{metric}"] = round(100 * payload["metrics"][metric], 2)
            return out

        row = {"pretrain_seed": seed, "method": "zeroshot", **score(load_pretrained(model_name, str(weights)))}
        rows.append(row)
        print(json.dumps(row), flush=True)
        raw.update(data_root=str(root), results=str(work / f"results-s{seed}"), archs={model_name: str(weights)})
        config = validate_workflow_config(raw)
        for method in [m for m in args.methods.split(",") if m]:
            for ft_seed in [int(s) for s in args.ft_seeds.split(",")]:
                run = train_config(config, model_name, "fmnist-demo", method, ft_seed, VariantSpec(), "official-code",
                                   "background", config.train_sets["fmnist-demo"].lam)
                run_dir = work / f"results-s{seed}" / method / f"seed{ft_seed}"
                started = time.perf_counter()
                train(run, run_dir)
                row = {"pretrain_seed": seed, "method": method, "ft_seed": ft_seed,
                       "train_s": round(time.perf_counter() - started, 1), **score(load_run(run_dir))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    # Summary: mean ± std per method over all (pretraining seed, fine-tuning seed) pairs.
    print(f"\n== {args.name} ==")
    keys = [k for k in rows[0] if ":" in k]
    print("method | " + " | ".join(keys))
    for method in dict.fromkeys(r["method"] for r in rows):
        values = np.array([[r[k] for k in keys] for r in rows if r["method"] == method])
        print(method + " | " + " | ".join(f"{m:.1f}±{s:.1f}" for m, s in zip(values.mean(0), values.std(0))))
    zs = np.array([[r["demo-heldout-group:worst_group"], r["demo-heldout-group:mean_group"], r["demo-heldout:top1"],
                    r["demo-id:top1"]] for r in rows if r["method"] == "zeroshot"])
    flyp = [r["demo-id:top1"] for r in rows if r["method"] == "flyp"]
    checks = [15 <= zs[:, 0].mean() <= 45, zs[:, 1].mean() >= 60, zs[:, 2].mean() >= 80,
              bool(flyp) and np.mean(flyp) - zs[:, 3].mean() >= 8,
              len(zs) >= 3 and bool((zs[:, :3].std(0) < 3).all())]
    print("criteria: " + "; ".join(f"{c}: {'ok' if ok else 'NO'}" for c, ok in zip(CRITERIA, checks)))


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    main()
