"""Composition root of the indexer service: `python -m services.indexer`."""

from __future__ import annotations

from clipaudit.rpc.runtime import Runtime, ServiceParts, run_service
from services.indexer.settings import IndexerSettings


def build(rt: Runtime) -> ServiceParts:
    return ServiceParts()


def main() -> None:
    run_service("indexer", IndexerSettings(), build)


if __name__ == "__main__":
    main()
