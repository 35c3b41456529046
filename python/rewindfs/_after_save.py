"""What the training-framework callbacks share: take a snapshot labelled
with the saved step, warning (or raising with ``strict``) on failure."""

import warnings
from typing import Optional

from . import client


class AfterSave:
    def __init__(self, path: Optional[str], label: str, kind: Optional[str], strict: bool):
        self.path = path
        self.label = label
        self.kind = kind
        self.strict = strict
        self.taken = []

    def snapshot(self, default_path: str, step: int, **fmt) -> None:
        try:
            rec = client.snapshot(
                self.path or default_path,
                label=self.label.format(step=step, **fmt),
                kind=self.kind,
            )
            self.taken.append(rec)
        except client.RewindfsError as e:
            if self.strict:
                raise
            warnings.warn(f"rewindfs snapshot after saving step {step} failed: {e}")
