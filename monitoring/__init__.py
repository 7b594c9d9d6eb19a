"""Monitoring: data drift between a reference window and the current window of the event log."""
