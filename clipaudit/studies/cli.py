"""``clipaudit study run <config>``."""

from __future__ import annotations


def cmd_study_run(args) -> int:
    from clipaudit.studies.config import load_config
    from clipaudit.studies.runner import run_study

    cfg = load_config(args.config, **{"seed": args.seed, "studies": args.studies.split(",") if args.studies else None})
    ops, out = None, None
    if args.distributed:
        from clipaudit.studies.distributed import DistributedOps

        ops = DistributedOps.from_stack()
        out = ops.output_prefix(args.out)
    report = run_study(cfg, args.out, ops=ops, out=out)
    print_summary(report, args.out)
    return 0


def print_summary(report: dict, out_dir) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{report['name']} (seed {report['seed']})")
    for c in ("study", "finding", "verdict", "measured"):
        t.add_column(c, overflow="fold")
    for f in report["findings"]:
        v = {True: "[green]reproduced[/green]", False: "[red]NOT reproduced[/red]"}.get(f["reproduced"], "undetermined")
        t.add_row(f["study"], f["claim"], v, f["detail"])
    Console().print(t)
    if report.get("training_noise"):
        print(f"training noise: {report['training_noise']['summary']}")
    other = report.get("reused_from_other_code") or []
    if other:
        print(f"warning: {len(other)} step(s) were reused from a run by other code (e.g. {other[0]}); "
              f"their numbers are that code's. A fresh --out recomputes everything.")
    print(f"report: {out_dir}/report.html  (data: {out_dir}/report.json; {report['timings']['total_s']} s)")


def register(sub) -> None:
    p = sub.add_parser("study", help="run a study config end to end (embedded, or --distributed on the stack)")
    ssub = p.add_subparsers(dest="study_command", required=True)
    r = ssub.add_parser("run", help="run the DAG; steps whose outputs exist are skipped")
    r.add_argument("config", help="a YAML/JSON study config, or a built-in name (demo, laion-example)")
    r.add_argument("--out", default="out/study")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--studies", default=None, help="comma-separated subset: similarity,domains,dg_cg,backgrounds")
    r.add_argument("--distributed", action="store_true", help="through Kafka + MinIO + gRPC services (clipaudit serve all)")
    r.set_defaults(func=cmd_study_run)
