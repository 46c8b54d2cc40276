"""Indexer subcommands: ``similarity``, ``prune``, ``dedup``, ``index``, ``search``.

Heavy imports (torch, faiss, the handler) happen inside the commands so that
``clipaudit --help`` stays fast.
"""

from __future__ import annotations

import json
import re


def _bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 8GiB, 512MiB)")
    unit = (m.group(2) or "b").lower()[0]
    return int(float(m.group(1)) * {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit])


def _handler(args, *, store: str | None = None):
    from clipaudit.store import open_store
    from services.indexer.handler import IndexerHandler, use_fixed_mmap_threshold
    from services.indexer.settings import IndexerSettings

    s = IndexerSettings()
    embed, model_id = None, None
    address = getattr(args, "embedder", None) or s.embedder_address
    if address and getattr(args, "text", None):
        from services.indexer.embedder_client import EmbedderTextClient

        embed = EmbedderTextClient(address)
    use_fixed_mmap_threshold()
    return IndexerHandler(
        open_store(store or getattr(args, "store", None) or s.store),
        embed_texts=embed, embedder_model_id=model_id,
        device=getattr(args, "device", None) or s.device,
        query_block=getattr(args, "query_block", None) or s.query_block,
        ref_block=getattr(args, "ref_block", None) or s.ref_block,
        memory_budget_bytes=s.memory_budget_bytes, default_index=s.default_index,
        progress=not getattr(args, "quiet", False))


def cmd_similarity(args) -> int:
    h = _handler(args, store=".")
    r = h.similarity(args.query, args.ref, args.out, k=args.k, approximate=args.approximate)
    print(f"wrote {r.out}: {r.queries} queries x {r.references} references, k={r.k}"
          f"{' (approximate)' if r.approximate else ' (exact)'} in {r.seconds:.2f} s, "
          f"{r.bytes_scanned / max(r.seconds, 1e-9) / 2**20:.1f} MiB/s scanned; "
          f"sim mean {r.frame['sim'].mean():.4f}, min {r.frame['sim'].min():.4f}, max {r.frame['sim'].max():.4f}")
    return 0


def cmd_prune(args) -> int:
    h = _handler(args, store=".")
    if args.rule in ("near", "far"):
        if not args.test or args.keep is None:
            raise _usage(f"prune {args.rule} needs --test and --keep")
        manifests = [h.prune_by_similarity(args.train, args.test, args.keep, args.rule, args.out)]
    elif args.rule == "random":
        if args.keep is None:
            raise _usage("prune random needs --keep")
        manifests = [h.prune_random(args.train, args.keep, args.seed, args.out)]
    else:
        if not args.tests or not args.reference:
            raise _usage("prune matched needs --tests and --reference")
        manifests = h.prune_matched(args.train, [t for t in args.tests.split(",") if t], args.reference, args.out)
    for m in manifests:
        p = m.lineage.parameters
        print(f"{m.uri}: kept {m.lineage.count} of {p.get('train_size')} (removed {p.get('removed')}), "
              f"rule {m.lineage.rule}" + (f", test set {p['test_set']}" if "test_set" in p else ""))
    return 0


def cmd_dedup(args) -> int:
    h = _handler(args, store=".")
    m = h.dedup(args.train, args.threshold, args.out, clusters=args.clusters, seed=args.seed)
    p = m.lineage.parameters
    print(f"{m.uri}: kept {m.lineage.count} of {p['train_size']} (removed {p['removed']} near-duplicates "
          f"at threshold {args.threshold}, {args.clusters} cluster(s))")
    return 0


def cmd_index(args) -> int:
    h = _handler(args)
    if args.action == "build":
        if not args.vectors:
            raise _usage("index build needs --vectors")
        info = h.build_index(args.vectors, args.name, index_type=args.type,
                             memory_budget_bytes=_bytes(args.memory_budget) if args.memory_budget else None,
                             append=args.append, shards=args.shards, announce=print)
    else:
        info = h.index_info(args.name)
    print(json.dumps(info.__dict__, indent=2, sort_keys=True))
    return 0


def cmd_search(args) -> int:
    import numpy as np

    h = _handler(args)
    vectors = None
    if args.vector:
        vectors = np.array([[float(v) for v in args.vector.split(",")]], dtype=np.float32)
    results = h.search(index=args.index, k=args.k, vectors=vectors, keys=args.key or None, text=args.text)
    queries = args.key or ([args.text] if args.text else ["vector"])
    print(json.dumps([{"query": q, "keys": ks, "similarities": [round(s, 6) for s in ss]}
                      for q, (ks, ss) in zip(queries, results)], indent=2))
    return 0


def _usage(msg: str):
    from clipaudit.errors import InvalidInput

    return InvalidInput(msg)


def register(sub) -> None:
    p = sub.add_parser("similarity", help="exact (or approximate) top-k similarity of a query set to a reference set")
    p.add_argument("--query", required=True, help="embedding set (dir or s3://...) of the query vectors (e.g. a test set)")
    p.add_argument("--ref", required=True, help="embedding set streamed as the reference (e.g. the training set)")
    p.add_argument("--out", required=True, help="output parquet: key, sim, ref_key (+ sims, ref_keys for k > 1)")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--approximate", action="store_true", help="through a FAISS index instead of the exact scan")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--query-block", type=int, default=None, help="query rows per matrix product")
    p.add_argument("--ref-block", type=int, default=None, help="reference rows streamed per block")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("prune", help="near/far/random/matched pruning of a training set -> subset manifest(s)")
    p.add_argument("rule", choices=["near", "far", "random", "matched"])
    p.add_argument("--train", required=True, help="training embedding set")
    p.add_argument("--test", help="test embedding set (near, far)")
    p.add_argument("--tests", help="comma-separated test embedding sets (matched)")
    p.add_argument("--reference", help="reference embedding set giving thr(t) = sim(t, R) (matched)")
    p.add_argument("--keep", type=int, help="training points to keep (near, far, random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="manifest location (matched: a directory, one manifest per test set + combined)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--query-block", type=int, default=None)
    p.add_argument("--ref-block", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("dedup", help="k-means + in-cluster greedy deduplication -> subset manifest")
    p.add_argument("--train", required=True)
    p.add_argument("--threshold", type=float, default=0.876)
    p.add_argument("--clusters", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("index", help="build, extend or describe a FAISS kNN index")
    p.add_argument("action", choices=["build", "info"])
    p.add_argument("--vectors", help="embedding set to index")
    p.add_argument("--name", default=None, help="index name (default: the settings' default_index)")
    p.add_argument("--type", default=None, help="faiss factory string (Flat, HNSW32, IVF1024,Flat...); default: chosen")
    p.add_argument("--memory-budget", default=None, help="e.g. 8GiB (default: settings)")
    p.add_argument("--append", action="store_true", help="add the vectors to an existing index")
    p.add_argument("--shards", type=int, default=1, help="split by key range into this many faiss indexes")
    p.add_argument("--store", default=None, help="where indexes live (dir or s3://...; default: settings.store)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="kNN search of an index by vector, by key or by text (through the embedder)")
    p.add_argument("--index", default=None)
    p.add_argument("--k", type=int, default=10)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--vector", help="comma-separated floats (normalised before searching)")
    g.add_argument("--key", action="append", help="an indexed key (repeatable)")
    g.add_argument("--text", help="a caption, embedded by the embedder service")
    p.add_argument("--embedder", default=None, help="embedder gRPC address host:port (for --text)")
    p.add_argument("--store", default=None)
    p.set_defaults(func=cmd_search)
