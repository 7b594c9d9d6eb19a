"""The latent behaviour model: what a user does with the items shown to them.

One function, :func:`behave`, turns shown slates into events for both the batch log and the live
responder, so offline data and online experiments come from the same model:

- relevance(u, i, t) = sigmoid(taste_scale * (taste_u + shift(t)) . genres_i + quality_i - offset)
- P(click) = relevance x position_bias(position), position_bias(p) = p ** -position_bias_exponent
- a click becomes a view with ``view_rate``; completion ~ Beta(1 + 4 r, 1 + 4 (1 - r));
  dwell = completion x duration; completion below ``skip_below_completion`` ends in a skip
- like and save after a view, add_to_cart after a click, purchase after the cart, hours to days later
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from recsys.simulator.catalogue import Catalogue
from recsys.simulator.population import to_us
from recsys.simulator.settings import SimulatorConfig
from recsys.vocab import EVENT_TYPES

KIND = {name: np.int8(code) for code, name in enumerate(EVENT_TYPES)}
_SECOND = 1_000_000
_HOUR = 3600 * _SECOND


@dataclass(frozen=True)
class Slates:
    """Shown items, one row per impression; ``late_us`` delays arrival at the server (offline mobile)."""

    user: np.ndarray  # int64 user index
    item: np.ndarray  # int64 item index
    position: np.ndarray  # int32, 1-based
    at_us: np.ndarray  # int64
    session: np.ndarray  # int64 session number within the user
    request: np.ndarray  # int64 request number, unique within a run
    device: np.ndarray  # int8 index into DEVICE_TYPES
    surface: np.ndarray  # int8 index into SURFACES
    late_us: np.ndarray  # int64, 0 unless the session's events reach the server late


@dataclass(frozen=True)
class EventBlock:
    """Events as columns of codes; -1 means null in ``dwell_ms``, ``surface``, ``position``, ``request``."""

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray
    dwell_ms: np.ndarray
    surface: np.ndarray
    session: np.ndarray
    device: np.ndarray
    position: np.ndarray
    request: np.ndarray
    event_us: np.ndarray
    server_us: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    def take(self, index: np.ndarray) -> EventBlock:
        return EventBlock(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(blocks: list[EventBlock]) -> EventBlock:
        return EventBlock(
            **{f.name: np.concatenate([getattr(b, f.name) for b in blocks]) for f in fields(EventBlock)}
        )


def position_bias(config: SimulatorConfig, position: np.ndarray) -> np.ndarray:
    """Probability that a user examines position ``position`` (1-based)."""
    return np.asarray(position, dtype=np.float64) ** -config.position_bias_exponent


def relevance(
    config: SimulatorConfig,
    taste: np.ndarray,
    catalogue: Catalogue,
    item: np.ndarray,
    at_us: np.ndarray,
    shift: np.ndarray,
) -> np.ndarray:
    """P(a user who examines the item clicks it), per row; ``taste`` has one row per impression.

    Args:
        taste: (n, n_genres) taste of the user of each row.
        shift: (n_genres,) drift added to every taste from ``drift.at`` on.
    """
    vector = catalogue.vector[item]  # (n, n_genres)
    affinity = np.einsum("ij,ij->i", taste, vector)
    if config.drift is not None:
        after = at_us >= to_us(config.drift.at)
        affinity = affinity + after * (vector @ shift)
    logit = config.taste_scale * affinity + catalogue.quality[item] - config.relevance_offset
    return np.asarray(1.0 / (1.0 + np.exp(-logit)), dtype=np.float64)


def behave(
    config: SimulatorConfig,
    slates: Slates,
    rel: np.ndarray,
    catalogue: Catalogue,
    rng: np.random.Generator,
) -> EventBlock:
    """Impressions and everything they lead to, with event and server times."""
    n = len(rel)
    click = rng.random(n) < rel * position_bias(config, slates.position)
    clicked = np.flatnonzero(click)
    r = rel[clicked]
    click_us = slates.at_us[clicked] + _SECOND + rng.exponential(8 * _SECOND, len(clicked)).astype(np.int64)

    double = rng.random(len(clicked)) < config.double_click_rate
    double_us = click_us[double] + rng.integers(50_000, 2 * _SECOND, int(double.sum()))

    viewed = rng.random(len(clicked)) < config.view_rate
    rv = r[viewed]
    completion = rng.beta(1 + 4 * rv, 1 + 4 * (1 - rv))
    view_us = click_us[viewed] + _SECOND
    dwell = np.round(completion * catalogue.duration_s[slates.item[clicked[viewed]]] * 1000).astype(np.int64)
    like = rng.random(len(rv)) < np.clip(config.like_rate * 2 * rv * completion, 0, 1)
    save = rng.random(len(rv)) < config.save_rate * rv
    skip = completion < config.skip_below_completion
    save_us = view_us[save] + (dwell[save] * 1000 * rng.random(int(save.sum()))).astype(np.int64)

    cart = rng.random(len(clicked)) < np.clip(config.cart_rate * 2 * r, 0, 1)
    cart_us = click_us[cart] + 5 * _SECOND + rng.exponential(120 * _SECOND, int(cart.sum())).astype(np.int64)
    buy = rng.random(len(cart_us)) < config.purchase_rate * np.sqrt(r[cart])
    delay = np.minimum(
        rng.exponential(config.purchase_delay_hours * _HOUR, int(buy.sum())),
        config.purchase_max_delay_days * 24 * _HOUR,
    ).astype(np.int64)
    buy_us = cart_us[buy] + delay

    views = clicked[viewed]
    source = [
        (np.arange(n), "impression", slates.at_us, None),
        (clicked, "click", click_us, None),
        (clicked[double], "click", double_us, None),
        (views, "view", view_us, dwell),
        (views[like], "like", view_us[like] + dwell[like] * 1000, None),
        (views[save], "save", save_us, None),
        (views[skip], "skip", view_us[skip] + dwell[skip] * 1000, None),
        (clicked[cart], "add_to_cart", cart_us, None),
        (clicked[cart][buy], "purchase", buy_us, None),
    ]
    row = np.concatenate([s[0] for s in source])
    kind = np.concatenate([np.full(len(s[0]), KIND[s[1]], dtype=np.int8) for s in source])
    event_us = np.concatenate([s[2] for s in source]).astype(np.int64)
    dwell_ms = np.concatenate([s[3] if s[3] is not None else np.full(len(s[0]), -1) for s in source])
    latency = rng.integers(20_000, 800_000, len(row))
    return EventBlock(
        user=slates.user[row],
        item=slates.item[row],
        kind=kind,
        dwell_ms=dwell_ms.astype(np.int64),
        surface=slates.surface[row],
        session=slates.session[row],
        device=slates.device[row],
        position=slates.position[row],
        request=slates.request[row],
        event_us=event_us,
        server_us=event_us + latency + slates.late_us[row],
    )
