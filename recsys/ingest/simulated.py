"""The simulator's output as an ingest source.

The simulator writes ``interaction_events``, ``items`` and ``users`` in the shared Arrow schemas, so its
column mapping is the identity and no mapping file is needed: the tables are read as they are and go
through the same contracts and cleaning as any other source (the simulator's bots, double clicks and late
mobile events are what cleaning is for). Its events are date-partitioned, so ingest reads them a few days
at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from recsys.ingest.movielens import RawTables
from recsys.ingest.schema import ITEMS_SCHEMA, USERS_SCHEMA, to_pandas
from recsys.simulator.settings import SimulatorConfig


def ensure_simulated(config: SimulatorConfig, out_dir: Path) -> dict[str, Any]:
    """The manifest of the simulation in ``out_dir``, running ``config`` there first when it is absent.

    Raises:
        FileExistsError: ``out_dir`` holds a simulation of another configuration.
    """
    from recsys.simulator.stage import run_simulate

    run_simulate(config, out_dir)
    manifest: dict[str, Any] = json.loads((out_dir / "manifest.json").read_text())
    return manifest


def read_simulated_catalogue(out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The items and users of a simulation in pandas form, ready for the contracts (its events are read
    a few days at a time by ``recsys.ingest.chunked.PartitionedLog``)."""
    items = to_pandas(pq.read_table(out_dir / "items.parquet", schema=ITEMS_SCHEMA))
    # Arrow lists come back as numpy arrays; the items contract expects Python lists.
    items["categories"] = items["categories"].map(list)
    users = to_pandas(pq.read_table(out_dir / "users.parquet", schema=USERS_SCHEMA))
    return items, users


def read_simulated(out_dir: Path) -> RawTables:
    """The three tables of a simulation in pandas form (all events at once: small simulations only)."""
    from recsys.simulator.writer import read_events

    items, users = read_simulated_catalogue(out_dir)
    return RawTables(events=to_pandas(read_events(out_dir)), items=items, users=users)
