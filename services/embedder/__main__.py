"""Composition root of the embedder service: `python -m services.embedder`."""

from __future__ import annotations

from clipaudit.rpc.runtime import Runtime, ServiceParts, run_service
from services.embedder.settings import EmbedderSettings


def build(rt: Runtime) -> ServiceParts:
    return ServiceParts()


def main() -> None:
    run_service("embedder", EmbedderSettings(), build)


if __name__ == "__main__":
    main()
