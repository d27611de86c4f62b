"""Training (HF Trainer) and checkpoints."""

from newllm.training.checkpoint import CheckpointError, check_checkpoint, load_checkpoint, save_checkpoint
from newllm.training.loop import RunExistsError, TrainingDivergedError, TrainResult, train

__all__ = [
    "CheckpointError",
    "RunExistsError",
    "TrainResult",
    "TrainingDivergedError",
    "check_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
