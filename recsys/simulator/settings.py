"""The simulator's typed configuration: world size, the behaviour model's knobs and the drift switch.

Every probability and rate of the generative model is here, so a run is fully described by this model
and its seed (the manifest of a run records it).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recsys.vocab import DEVICE_TYPES, SURFACES


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_mix(mix: tuple[float, ...], names: tuple[str, ...], what: str) -> tuple[float, ...]:
    if len(mix) != len(names):
        raise ValueError(f"{what} needs {len(names)} shares ({', '.join(names)}), got {len(mix)}")
    if any(share < 0 for share in mix) or sum(mix) <= 0:
        raise ValueError(f"{what} shares must be >= 0 and not all zero")
    return mix


class DriftSwitch(_Frozen):
    """A change of the world from ``at`` on: tastes move, a wave of items arrives, devices change."""

    at: datetime
    # Added to every user's taste vector after `at`, along one seeded direction in genre space.
    taste_shift: float = Field(default=1.5, ge=0)
    # Extra items published within `wave_days` after `at`, on top of the steady arrivals.
    new_items: int = Field(default=0, ge=0)
    wave_days: float = Field(default=3.0, gt=0)
    # Device shares (mobile, desktop, tv) of sessions that start after `at`; None keeps the base mix.
    device_mix: tuple[float, float, float] | None = (0.8, 0.1, 0.1)

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("device_mix")
    @classmethod
    def _mix(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None:
            _check_mix(value, DEVICE_TYPES, "drift.device_mix")
        return value


class SimulatorConfig(_Frozen):
    """Size of the simulated platform and the parameters of its behaviour model."""

    seed: int = 0
    n_users: int = Field(default=10_000, ge=1)
    n_items: int = Field(default=2_000, ge=1)
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    days: int = Field(default=30, ge=1)
    # Users generated and written per step: peak memory grows with it, not with n_users.
    chunk_users: int = Field(default=100_000, ge=1)

    # Traffic: sessions per user over the whole period (mean; per-user activity is log-normal).
    sessions_per_user: float = Field(default=0.8, gt=0)
    activity_sigma: float = Field(default=1.0, ge=0)
    requests_per_session: float = Field(default=1.4, ge=1)
    slate_size: int = Field(default=6, ge=1, le=100)
    # Share of shown items chosen from the user's favourite genres (the rest by popularity).
    personalisation: float = Field(default=0.5, ge=0, le=1)
    device_mix: tuple[float, float, float] = (0.55, 0.35, 0.10)
    surface_mix: tuple[float, float, float, float, float] = (0.5, 0.2, 0.05, 0.15, 0.1)

    # Behaviour: P(click) = relevance x position_bias(position) with position_bias(p) = p ** -exponent.
    position_bias_exponent: float = Field(default=0.8, ge=0)
    taste_scale: float = Field(default=1.2, gt=0)
    relevance_offset: float = Field(default=2.0)
    view_rate: float = Field(default=0.85, ge=0, le=1)
    like_rate: float = Field(default=0.35, ge=0, le=1)
    save_rate: float = Field(default=0.08, ge=0, le=1)
    skip_below_completion: float = Field(default=0.1, ge=0, le=1)
    cart_rate: float = Field(default=0.06, ge=0, le=1)
    purchase_rate: float = Field(default=0.5, ge=0, le=1)
    purchase_delay_hours: float = Field(default=12.0, gt=0)
    purchase_max_delay_days: float = Field(default=3.0, gt=0)

    # Data-quality realities the cleaning stage must handle.
    double_click_rate: float = Field(default=0.03, ge=0, le=1)
    late_mobile_rate: float = Field(default=0.1, ge=0, le=1)
    late_min_hours: float = Field(default=1.0, gt=0)
    late_mean_hours: float = Field(default=6.0, gt=0)
    # Bots click far above any person (the busiest simulated user makes a few hundred events a day) and
    # above cleaning's default daily bot threshold (5,000): each bot is active for `bot_days` days from a
    # random time, so with two or more days at least one whole UTC day carries its full daily rate.
    bot_fraction: float = Field(default=2e-5, ge=0, le=1)
    bot_events_per_day: int = Field(default=15_000, ge=1)
    bot_days: int = Field(default=2, ge=1)

    # Catalogue: share of items published before `start` (the rest arrive during the period).
    backlog_fraction: float = Field(default=0.6, ge=0, le=1)
    backlog_days: int = Field(default=365, ge=1)
    popularity_exponent: float = Field(default=1.0, ge=0)

    drift: DriftSwitch | None = None

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("device_mix")
    @classmethod
    def _devices(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        _check_mix(value, DEVICE_TYPES, "device_mix")
        return value

    @field_validator("surface_mix")
    @classmethod
    def _surfaces(
        cls, value: tuple[float, float, float, float, float]
    ) -> tuple[float, float, float, float, float]:
        _check_mix(value, SURFACES, "surface_mix")
        return value

    @model_validator(mode="after")
    def _drift_inside(self) -> SimulatorConfig:
        if self.drift is not None and not self.start <= self.drift.at <= self.end:
            raise ValueError(f"drift.at {self.drift.at} is outside the simulated period")
        return self

    @property
    def end(self) -> datetime:
        from datetime import timedelta

        return self.start + timedelta(days=self.days)
