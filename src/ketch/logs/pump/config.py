"""What the executor asks of a try's log pump, and what the try knows of itself.

Shared by three parties that must agree on it: the executors write it into the try's
environment (``$KETCH_LOG_PUMP``), the try reads it back with the metadata of its own
command line, and the pump process acts on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

# JSON: {"echo": bool, "json": bool, "ship": {...} | null, "coalesce": bool}
CONFIG_ENV = "KETCH_LOG_PUMP"


@dataclass
class PumpConfig:
    """What the executor asks of a try's pump (``$KETCH_LOG_PUMP``)."""

    echo_stdout: bool = False
    json_format: bool = False
    ship: dict[str, Any] | None = None  # ShipperConfig fields (pods with an S3 archive)
    coalesce: bool = True  # [logging] coalesce_print_bursts (ketch.worker.stdout_pacing)
    meta: dict[str, Any] = field(default_factory=dict)  # dag_id, run_id, task_id, try_number

    @classmethod
    def from_env(cls, meta: dict[str, Any]) -> PumpConfig:
        raw = os.environ.get(CONFIG_ENV)
        data = json.loads(raw) if raw else {}
        return cls(
            echo_stdout=bool(data.get("echo")),
            json_format=bool(data.get("json")),
            ship=data.get("ship") or None,
            coalesce=bool(data.get("coalesce", True)),
            meta=meta,
        )

    def to_env(self) -> str:
        return json.dumps(
            {
                "echo": self.echo_stdout,
                "json": self.json_format,
                "ship": self.ship,
                "coalesce": self.coalesce,
            }
        )


def meta_from_argv(argv: list[str]) -> dict[str, Any]:
    """dag_id, task_id, run_id and try_number from ``ketch task run``'s arguments."""
    meta: dict[str, Any] = {}
    positional = [a for a in argv if not a.startswith("--")][:3]
    for name, value in zip(("dag_id", "task_id", "run_id"), positional, strict=False):
        meta[name] = value
    if "--try" in argv:
        index = argv.index("--try") + 1
        if index < len(argv) and argv[index].isdigit():
            meta["try_number"] = int(argv[index])
    if "--map-index" in argv:
        index = argv.index("--map-index") + 1
        if index < len(argv) and argv[index].isdigit():
            meta["map_index"] = int(argv[index])
    return meta


def default_finish_timeout(config: PumpConfig) -> float:
    ship = config.ship or {}
    return float(ship.get("final_flush_timeout", 0)) + 5.0
