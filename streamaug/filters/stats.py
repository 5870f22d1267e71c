"""Acceptance statistics of a filter: how many candidates were generated and accepted."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AcceptanceStats:
    """Running counts; ``rate`` is ``accepted / generated`` (0 before anything was generated)."""

    generated: int = 0
    accepted: int = 0

    def update(self, generated: int, accepted: int) -> None:
        self.generated += int(generated)
        self.accepted += int(accepted)

    @property
    def rate(self) -> float:
        return self.accepted / self.generated if self.generated else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"generated": self.generated, "accepted": self.accepted, "rate": self.rate}
