"""Claim: our zero-shot accuracy equals CLIP_benchmark's on the same checkpoint and the
same local WebDataset test set (goal: within 0.1 points).

What it does:
1. generates the synthetic collection (tiny preset unless --collection is given);
2. exports each chosen test split to CLIP_benchmark's ``wds/`` layout
   (``test/0.tar`` with ``jpg`` + ``cls``, ``test/nshards.txt``, ``classnames.txt``,
   ``zeroshot_classification_templates.txt`` = the 80 OpenAI ImageNet templates);
3. saves a random-init ``clipaudit-tiny`` checkpoint per seed (different seeds give
   different accuracies, so agreement is checked on several distinct numbers);
4. runs our evaluator (in process) and ``clip_benchmark eval`` (its own virtualenv,
   ``--cb-python``) with ``--no_amp`` (fp32, the like-for-like comparison) and with its
   default bf16 autocast on CPU, and compares top-1, top-5 and mean per-class recall.

CLIP_benchmark 1.6.2 lives in a separate virtualenv, not in the project install:
    python -m venv /tmp/clipbench-venv && /tmp/clipbench-venv/bin/pip install clip-benchmark==1.6.2
(the venv may reuse this project's torch/open_clip through a .pth file). Our model config
is registered in its process with ``open_clip.add_model_config`` before its CLI runs.

Prints one JSON object; never fails on the numbers (``agree`` says whether the goal held).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def export_wds(split_dir: Path, classes: list[str], templates: list[str], out: Path) -> int:
    """A CLIP_benchmark WebDataset root for one split; returns the number of samples."""
    from clipaudit.shards import iter_samples

    (out / "test").mkdir(parents=True, exist_ok=True)
    n = 0
    with tarfile.open(out / "test" / "0.tar", "w") as tar:
        for shard in sorted(split_dir.glob("*.tar")):
            for s in iter_samples(shard):
                key = s["__key__"]
                for ext, data in (("jpg", s["jpg"]), ("cls", str(classes.index(s["json"]["class"])).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    import io

                    tar.addfile(info, io.BytesIO(data))
                n += 1
    (out / "test" / "nshards.txt").write_text("1\n")
    (out / "classnames.txt").write_text("\n".join(classes) + "\n")
    (out / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return n


def quick_train(train_dir: Path, seed: int, steps: int, out: Path) -> dict:
    """A few contrastive steps of the tiny CLIP on the synthetic train split (captions as text),
    so the compared model predicts more than one class (a random init collapses to one class,
    which would make top-1 agreement trivially easy). Saves a bare state dict."""
    import open_clip
    import torch

    from clipaudit.images import decode_image
    from clipaudit.models import load_clip
    from clipaudit.shards import iter_samples

    m = load_clip("clipaudit-tiny", seed=seed)
    model, pre, tok = m.model, m.preprocess, m.tokenizer
    samples = [s for shard in sorted(train_dir.glob("*.tar")) for s in iter_samples(shard)]
    x_all = torch.stack([pre(decode_image(s["jpg"])) for s in samples])
    t_all = tok([s["txt"] for s in samples])
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0, loss = time.perf_counter(), None
    for _ in range(steps):
        idx = torch.randperm(len(samples), generator=g)[:64]
        img, txt, scale = model(x_all[idx], t_all[idx])[:3]
        loss = loss_fn(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), out)
    return {"steps": steps, "final_loss": round(loss.item(), 4) if loss is not None else None,
            "seconds": round(time.perf_counter() - t0, 1)}


CB_RUNNER = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
sys.argv = ["clip_benchmark"] + sys.argv[2:]
from clip_benchmark.cli import main
main()
"""


