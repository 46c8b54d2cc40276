"""Composition root of the classifier service: `python -m services.classifier`."""

from __future__ import annotations

from clipaudit.rpc.runtime import Runtime, ServiceParts, run_service
from services.classifier.settings import ClassifierSettings


def build(rt: Runtime) -> ServiceParts:
    return ServiceParts()


def main() -> None:
    run_service("classifier", ClassifierSettings(), build)


if __name__ == "__main__":
    main()
