"""The ``clipaudit`` command line. ``main(argv)`` returns an exit code, so tests call
the CLI as a function.

Core commands live here; each service contributes its own subcommands through
``services/<name>/cli.py: register(subparsers)``, which only declares arguments and
imports heavy modules (torch, faiss) inside the command it runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from clipaudit import __version__
from clipaudit.errors import ClipauditError

SERVICE_COMMAND_MODULES = [
    "services.embedder.cli",
    "services.indexer.cli",
    "services.classifier.cli",
    "services.trainer.cli",
    "services.evaluator.cli",
    "clipaudit.studies.cli",
]


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# -- stack ---------------------------------------------------------------------------

def cmd_stack(args) -> int:
    from rich.console import Console

    from clipaudit import stack
    from clipaudit.config import StackSettings

    settings = StackSettings()
    console = Console(stderr=True)
    if args.action == "tools":
        result = {k: str(v) for k, v in stack.ensure_tools(settings, console).items()}
        _print_json(result) if args.json else [print(f"{k:11s} {v}") for k, v in result.items()]
        return 0
    if args.action == "up":
        result = stack.up(settings, console)
    elif args.action == "down":
        result = stack.down(settings)
    else:
        result = stack.status(settings)
    if args.json:
        _print_json(result)
    else:
        Console().print(stack.status_table(stack.status(settings)))
    if args.action == "status" and not all(v.get("ready") for v in result.values()):
        return 1
    return 0


# -- synth -----------------------------------------------------------------------------

def cmd_synth(args) -> int:
    from clipaudit.synth import generate

    report = generate(args.preset, args.out, seed=args.seed, workers=args.workers, progress=not args.quiet)
    print(f"wrote collection to {report.location}: {report.total} images in {report.seconds:.1f} s "
          f"({report.images_per_s:,.0f} img/s)")
    return 0


# -- manifest --------------------------------------------------------------------------

def cmd_manifest(args) -> int:
    from clipaudit.manifests import diff_manifests, read_manifest

    if args.action == "show":
        m = read_manifest(args.manifest)
        out = {"uri": m.uri, "count": len(m), "lineage": m.lineage.model_dump(), "first_keys": m.keys[: args.head]}
    else:
        out = diff_manifests(read_manifest(args.manifest), read_manifest(args.other))
    _print_json(out)
    return 0


# -- serve -----------------------------------------------------------------------------

def cmd_serve(args) -> int:
    from clipaudit.serve import serve

    return serve(args.service, bus=args.bus, store=args.store, detach=args.detach, stop=args.stop)


# -- demo ------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    try:
        mod = importlib.import_module("clipaudit.studies.demo")
    except ModuleNotFoundError:
        mod = None
    if mod is not None and hasattr(mod, "run_demo"):
        return mod.run_demo(args)
    # Until the studies exist the demo runs what exists: the synthetic collection and its summary.
    from clipaudit.synth import generate, summarize

    out = Path(args.out)
    print("clipaudit demo: the four studies are not implemented yet; generating the synthetic collection "
          "and summarising it.")
    report = generate(args.preset, out / "collection", seed=args.seed, progress=True)
    print(f"generated {report.total} images in {report.seconds:.1f} s ({report.images_per_s:,.0f} img/s)")
    print(summarize(out / "collection"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipaudit", description="Where does CLIP's OOD accuracy come from?")
    p.add_argument("--version", action="version", version=f"clipaudit {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stack", help="start/stop/report the real local servers (Kafka, MinIO, Prometheus)")
    s.add_argument("action", choices=["up", "down", "status", "tools"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stack)

    s = sub.add_parser("synth", help="generate the built-in synthetic multi-domain collection")
    s.add_argument("--preset", default="small", help="tiny | small | paper")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="local directory or s3://bucket/prefix")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("manifest", help="inspect subset manifests")
    s.add_argument("action", choices=["show", "diff"])
    s.add_argument("manifest")
    s.add_argument("other", nargs="?")
    s.add_argument("--head", type=int, default=5)
    s.set_defaults(func=cmd_manifest)

    s = sub.add_parser("serve", help="run services as separate processes against the stack")
    s.add_argument("service", help="embedder | indexer | classifier | trainer | evaluator | all")
    s.add_argument("--bus", default=None, help="kafka://host:port (default: the local stack) or memory")
    s.add_argument("--store", default=None, help="s3://bucket/prefix (default: the stack's bucket) or a directory")
    s.add_argument("--detach", action="store_true", help="start in the background and return")
    s.add_argument("--stop", action="store_true", help="stop detached services")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("demo", help="run the four studies end to end on synthetic data (embedded mode)")
    s.add_argument("--preset", default="small")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--seeds", type=int, default=1)
    s.add_argument("--study", default="all")
    s.add_argument("--out", default="out/demo")
    s.set_defaults(func=cmd_demo)

    for name in SERVICE_COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ClipauditError as e:
        print(f"clipaudit {args.command}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
