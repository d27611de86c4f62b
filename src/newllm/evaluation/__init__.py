"""Perplexity, dialogue responses, their diversity and speed of any of the models, with no branch on the model type."""

from newllm.evaluation.decoding import Decoder, SamplingOptions
from newllm.evaluation.diversity import DiversityResult, distinct_n, measure_diversity
from newllm.evaluation.generation import Sample, respond, respond_batch, sample_responses
from newllm.evaluation.perplexity import PerplexityResult, evaluate_perplexity
from newllm.evaluation.speed import SpeedResult, environment, measure_speed
from newllm.evaluation.stream import StreamPlan, evaluate_stream, plan_stream

__all__ = [
    "Decoder",
    "DiversityResult",
    "PerplexityResult",
    "Sample",
    "SamplingOptions",
    "SpeedResult",
    "StreamPlan",
    "distinct_n",
    "environment",
    "evaluate_perplexity",
    "evaluate_stream",
    "measure_diversity",
    "measure_speed",
    "plan_stream",
    "respond",
    "respond_batch",
    "sample_responses",
]