def run_clip_benchmark(cb_python: str, wds_root: Path, ckpt: Path, out_json: Path, amp: bool) -> dict:
    args = [cb_python, "-c", CB_RUNNER, str(ROOT / "clipaudit" / "model_configs"), "eval",
            "--dataset", "wds/synth", "--dataset_root", str(wds_root), "--task", "zeroshot_classification",
            "--model", "clipaudit-tiny", "--pretrained", str(ckpt), "--output", str(out_json),
            "--batch_size", "64", "--num_workers", "0", "--quiet"]
    if not amp:
        args.append("--no_amp")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(wds_root))
    if proc.returncode != 0:
        raise RuntimeError(f"clip_benchmark failed: {proc.stderr[-1500:]}")
    res = json.loads(out_json.read_text())["metrics"]
    return {"top1": res["acc1"], "top5": res["acc5"], "mean_per_class_recall": res["mean_per_class_recall"],
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", help="an existing synthetic collection (default: generate tiny)")
    ap.add_argument("--splits", default="test_natural,test_sketch")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--cb-python", default="/tmp/clipbench-venv/bin/python")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-steps", type=int, default=150,
                    help="contrastive steps before comparing (0: random init, which predicts one class)")
    ap.add_argument("--quick", action="store_true", help="one split, one seed, 60 training steps")
    args = ap.parse_args(argv)

    import torch

    from clipaudit.models import load_clip
    from services.evaluator.handler import Evaluator
    from services.evaluator.logic import builtin_templates

    work = Path(tempfile.mkdtemp(prefix="cb-agree-"))
    if args.collection:
        coll = Path(args.collection)
    else:
        from clipaudit.synth import generate

        coll = work / "synth"
        generate("tiny", str(coll), seed=0, progress=False)
    classes = json.loads((coll / "collection.json").read_text())["classes"]
    templates = builtin_templates("openai_imagenet")
    splits = args.splits.split(",")[:1] if args.quick else args.splits.split(",")
    seeds = range(1 if args.quick else args.seeds)
    if not Path(args.cb_python).exists():
        print(json.dumps({"error": f"CLIP_benchmark python {args.cb_python} not found; see the module docstring"}))
        return 0

    cases, training = [], {}
    for split in splits:
        wds = work / "wds" / split
        n = export_wds(coll / split, classes, templates, wds)
        for seed in seeds:
            ckpt = work / f"tiny-seed{seed}.pt"
            if not ckpt.exists():
                steps = 60 if args.quick else args.train_steps
                if steps > 0:
                    training[seed] = quick_train(coll / "train", seed, steps, ckpt)
                else:
                    torch.save(load_clip("clipaudit-tiny", seed=seed).model.state_dict(), ckpt)
            t0 = time.perf_counter()
            ref = Evaluator().evaluate({"checkpoint": f"clipaudit-tiny@{ckpt}", "test_sets": [str(wds)],
                                        "out": str(work / "ours" / f"{split}-{seed}"),
                                        "spec": {"device": args.device}})
            ours_s = time.perf_counter() - t0
            rep = json.loads(Path(ref.uri).read_text())["test_sets"][0]
            ours = {k: rep["overall"][k] for k in ("top1", "top5", "mean_per_class_recall")}
            fp32 = run_clip_benchmark(args.cb_python, wds, ckpt, work / f"cb-{split}-{seed}-fp32.json", amp=False)
            bf16 = run_clip_benchmark(args.cb_python, wds, ckpt, work / f"cb-{split}-{seed}-amp.json", amp=True)
            diff = {k: round(100 * abs(ours[k] - fp32[k]), 4) for k in ours}
            cases.append({"split": split, "seed": seed, "n": n,
                          "distinct_classes_right": sum(1 for v in rep["breakdowns"]["class"].values() if v["top1"]), "templates": rep["n_templates"],
                          "ours": ours, "ours_seconds": round(ours_s, 2), "clip_benchmark_fp32": fp32,
                          "clip_benchmark_bf16_autocast": bf16, "diff_points_vs_fp32": diff,
                          "diff_top1_points_vs_bf16": round(100 * abs(ours["top1"] - bf16["top1"]), 4)})
    worst = max(max(c["diff_points_vs_fp32"].values()) for c in cases)
    print(json.dumps({
        "claim": "zero-shot top-1/top-5/mean-per-class-recall equal CLIP_benchmark 1.6.2 (--no_amp) within 0.1 points",
        "goal_points": 0.1, "worst_diff_points_vs_fp32": worst, "agree": worst <= 0.1,
        "worst_top1_diff_points_vs_bf16": max(c["diff_top1_points_vs_bf16"] for c in cases),
        "training": training, "cases": cases, "loadavg": os.getloadavg(), "torch_threads": torch.get_num_threads(),
        "device": args.device, "work_dir": str(work),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
