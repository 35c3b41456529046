"""A Hugging Face ``transformers`` callback: after each checkpoint save,
take a rewindfs snapshot labelled with the run and the step.

    from rewindfs.hf import RewindfsCallback
    trainer = Trainer(..., callbacks=[RewindfsCallback()])

``Trainer`` calls ``on_save`` after the checkpoint directory is written,
so the snapshot holds it. Only the main process (``state.is_world_process_zero``)
asks for the snapshot. A failed snapshot is reported with ``warnings``
(training goes on) unless ``strict=True``.
"""

import os
from typing import Optional

from ._after_save import AfterSave

try:  # the real base class when transformers is installed
    from transformers import TrainerCallback as _Base
except ImportError:  # pragma: no cover - keeps the module importable
    _Base = object


class RewindfsCallback(_Base):
    def __init__(
        self,
        path: Optional[str] = None,
        label: str = "{run} step-{step}",
        kind: Optional[str] = None,
        strict: bool = False,
    ):
        """``path``: any path inside the mount (default: the trainer's
        ``output_dir``); ``label``: formatted with ``run`` (``run_name``,
        else the name of ``output_dir``: two jobs on one mount are told
        apart), ``step`` and ``epoch``."""
        self._after = AfterSave(path, label, kind, strict)

    @property
    def taken(self):
        """The snapshot records taken so far."""
        return self._after.taken

    def on_save(self, args, state, control, **kwargs):
        if not getattr(state, "is_world_process_zero", True):
            return control
        out = getattr(args, "output_dir", None) or os.getcwd()
        run = getattr(args, "run_name", None) or out
        self._after.snapshot(
            out,
            state.global_step,
            epoch=getattr(state, "epoch", None),
            run=os.path.basename(os.path.normpath(str(run))) or str(run),
        )
        return control
