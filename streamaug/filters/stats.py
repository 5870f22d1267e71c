"""Acceptance statistics of a filter: how many candidates were generated and accepted."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class AcceptanceStats:
    """Running counts.

    ``rate`` is ``accepted / generated`` (0 before anything was generated); ``per_accepted`` is its
    inverse, the candidates scored per accepted sample (None before anything was accepted).
    """

    generated: int = 0
    accepted: int = 0

    def update(self, generated: int, accepted: int) -> None:
        self.generated += int(generated)
        self.accepted += int(accepted)

    @property
    def rate(self) -> float:
        return self.accepted / self.generated if self.generated else 0.0

    @property
    def per_accepted(self) -> float | None:
        return self.generated / self.accepted if self.accepted else None

    def as_dict(self) -> dict[str, Any]:
        return {"generated": self.generated, "accepted": self.accepted, "rate": self.rate,
                "candidates_per_accepted": self.per_accepted}

    def state_dict(self) -> dict[str, int]:
        return {"generated": self.generated, "accepted": self.accepted}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.generated, self.accepted = int(state["generated"]), int(state["accepted"])
