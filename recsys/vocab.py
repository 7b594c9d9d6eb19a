"""Fixed vocabularies shared by ingest, features, models and serving.

The genre order defines the layout of every genre vector; appending is safe, reordering is not.
"""

from __future__ import annotations

GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "IMAX",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

EVENT_TYPES: tuple[str, ...] = (
    "impression",
    "click",
    "view",
    "like",
    "save",
    "add_to_cart",
    "purchase",
    "skip",
)
POSITIVE_EVENT_TYPES: frozenset[str] = frozenset({"like", "save", "purchase"})
SURFACES: tuple[str, ...] = ("homepage", "search", "email", "pdp", "more_like_this")
DEVICE_TYPES: tuple[str, ...] = ("mobile", "desktop", "tv")
