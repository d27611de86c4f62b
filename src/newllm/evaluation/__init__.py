"""Perplexity, dialogue responses and speed of any of the models, with no branch on the model type."""

from newllm.evaluation.generation import Sample, respond, sample_responses
from newllm.evaluation.perplexity import PerplexityResult, evaluate_perplexity
from newllm.evaluation.speed import SpeedResult, environment, measure_speed
from newllm.evaluation.stream import StreamPlan, evaluate_stream, plan_stream

__all__ = [
    "PerplexityResult",
    "Sample",
    "SpeedResult",
    "StreamPlan",
    "environment",
    "evaluate_perplexity",
    "evaluate_stream",
    "measure_speed",
    "plan_stream",
    "respond",
    "sample_responses",
]
