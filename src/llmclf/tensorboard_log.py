"""--tensorboard: the training scalars of history.csv as TensorBoard event files in RUN_DIR/tensorboard,
written as training goes (after every optimizer step that recorded something), against the optimizer step.

torch ships the writer (torch.utils.tensorboard); it needs the `tensorboard` package, which llmclf does not
depend on, so asking for it without the package is refused before anything is written.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import LlmclfError

DIR = "tensorboard"
SCALARS = {"train_loss": "loss/train", "val_loss": "loss/validation", "train_acc": "accuracy/train",
           "val_acc": "accuracy/validation", "val_score": "keep/validation"}


def check_available() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise LlmclfError("--tensorboard needs the tensorboard package: pip install tensorboard") from None


class TensorBoardLog:
    """Writes each history row once; a resumed run starts after the rows its checkpoint already holds."""

    def __init__(self, run_dir: Path, already: int = 0):
        from torch.utils.tensorboard import SummaryWriter
        self.writer, self.done = SummaryWriter(str(Path(run_dir) / DIR)), already

    def write(self, history: list) -> None:
        for row in history[self.done:]:
            for key, tag in SCALARS.items():
                v = row.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(tag, v, global_step=row["step"] + 1)  # steps counted from 1
        if len(history) > self.done:
            self.writer.flush()
        self.done = len(history)

    def close(self) -> None:
        self.writer.close()
