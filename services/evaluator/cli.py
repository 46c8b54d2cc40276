"""``clipaudit evaluate`` and ``clipaudit compare``: the same handler the service runs."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="zero-shot / classifier evaluation of a checkpoint on test sets "
                                               "-> report.json + report.html")
    p.add_argument("--checkpoint", required=True,
                   help="<arch>[@<ckpt path|s3 uri>], a checkpoint file naming its arch, or timm:<name>")
    p.add_argument("--test", required=True, help="test-set location(s), comma-separated (shard dir, CLIP_benchmark "
                                                 "wds root, or embedding set)")
    p.add_argument("--templates", help="built-in set name (openai_imagenet), a file, or templates joined by '|'")
    p.add_argument("--classnames", help="file with one class name per line")
    p.add_argument("--similarity", help="parquet with key + nn_similarity (the indexer's output)")
    p.add_argument("--similarity-column", help="default: nn_similarity, or the indexer's 'sim'")
    p.add_argument("--bins", type=int, default=10, help="similarity bins (equal width)")
    p.add_argument("--mechanistic", help="two or more domains, e.g. natural,sketch,quickdraw: CKA + neuron sharing per layer, every pair")
    p.add_argument("--mechanistic-classes", action="append", default=[], metavar="NAME=c1,c2,...",
                   help="with --mechanistic: every pair again on these classes alone (e.g. held-out=...), repeatable")
    p.add_argument("--subset", action="append", default=[], metavar="NAME=c1,c2,...",
                   help="label subset (candidate classes), repeatable")
    p.add_argument("--one-vs-k", type=int, action="append", default=[], help="1-vs-k accuracy, repeatable")
    p.add_argument("--family", help="model family for effective-robustness fits (default clip/supervised)")
    p.add_argument("--label", help="model name in tables")
    p.add_argument("--spec", help="full evaluation spec as JSON (overrides the options above)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="report directory (local or s3://)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    c = subparsers.add_parser("compare", help="compare evaluation reports -> comparison.json + comparison.html")
    c.add_argument("reports", nargs="+", help="report.json locations")
    c.add_argument("--space", choices=["logit", "linear"], default="logit", help="effective-robustness fit space")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_compare)


def _named_lists(options: list[str], flag: str) -> dict[str, list[str]]:
    """Repeated NAME=a,b,c options -> {NAME: [a, b, c]}."""
    from clipaudit.errors import InvalidInput

    named = {}
    for s in options:
        name, sep, classes = s.partition("=")
        if not sep or not name or not classes:
            raise InvalidInput(f"{flag} {s!r}: expected NAME=class1,class2,...")
        named[name] = classes.split(",")
    return named


def _spec_from_args(args) -> dict:
    from pathlib import Path

    from clipaudit.errors import InvalidInput, NotFound

    if args.spec:
        try:
            return json.loads(args.spec)
        except ValueError as e:
            raise InvalidInput(f"--spec is not JSON: {e}") from e
    spec: dict = {"device": args.device, "batch_size": args.batch_size, "similarity_column": args.similarity_column,
                  "similarity_bins": args.bins, "one_vs_k": args.one_vs_k}
    if args.templates:
        spec["templates"] = args.templates.split("|") if ("{" in args.templates or "|" in args.templates) else args.templates
    if args.classnames:
        p = Path(args.classnames)
        if not p.is_file():
            raise NotFound(f"class-name file {p} does not exist")
        spec["classnames"] = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if args.similarity:
        spec["similarity"] = args.similarity
    if args.mechanistic_classes and not args.mechanistic:
        raise InvalidInput("--mechanistic-classes needs --mechanistic (the domains to compare)")
    if args.mechanistic:
        spec["mechanistic"] = {"domains": args.mechanistic.split(","),
                               "class_subsets": _named_lists(args.mechanistic_classes, "--mechanistic-classes")}
    spec["label_subsets"] = _named_lists(args.subset, "--subset")
    for k in ("family", "label"):
        if getattr(args, k):
            spec[k] = getattr(args, k)
    return spec


def cmd_evaluate(args) -> int:
    from services.evaluator.handler import Evaluator

    req = {"checkpoint": args.checkpoint, "test_sets": [t for t in args.test.split(",") if t], "out": args.out,
           "spec": _spec_from_args(args)}
    tty = sys.stderr.isatty() and not args.quiet

    def progress(stage, done, total, message):
        if tty:
            print(f"\r{stage}: {done}{'/' + str(total) if total else ''} {message[:60]:<60}", end="", file=sys.stderr)

    ref = Evaluator().evaluate(req, progress=progress)
    if tty:
        print(file=sys.stderr)
    print(json.dumps({"report": ref.uri, "html": ref.html_uri, "images": ref.rows, "top1": ref.summary}, indent=2))
    return 0


def cmd_compare(args) -> int:
    from services.evaluator.handler import Evaluator

    ref, comparison = Evaluator().compare(args.reports, args.out, space=args.space)
    print(json.dumps({"comparison": ref.uri, "html": ref.html_uri, "rows": len(comparison["rows"])}, indent=2))
    return 0
