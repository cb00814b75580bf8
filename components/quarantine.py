"""Quarantine: every input that cannot become a contract sample is recorded
here with its reason, never dropped silently."""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Dict, List


@dataclasses.dataclass(frozen=True)
class QuarantineEntry:
    source: str   # file path, "file:row" or similar locator
    reason: str   # short machine-friendly category, e.g. "undecodable_image"
    detail: str = ""


class Quarantine:
    """Collects rejected inputs. ``len(q)`` is the number rejected."""

    def __init__(self):
        self.entries: List[QuarantineEntry] = []

    def add(self, source: str, reason: str, detail: str = "") -> None:
        self.entries.append(QuarantineEntry(str(source), reason, str(detail)))

    def extend(self, other: "Quarantine") -> None:
        self.entries.extend(other.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def by_reason(self) -> Dict[str, int]:
        return dict(collections.Counter(e.reason for e in self.entries))

    def summary(self) -> str:
        if not self.entries:
            return "quarantine: 0 inputs rejected"
        parts = ", ".join(f"{r}={n}" for r, n in sorted(self.by_reason().items()))
        return f"quarantine: {len(self)} inputs rejected ({parts})"

    def to_dict(self) -> dict:
        return {"count": len(self), "by_reason": self.by_reason(),
                "entries": [dataclasses.asdict(e) for e in self.entries]}

    def write(self, path: str) -> None:
        """JSON report: count, counts by reason and every entry."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def read(cls, path: str) -> "Quarantine":
        with open(path) as f:
            data = json.load(f)
        q = cls()
        for e in data.get("entries", []):
            q.add(e["source"], e["reason"], e.get("detail", ""))
        return q
