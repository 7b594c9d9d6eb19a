"""Online serving: a Ray Serve graph, ingress -> retrieval -> ranking, behind one HTTP API.

The request logic (`recommender`, `stages`) and the HTTP surface (`api`, `schemas`) are plain Python,
testable without Ray; `app` wraps them in Serve deployments that load the champion models once.
"""
