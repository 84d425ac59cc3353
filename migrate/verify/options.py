"""What one verification is asked to do: plain data, importable without torch (the command builds
it, the child process that runs the user's code receives it as JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class VerifyOptions:
    before: Path
    after: Path
    build: str
    inputs: list[str] = field(default_factory=list)
    plan: Path | None = None
    entry: str | None = None
    select: list[str] = field(default_factory=lambda: ["exact"])
    rtol: float = 1e-4
    atol: float = 1e-5

    def to_json(self) -> dict:
        return asdict(self) | {"before": str(self.before), "after": str(self.after),
                               "plan": str(self.plan) if self.plan else None}

    @classmethod
    def from_json(cls, data: dict) -> VerifyOptions:
        return cls(**data | {"before": Path(data["before"]), "after": Path(data["after"]),
                             "plan": Path(data["plan"]) if data["plan"] else None})
