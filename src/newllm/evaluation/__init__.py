"""Perplexity, dialogue responses and speed of any of the models, with no branch on the model type."""

from newllm.evaluation.generation import Sample, respond, sample_responses
from newllm.evaluation.perplexity import PerplexityResult, evaluate_perplexity
from newllm.evaluation.speed import SpeedResult, environment, measure_speed

__all__ = [
    "PerplexityResult",
    "Sample",
    "SpeedResult",
    "environment",
    "evaluate_perplexity",
    "measure_speed",
    "respond",
    "sample_responses",
]
