"""A simulated content/commerce platform: users with latent tastes, a growing catalogue, sessions on
devices and surfaces, position-biased clicks, dwell, conversions, late mobile events, double clicks,
bots and switchable drift. It writes the ingest tables and answers served recommendations.

Import from the modules (`settings`, `stage`, `world`): the package itself stays empty so that the
configuration can import `settings` without pulling in the writer and its Arrow schemas.
"""
