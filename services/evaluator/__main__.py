"""Composition root of the evaluator service: `python -m services.evaluator`."""

from __future__ import annotations

from clipaudit.rpc.runtime import Runtime, ServiceParts, run_service
from services.evaluator.settings import EvaluatorSettings


def build(rt: Runtime) -> ServiceParts:
    return ServiceParts()


def main() -> None:
    run_service("evaluator", EvaluatorSettings(), build)


if __name__ == "__main__":
    main()
