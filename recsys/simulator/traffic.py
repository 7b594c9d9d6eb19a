"""Sessions, requests and slates for a chunk of users, and the bots' inhuman click streams.

Everything is drawn as whole arrays: session counts per user, then session starts, then requests per
session, then slate positions, so the cost grows with the number of events, never with Python loops.
"""

from __future__ import annotations

import numpy as np

from recsys.simulator.behaviour import KIND, EventBlock, Slates
from recsys.simulator.catalogue import Catalogue
from recsys.simulator.population import US_PER_DAY, Population, taste_shift, to_us
from recsys.simulator.settings import SimulatorConfig
from recsys.vocab import DEVICE_TYPES, SURFACES

_SECOND = 1_000_000
_FAVOURITES = 3  # personalised slots draw from one of the user's top genres
# Request numbers of different chunks never collide: a chunk holds far fewer than 2**36 requests.
REQUEST_STRIDE = 1 << 36


def _categorical(rng: np.random.Generator, mix: tuple[float, ...], n: int) -> np.ndarray:
    cumulative = np.cumsum(mix) / np.sum(mix)
    return np.minimum(np.searchsorted(cumulative, rng.random(n), side="right"), len(mix) - 1).astype(np.int8)


def _within_group_rank(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... inside each run of equal values of a sorted ``group``."""
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    lengths = np.diff(np.r_[starts, len(group)])
    return np.asarray(np.arange(len(group)) - np.repeat(starts, lengths))


def _sessions(
    config: SimulatorConfig, users: Population, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per session: local user, start, number within the user (from 1), device, late-arrival delay."""
    start_us, end_us = to_us(config.start), to_us(config.end)
    counts = rng.poisson(config.sessions_per_user * users.activity)
    counts[users.is_bot] = 0
    user = np.repeat(np.arange(len(users)), counts)
    low = np.maximum(users.signup_us[user], start_us)
    begin = low + (rng.random(len(user)) * (end_us - low)).astype(np.int64)
    order = np.lexsort((begin, user))
    user, begin = user[order], begin[order]
    number = _within_group_rank(user) + 1
    device = _categorical(rng, config.device_mix, len(user))
    drift = config.drift
    if drift is not None and drift.device_mix is not None:
        after = begin >= to_us(drift.at)
        device = np.where(after, _categorical(rng, drift.device_mix, len(user)), device)
    mobile = device == DEVICE_TYPES.index("mobile")
    late = mobile & (rng.random(len(user)) < config.late_mobile_rate)
    hours = config.late_min_hours + rng.exponential(config.late_mean_hours - config.late_min_hours, len(user))
    late_us = np.where(late, (hours * 3600 * _SECOND).astype(np.int64), 0)
    return user, begin, number, device, late_us


def make_slates(
    config: SimulatorConfig, users: Population, catalogue: Catalogue, chunk: int, rng: np.random.Generator
) -> Slates:
    """The slates shown to the (human) users of one chunk over the simulated period."""
    s_user, s_begin, s_number, s_device, s_late = _sessions(config, users, rng)
    n_requests = 1 + rng.poisson(config.requests_per_session - 1, len(s_user))
    session = np.repeat(np.arange(len(s_user)), n_requests)
    gap = rng.exponential(90 * _SECOND, len(session)).astype(np.int64)
    gap[np.r_[0, np.cumsum(n_requests)[:-1]]] = 0
    offset = np.cumsum(gap)
    offset -= np.repeat(offset[np.r_[0, np.cumsum(n_requests)[:-1]]], n_requests)
    r_at = s_begin[session] + offset
    r_surface = _categorical(rng, config.surface_mix, len(session))

    k = config.slate_size
    request = np.repeat(np.arange(len(session)), k)
    local_user = s_user[session][request]
    at_us = r_at[request]
    taste = users.taste
    favourites = np.argpartition(-taste, _FAVOURITES - 1, axis=1)[:, :_FAVOURITES]
    pick = rng.integers(0, _FAVOURITES, len(request))
    genre = favourites[local_user, pick]
    if config.drift is not None:
        shifted = np.argpartition(-(taste + taste_shift(config)), _FAVOURITES - 1, axis=1)[:, :_FAVOURITES]
        genre = np.where(at_us >= to_us(config.drift.at), shifted[local_user, pick], genre)
    personal = rng.random(len(request)) < config.personalisation
    pool = np.where(personal, genre, catalogue.all_pool)
    item = catalogue.draw(pool, at_us, rng.random(len(request)))
    missing = item < 0  # the genre had nothing published yet: fall back to the whole catalogue
    if missing.any():
        item[missing] = catalogue.draw(
            np.full(int(missing.sum()), catalogue.all_pool), at_us[missing], rng.random(int(missing.sum()))
        )
    return Slates(
        user=users.first + local_user.astype(np.int64),
        item=item.astype(np.int64),
        position=np.tile(np.arange(1, k + 1, dtype=np.int32), len(session)),
        at_us=at_us,
        session=s_number[session][request],
        request=chunk * REQUEST_STRIDE + request,
        device=s_device[session][request],
        surface=r_surface[request],
        late_us=s_late[session][request],
    )


def bot_events(
    config: SimulatorConfig, users: Population, catalogue: Catalogue, rng: np.random.Generator
) -> EventBlock:
    """Clicks of the chunk's bots: ``bot_events_per_day`` a day for ``bot_days`` days, on desktop search."""
    bots = np.flatnonzero(users.is_bot)
    per_bot = config.bot_events_per_day * config.bot_days
    start_us = to_us(config.start)
    window = config.bot_days * US_PER_DAY
    latest = max(start_us, to_us(config.end) - window)
    first = start_us + (rng.random(len(bots)) * (latest - start_us)).astype(np.int64)
    user = np.repeat(bots, per_bot)
    event_us = np.repeat(first, per_bot) + (rng.random(len(user)) * window).astype(np.int64)
    item = catalogue.draw(np.full(len(user), catalogue.all_pool), event_us, rng.random(len(user)))
    n = len(user)
    return EventBlock(
        user=users.first + user.astype(np.int64),
        item=item.astype(np.int64),
        kind=np.full(n, KIND["click"], dtype=np.int8),
        dwell_ms=np.full(n, -1, dtype=np.int64),
        surface=np.full(n, SURFACES.index("search"), dtype=np.int8),
        session=1 + (event_us - np.repeat(first, per_bot)) // US_PER_DAY,
        device=np.full(n, DEVICE_TYPES.index("desktop"), dtype=np.int8),
        position=np.full(n, -1, dtype=np.int32),
        request=np.full(n, -1, dtype=np.int64),
        event_us=event_us,
        server_us=event_us + rng.integers(20_000, 200_000, n),
    )
