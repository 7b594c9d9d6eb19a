"""Shared glue of the platform: configuration, the state directory, ingest, batch features and the CLI."""
