"""Feast definitions of the recommendation features: the single source of truth for training and serving.

`feast apply` at the repository root imports only the modules of this package (see `.feastignore`).
Each Feast object is imported from its own module (``feature_repo.entities`` and so on), never twice.
"""
