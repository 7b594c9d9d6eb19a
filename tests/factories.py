"""Seeded or hand-written input data shared by several test modules."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

Rows = Sequence[Sequence[object]]


def write_movielens_dir(folder: Path, ratings: Rows, movies: Rows, tags: Rows = ()) -> Path:
    """A tiny MovieLens directory, with the CRLF line endings of the real files."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[list[str], Rows]] = {
        "ratings.csv": (["userId", "movieId", "rating", "timestamp"], ratings),
        "movies.csv": (["movieId", "title", "genres"], movies),
        "tags.csv": (["userId", "movieId", "tag", "timestamp"], tags),
    }
    for name, (header, rows) in files.items():
        with (folder / name).open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(header)
            writer.writerows(rows)
    return folder
