"""``clipaudit embed``: CLIP embeddings of a folder (or s3 prefix) of shards.

Heavy modules (torch, open_clip) are imported inside the command so that
``clipaudit --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys


def cmd_embed(args) -> int:
    # OpenMP threads that spin while waiting steal the cores the decode workers need
    # (measured: a tiny model fell from ~13,000 to ~190 img/s with a second busy
    # process); must be set before torch is imported. An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from services.embedder.handler import default_workers, embed_dataset

    summary = embed_dataset(
        args.data, args.model, args.out, text=args.text, batch_size=args.batch_size,
        workers=default_workers() if args.workers is None else args.workers, progress=not args.quiet,
        device=args.device, dtype=args.dtype, precision=args.precision, seed=args.seed,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    else:
        failed = f", {len(summary.parts_failed)} shard(s) failed" if summary.parts_failed else ""
        print(f"embedded {summary.images:,} images from {summary.parts_written} shard(s) "
              f"({summary.parts_skipped} already done{failed}, {summary.skipped_samples} bad sample(s) skipped) "
              f"in {summary.seconds:.1f} s: {summary.images_per_s:,.0f} images/s -> {summary.out}")
        for f in summary.parts_failed:
            print(f"  failed: {f}", file=sys.stderr)
    return 1 if summary.parts_failed else 0


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "embed", help="CLIP image (and caption) embeddings of WebDataset shards -> an embedding set",
        description="Embed every *.tar shard under --data (a directory, an s3:// prefix or one .tar) with "
                    "--model into the embedding set at --out (clip-retrieval layout: img_emb/, metadata/, "
                    "text_emb/). Shards already embedded from the same bytes by the same model are skipped.")
    s.add_argument("--data", required=True, help="directory, s3://bucket/prefix or a single .tar")
    s.add_argument("--model", default="clipaudit-tiny",
                   help="open_clip architecture name or a JSON config path, optionally @checkpoint "
                        "(local path or s3:// URI); without a checkpoint the model is randomly initialised")
    s.add_argument("--out", required=True, help="embedding set location: directory or s3://bucket/prefix")
    s.add_argument("--text", action="store_true", help="also embed the captions (txt) into text_emb/")
    s.add_argument("--batch-size", type=int, default=None, help="default: 256 on CPU, the largest that fits on GPU")
    s.add_argument("--workers", type=int, default=None, help="decode worker processes (default: all cores)")
    s.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    s.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored vector dtype")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast on GPU (auto: bf16 where supported); CPU always runs fp32")
    s.add_argument("--seed", type=int, default=0, help="init seed of a model without a checkpoint")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_embed)
