"""Ingest: source data to the platform tables, checked by the data contracts, as versioned snapshots."""

from recsys.ingest.snapshot import Dataset, load_dataset
from recsys.ingest.stage import IngestSummary, run_ingest

__all__ = ["Dataset", "IngestSummary", "load_dataset", "run_ingest"]
