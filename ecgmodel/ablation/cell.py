"""``Cell``: one fine-tuning run of an ablation, named by its identity instead of a position in a tuple.

Identity (:attr:`Cell.key`): role (``tuning`` or ``cell``), arm (``random``, ``supervised``, ``ssl``,
``ssl-<pretext>``), the pretraining run's content digest (sha256 of its encoder file; empty for arms that are not
pretrained), mode, label fraction, fine-tuning seed and the schedule-grid index (tuning runs; -1 for cells). Resume,
pairing in the bootstrap and the report folder all use this identity, never a path or a position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TUNING = "tuning"
CELL = "cell"


@dataclass(frozen=True)
class Cell:
    role: str
    arm: str
    pretrain_id: str
    mode: str
    fraction: float
    seed: int
    grid: int = -1
    pretrain_ref: str = field(default="", compare=False)  # the reference given (path/URI): not identity
    pretrain_index: int = field(default=0, compare=False)  # position in the arm's list, for names only

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", round(float(self.fraction), 6))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "grid", int(self.grid))

    @property
    def key(self) -> tuple:
        return (self.role, self.arm, self.pretrain_id, self.mode, self.fraction, self.seed, self.grid)

    @property
    def name(self) -> str:
        """Readable and unique within an ablation (folder and MLflow run name)."""
        pre = f"-p{self.pretrain_id[:8]}" if self.pretrain_id else ""
        base = f"{self.arm}{pre}-{self.mode}-f{self.fraction:g}-s{self.seed}"
        return f"tune-{base}-g{self.grid}" if self.role == TUNING else base

    def row(self) -> dict[str, Any]:
        """The identity columns of the cell's row in cells.csv (``init`` is the arm, as the report reads it)."""
        return {"role": self.role, "init": self.arm, "pretrain_id": self.pretrain_id, "mode": self.mode,
                "fraction": self.fraction, "seed": self.seed, "grid": self.grid, "name": self.name}  # fmt: skip

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Cell:
        pid = row.get("pretrain_id")
        pid = "" if pid is None or (isinstance(pid, float) and pid != pid) else str(pid)
        return cls(str(row.get("role", CELL)), str(row["init"]), pid, str(row["mode"]), float(row["fraction"]),
                   int(row["seed"]), int(row.get("grid", -1)))  # fmt: skip
