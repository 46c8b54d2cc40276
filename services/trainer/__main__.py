"""Composition root of the trainer service: `python -m services.trainer`."""

from __future__ import annotations

from clipaudit.rpc.runtime import Runtime, ServiceParts, run_service
from services.trainer.settings import TrainerSettings


def build(rt: Runtime) -> ServiceParts:
    return ServiceParts()


def main() -> None:
    run_service("trainer", TrainerSettings(), build)


if __name__ == "__main__":
    main()
