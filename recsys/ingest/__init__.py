"""Ingest: source data to the platform tables, checked by the data contracts, as versioned snapshots.

Import from the modules (`stage`, `snapshot`, `cleaning`, ...): the package itself stays empty so that
the configuration can import `cleaning` without a cycle through the stage.
"""
