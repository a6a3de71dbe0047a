"""Shared pure tensor math (torch only): log-probs, masking, reductions, KL, advantages, clipped
surrogates, rollout/training mismatch weights."""
