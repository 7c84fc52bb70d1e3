"""Pretext tasks: dynamic random span masking (temporal) and lead-order disruption (spatial)."""

from ecgmodel.ssl.losses import lead_accuracy, lead_cross_entropy, masked_mse
from ecgmodel.ssl.masking import random_span_mask
from ecgmodel.ssl.shuffle import shuffle_leads

__all__ = ["lead_accuracy", "lead_cross_entropy", "masked_mse", "random_span_mask", "shuffle_leads"]
