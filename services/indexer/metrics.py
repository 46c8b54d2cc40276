"""Prometheus metrics of the indexer, created in a registry passed in (never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IndexerMetrics:
    """Queries/s and bytes scanned/s are ``rate()`` of the counters below."""

    def __init__(self, registry: CollectorRegistry):
        self.vectors_indexed = Counter(
            "clipaudit_indexer_vectors_indexed_total", "Vectors added to kNN indexes", ["index"], registry=registry)
        self.index_vectors = Gauge(
            "clipaudit_indexer_index_vectors", "Vectors currently held by a loaded index", ["index"], registry=registry)
        self.queries = Counter(
            "clipaudit_indexer_queries_total", "kNN query vectors answered", ["kind"], registry=registry)
        self.query_seconds = Histogram(
            "clipaudit_indexer_query_seconds", "Latency of one Search call (all its query vectors)", ["kind"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.bytes_scanned = Counter(
            "clipaudit_indexer_bytes_scanned_total", "Embedding bytes scanned by bulk similarity, pruning, dedup",
            ["operation"], registry=registry)
        self.bulk_seconds = Histogram(
            "clipaudit_indexer_bulk_seconds", "Wall time of bulk jobs (similarity, prune, dedup, build)",
            ["operation"], registry=registry, buckets=(0.1, 1, 5, 30, 120, 600, 3600, 6 * 3600, 24 * 3600))
        self.scan_rate = Gauge(
            "clipaudit_indexer_last_scan_bytes_per_second", "Bytes scanned per second by the last bulk job",
            ["operation"], registry=registry)
        self.rejected = Counter(
            "clipaudit_indexer_rejected_total", "Requests or events refused (bad input, missing keys, model mix)",
            ["operation", "error"], registry=registry)
