"""Prometheus metrics of the embedder, created in a registry passed in (never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Low-cardinality kinds of a skipped sample (the label of ``decode_errors``).
ERROR_KINDS = ("zero_byte", "truncated", "too_large", "corrupt", "no_image", "shard")


def error_kind(message: str) -> str:
    """One of :data:`ERROR_KINDS` for a skip reason (the full reason goes to the log)."""
    m = message.lower()
    if m.startswith("shard:"):
        return "shard"
    if "zero-byte" in m:
        return "zero_byte"
    if "too large" in m:
        return "too_large"
    if "no image" in m or "not bytes" in m:
        return "no_image"
    if "truncated" in m:
        return "truncated"
    return "corrupt"


class EmbedderMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.images = Counter("clipaudit_embedder_images_total", "Images embedded",
                              ["source"], registry=registry)  # source: dataset | grpc
        self.texts = Counter("clipaudit_embedder_texts_total", "Texts embedded", registry=registry)
        self.images_per_second = Gauge("clipaudit_embedder_images_per_second",
                                       "Throughput of the running (or last) dataset/shard job, images per second",
                                       registry=registry)
        self.batch_seconds = Histogram(
            "clipaudit_embedder_batch_seconds",
            "Wall time of one image batch from its launch on the device to its embeddings on the host",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.decode_errors = Counter("clipaudit_embedder_decode_errors_total",
                                     "Samples skipped because their image (or shard) could not be read",
                                     ["kind"], registry=registry)
        self.shards = Counter("clipaudit_embedder_shards_total", "Shards handled, by outcome",
                              ["outcome"], registry=registry)  # written | skipped | failed
        self.gpu_memory = Gauge("clipaudit_embedder_gpu_memory_bytes", "CUDA memory of the embedder process",
                                ["kind"], registry=registry)  # allocated | reserved | peak

    def skipped(self, reason: str) -> None:
        self.decode_errors.labels(error_kind(reason)).inc()

    def observe_gpu(self) -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.gpu_memory.labels("allocated").set(torch.cuda.memory_allocated())
            self.gpu_memory.labels("reserved").set(torch.cuda.memory_reserved())
            self.gpu_memory.labels("peak").set(torch.cuda.max_memory_allocated())
