"""What loading the data found: rows per dataset, skipped rows per reason, truncation, drops."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class DatasetCount:
    """The rows one dataset gave: ``rows`` kept, ``skipped`` per reason (with ``skip_bad_rows``).

    ``first_problem`` holds the first skipped row's message for each reason, so the user can
    find an example without rerunning.
    """

    name: str
    split: str
    source: str
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_problem: dict[str, str] = field(default_factory=dict)


@dataclass
class DataReport:
    """Everything a user should know about the data before training starts.

    ``datasets`` lists each dataset's counts (``split`` is ``train`` or ``eval``). The token
    counts (``truncated``, ``dropped``, ``train_rows``, ``eval_rows``) are filled in by
    ``get_dataset``; ``check_datasets`` leaves them at None/0.
    """

    datasets: list[DatasetCount] = field(default_factory=list)
    cutoff_len: int | None = None
    truncated: int = 0
    dropped: int = 0
    train_rows: int | None = None
    eval_rows: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> Counter:
        """Skipped rows per reason, over all datasets."""
        total: Counter = Counter()
        for dataset in self.datasets:
            total.update(dataset.skipped)
        return total

    def rows(self, split: str = "train") -> int:
        """Rows read (before tokenisation) from the datasets of ``split``."""
        return sum(d.rows for d in self.datasets if d.split == split)

    def summary(self) -> str:
        """A few lines for the CLI: rows per dataset, skipped per reason, truncated and dropped."""
        lines = []
        for split in ("train", "eval"):
            parts = [f"{d.name} {d.rows} rows" for d in self.datasets if d.split == split]
            if parts:
                lines.append(f"{split} data: {', '.join(parts)}")
        skipped = self.skipped
        if skipped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items()))
            example = next(iter(d.first_problem.values()) for d in self.datasets if d.first_problem)
            lines.append(f"skipped {sum(skipped.values())} bad rows ({reasons}); first: {example}")
        if self.train_rows is not None:
            split = f"tokenised: {self.train_rows} train"
            split += f", {self.eval_rows} eval" if self.eval_rows is not None else ""
            cut = f"{self.truncated} truncated at cutoff_len {self.cutoff_len}, {self.dropped} dropped"
            lines.append(f"{split}; {cut}")
        lines.extend(self.notes)
        return "\n".join(lines)
