"""A short description of a generated collection, for the demo and the CLI."""

from __future__ import annotations

from typing import Any

from clipaudit.synth.collection import Collection


def summarize(location_or_collection) -> dict[str, Any]:
    """Counts per split x domain, groups, contamination and near-duplicates of the
    collection at ``location`` (a directory, ``s3://...``, a Store, or a loaded
    :class:`Collection`). JSON-serialisable; :func:`format_summary` renders it."""
    coll = location_or_collection if isinstance(location_or_collection, Collection) \
        else Collection.load(location_or_collection)
    splits = {}
    for name, s in coll.splits.items():
        splits[name] = {
            "kind": s.kind,
            "nominal_domain": s.nominal_domain,
            "count": s.count,
            "domains": dict(s.domains),
            "groups": dict(s.groups),
            "contaminated": s.contaminated,
            "near_duplicates": s.near_duplicates,
            "shards": len(s.shards),
            "bytes": sum(sh.bytes for sh in s.shards),
        }
    return {
        "location": coll.store.uri() if coll._store is not None else None,
        "name": coll.name,
        "preset": coll.preset,
        "seed": coll.seed,
        "image_size": coll.image_size,
        "classes": list(coll.classes),
        "domains": list(coll.domains),
        "backgrounds": list(coll.backgrounds),
        "common_background": dict(coll.common_background),
        "held_out_classes": list(coll.held_out_classes),
        "splits": splits,
        "total": sum(s["count"] for s in splits.values()),
        "near_duplicates": sum(s["near_duplicates"] for s in splits.values()),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per split, one column per domain."""
    doms = summary["domains"]
    head = ["split", "images", *doms, "common", "counter", "contam.", "near-dup"]
    rows = []
    for name, s in summary["splits"].items():
        rows.append([name, str(s["count"]), *(str(s["domains"].get(d, 0)) for d in doms),
                     str(s["groups"].get("common", 0)), str(s["groups"].get("counter", 0)),
                     str(s["contaminated"]), str(s["near_duplicates"])])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    by_bg: dict[str, list[str]] = {}
    for c, b in summary["common_background"].items():
        by_bg.setdefault(b, []).append(c)
    lines = [
        f"{summary['name']}: {summary['total']:,} images {summary['image_size']}x{summary['image_size']}, "
        f"{len(summary['classes'])} classes, {len(doms)} domains"
        + (f"  ({summary['location']})" if summary.get("location") else ""),
        fmt(head),
        *(fmt(r) for r in rows),
        "common backgrounds: " + "; ".join(f"{b}: {', '.join(cs)}" for b, cs in by_bg.items()),
        "held-out classes (suggested): " + ", ".join(summary["held_out_classes"]),
        f"planted near-duplicates in train: {summary['near_duplicates']}",
    ]
    return "\n".join(lines)
