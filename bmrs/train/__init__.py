"""Training with continuous pruning: its config (``config``), the loop (``loop``), what the criterion
removes and when (``pruning``), resumable checkpoints (``checkpoint``), post-training pruning curves
(``post_training``) and the test metrics every stage reports (``metrics``)."""
from bmrs.train.config import FinetuneNoise, KLWeighting, Schedule, ScheduleUnit, TrainConfig
from bmrs.train.loop import (
    EpochRecord, TrainingDivergedError, TrainResult, check_resume_from, evaluate, kl_penalty, make_optimizer,
    structure_compression, train_,
)  # fmt: skip

__all__ = [
    "EpochRecord", "FinetuneNoise", "KLWeighting", "Schedule", "ScheduleUnit", "TrainConfig", "TrainResult",
    "TrainingDivergedError", "check_resume_from", "evaluate", "kl_penalty", "make_optimizer", "structure_compression",
    "train_",
]  # fmt: skip
