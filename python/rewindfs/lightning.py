"""A PyTorch Lightning callback: after each checkpoint save, take a
rewindfs snapshot labelled with the run and the step.

    from rewindfs.lightning import RewindfsLightningCallback
    trainer = L.Trainer(..., callbacks=[RewindfsLightningCallback()])

Lightning calls ``on_save_checkpoint`` while it builds the checkpoint,
*before* the file is written, and moves checkpoint callbacks after all
others. So the callback notes the step there and takes the snapshot at
the next hook that runs after the write: the end of the next training
batch, of the epoch, of validation, or of fit. The snapshot's label names
the step that was saved; it may also hold the writes of one more batch.
Only global rank zero asks. A failure is a warning unless ``strict=True``.
"""

import os
from typing import Optional

from ._after_save import AfterSave

try:  # the real base class when Lightning is installed
    from lightning.pytorch.callbacks import Callback as _Base
except ImportError:  # pragma: no cover
    try:
        from pytorch_lightning.callbacks import Callback as _Base
    except ImportError:
        _Base = object


def _run_name(trainer, root: str) -> str:
    """The logger's name/version_N, else the name of the root directory."""
    logger = getattr(trainer, "logger", None)
    name = getattr(logger, "name", None) if logger is not None else None
    if name:
        version = getattr(logger, "version", None)
        return f"{name}/version_{version}" if isinstance(version, int) else f"{name}/{version}" if version else str(name)
    return os.path.basename(os.path.normpath(root)) or root


class RewindfsLightningCallback(_Base):
    def __init__(
        self,
        path: Optional[str] = None,
        label: str = "{run} step-{step}",
        kind: Optional[str] = None,
        strict: bool = False,
    ):
        """``path``: any path inside the mount (default: the trainer's
        ``default_root_dir``); ``label``: formatted with ``run`` (the
        logger's name and version when there is a logger, else the name of
        ``default_root_dir``) and ``step``."""
        self._after = AfterSave(path, label, kind, strict)
        self.pending: Optional[int] = None

    @property
    def taken(self):
        """The snapshot records taken so far."""
        return self._after.taken

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if getattr(trainer, "is_global_zero", True):
            self.pending = trainer.global_step

    def _flush(self, trainer):
        if self.pending is None:
            return
        step, self.pending = self.pending, None
        root = getattr(trainer, "default_root_dir", None) or os.getcwd()
        self._after.snapshot(root, step, run=_run_name(trainer, root))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._flush(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._flush(trainer)

    def on_validation_end(self, trainer, pl_module):
        self._flush(trainer)

    def on_fit_end(self, trainer, pl_module):
        self._flush(trainer)
