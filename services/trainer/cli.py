"""``clipaudit train``: the trainer's use case from the command line.

Examples::

    clipaudit train --data out/synth --manifest out/m/natural --epochs 5 --out out/run1
    clipaudit train --data out/synth --mix out/m/natural:15000 --mix out/m/rendition:5000 --out out/mix
    clipaudit train --data out/synth --mix out/m/natural:w3 --mix out/m/rendition:w1 --total 20000 --out out/r13
    clipaudit train --spec job.json --out s3://clipaudit/runs/r1 --resume
    clipaudit train --mode supervised --model resnet18 --image-size 32 --data out/synth --out out/rn18

Multi-GPU: ``torchrun --nproc-per-node 8 -m clipaudit.cli train ...`` (DDP).
Heavy imports (torch, open_clip) happen inside the command only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipaudit.errors import InvalidInput


def parse_mix(text: str) -> dict:
    """``path:15000`` -> count, ``path:w3`` -> weight, ``path`` -> all of it (paths may hold ':')."""
    head, sep, tail = text.rpartition(":")
    if sep and head and tail.isdigit():
        return {"manifest": head, "count": int(tail)}
    if sep and head and tail.startswith("w"):
        try:
            return {"manifest": head, "weight": float(tail[1:])}
        except ValueError:
            pass
    return {"manifest": text}


def spec_from_args(args) -> dict:
    spec: dict = {}
    if args.spec:
        try:
            spec = json.loads(Path(args.spec).read_text())
        except (OSError, ValueError) as e:
            raise InvalidInput(f"cannot read job spec {args.spec}: {e}") from e
    flags = {
        "mode": args.mode, "data": args.data, "split": args.split, "manifest": args.manifest, "total": args.total,
        "model": args.model, "image_size": args.image_size, "label_column": args.label_column,
        "epochs": args.epochs, "samples": args.samples, "batch_size": args.batch_size,
        "accum_steps": args.accum_steps, "lr": args.lr, "weight_decay": args.wd, "warmup_steps": args.warmup,
        "grad_clip": args.grad_clip, "precision": args.precision, "seed": args.seed, "device": args.device,
        "threads": args.threads,
        "workers": args.workers, "cache": args.cache, "out": args.out, "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
    }
    spec.update({k: v for k, v in flags.items() if v is not None})
    if args.mix:
        spec["mixture"] = [parse_mix(m) for m in args.mix]
    if args.grad_checkpointing:
        spec["grad_checkpointing"] = True
    return spec


def cmd_train(args) -> int:
    import logging
    import os

    # before torch loads OpenMP: idle intra-op threads sleep instead of spinning on CPUs
    # that the data loader workers (or anyone else on the machine) need
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from services.trainer.handler import train
    from services.trainer.spec import parse_spec

    spec = parse_spec(spec_from_args(args))
    if not spec.out:
        raise InvalidInput("--out is required (a directory or s3://bucket/prefix)")
    if args.verbose_steps:
        logging.getLogger("services.trainer").setLevel(logging.INFO)
    result = train(spec, job_id=args.job_id or Path(spec.out.rstrip("/")).name, resume=args.resume,
                   show_progress=not args.quiet)
    print(json.dumps(result.summary(), indent=2, sort_keys=True))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train CLIP (or a supervised classifier) on a subset manifest",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", help="job spec JSON file (flags override its fields)")
    p.add_argument("--mode", choices=["clip", "supervised"])
    p.add_argument("--data", action="append", help="collection, shard .tar or directory of shards (repeatable)")
    p.add_argument("--split", help="split of a synthetic collection (default train)")
    p.add_argument("--manifest", help="subset manifest (its .parquet path or stem)")
    p.add_argument("--mix", action="append", metavar="MANIFEST[:COUNT|:wWEIGHT]",
                   help="mixture component (repeatable); weights need --total")
    p.add_argument("--total", type=int, help="mixture size shared out by the weights")
    p.add_argument("--model", help="open_clip name or JSON config (clip); timm name (supervised)")
    p.add_argument("--image-size", type=int, help="supervised input size")
    p.add_argument("--label-column", help="supervised label field of the sample json (default class)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float)
    g.add_argument("--samples", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--accum-steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--wd", type=float, help="weight decay")
    p.add_argument("--warmup", type=int, help="warmup steps")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--precision", choices=["fp32", "amp_bf16", "amp_fp16"])
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: one per idle CPU)")
    p.add_argument("--workers", type=int, help="data loader processes (streaming)")
    p.add_argument("--cache", choices=["auto", "memory", "stream"])
    p.add_argument("--out", help="output directory or s3://bucket/prefix")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--resume", action="store_true", default=False, help="continue from the last checkpoint in --out")
    p.add_argument("--job-id", help="name recorded in checkpoints (default: the --out basename)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose-steps", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)
