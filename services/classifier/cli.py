"""``clipaudit domains train|report|filter|classify``: the classifier's commands.

Only arguments are declared here; numpy/torch load inside the command functions so
``clipaudit --help`` stays fast."""

from __future__ import annotations

import json
import sys


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _handler(args, **kw):
    from services.classifier.handler import ClassifierHandler

    return ClassifierHandler(progress=not getattr(args, "quiet", False), **kw)


def cmd_train(args) -> int:
    kw = {}
    if not args.label_column:
        if not args.model_spec:
            from clipaudit.errors import InvalidInput

            raise InvalidInput("without --label-column, give --model-spec (the CLIP model that made the embeddings) "
                               "to bootstrap labels zero-shot from text prompts")
        kw = text_embedder(args.model_spec, seed=args.model_seed)
    h = _handler(args, **kw)
    result = h.train(args.emb, out=args.out, label_column=args.label_column, classes=args.classes.split(","),
                     seed=args.seed, head=args.head, default_precision=args.default_precision,
                     strict_precision=args.strict_precision, keep_fraction=args.keep_fraction,
                     min_threshold=args.min_threshold)
    summary = result.summary()
    if args.json:
        _print(summary)
    else:
        print(f"trained {summary['classifier_id']} on {summary['labels_source']} "
              f"({'zero-shot bootstrapped labels' if summary['bootstrapped'] else 'given labels'}) -> {summary['model']}")
        for level, spec in summary["thresholds"].items():
            for c, ch in spec["per_class"].items():
                flag = "" if ch["reachable"] else "  UNREACHABLE: best reachable shown"
                print(f"  {level:7s} {c:10s} target {spec['target_precision']:.3f}  threshold {ch['threshold']:.4f}  "
                      f"val precision {ch['precision']:.4f} recall {ch['recall']:.4f}{flag}")
        for w in summary["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
    return 0


def text_embedder(spec: str, seed: int = 0) -> dict:
    """``embed_texts`` + ``text_model_id`` from a CLIP model spec (open_clip, never a hub)."""
    import numpy as np
    import torch

    from clipaudit.models import load_clip

    lm = load_clip(spec, seed=seed)

    def embed_texts(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            e = lm.model.encode_text(lm.tokenizer(texts)).float()
        return torch.nn.functional.normalize(e, dim=-1).numpy()

    return {"embed_texts": embed_texts, "text_model_id": lm.model_id}


def cmd_report(args) -> int:
    report = _handler(args).report(args.emb, args.model, nominal=args.nominal,
                                   columns=args.by.split(",") if args.by else None, out=args.out)
    _print(report)
    return 0


def cmd_filter(args) -> int:
    m = _handler(args).filter(args.emb, args.model, keep=args.keep, threshold=args.threshold, out=args.out)
    _print({"manifest": m.uri, "count": len(m), "lineage": m.lineage.model_dump()})
    return 0


def cmd_classify(args) -> int:
    """Classify every vector of a set and print per-row decisions as JSON lines."""
    from services.classifier.handler import open_embedding_set

    h = _handler(args)
    es = open_embedding_set(args.emb)
    for part, v, meta in es.iter_parts(columns=["key"]):
        r = h.classify(args.model, v, threshold=args.threshold, embedding_model_id=es.model_id)
        for key, label, s in zip(meta["key"], r.labels(), r.scores):
            print(json.dumps({"key": str(key), "decision": label,
                              **{f"p_{c}": round(float(p), 6) for c, p in zip(r.classes, s)}}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("domains", help="natural/rendition domain classifier: train, report contamination, filter")
    dsub = p.add_subparsers(dest="domains_command", required=True)

    s = dsub.add_parser("train", help="train the domain classifier on labelled (or zero-shot labelled) embeddings")
    s.add_argument("--emb", required=True, help="embedding set (directory or s3://...)")
    s.add_argument("--label-column", default=None,
                   help="metadata column with labels (e.g. domain_group, or domain with --classes natural,rendition); "
                        "omit to bootstrap labels zero-shot from text prompts (needs --model-spec)")
    s.add_argument("--classes", default="natural,rendition",
                   help="comma-separated classes; with two classes one of which is 'natural', every other label "
                        "value maps to the other class")
    s.add_argument("--out", required=True, help="classifier file to write (JSON; path or s3://...)")
    s.add_argument("--head", default="linear", choices=["linear", "mlp"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--default-precision", type=float, default=0.95, help="target precision of the default threshold")
    s.add_argument("--strict-precision", type=float, default=0.98, help="target precision of the strict threshold")
    s.add_argument("--min-threshold", type=float, default=0.5,
                   help="lowest score threshold considered (a head must find its class at least this likely)")
    s.add_argument("--model-spec", default=None, help="CLIP model for zero-shot prompts (must be the embedding model)")
    s.add_argument("--model-seed", type=int, default=0, help="init seed of a randomly initialised --model-spec")
    s.add_argument("--keep-fraction", type=float, default=0.5,
                   help="zero-shot: train on this most confident share of each pseudo-class")
    s.add_argument("--json", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    s = dsub.add_parser("report", help="domain shares with 95%% CIs and test-set contamination")
    s.add_argument("--emb", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--nominal", default=None, help="the domain this whole set claims (for its contamination)")
    s.add_argument("--by", default=None, help="label columns to break down by (default: those of "
                                              "split,class,domain,domain_group,group present)")
    s.add_argument("--out", default=None, help="also write the report JSON here")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_report)

    s = dsub.add_parser("filter", help="write a single-domain subset manifest (clean training / test subsets)")
    s.add_argument("--emb", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--keep", required=True, help="natural | rendition")
    s.add_argument("--threshold", default="strict", help="default | strict | a number in (0, 1)")
    s.add_argument("--out", required=True, help="manifest location (writes <out>.parquet + <out>.json)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_filter)

    s = dsub.add_parser("classify", help="print each vector's domain decision as JSON lines")
    s.add_argument("--emb", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--threshold", default="default")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_classify)
