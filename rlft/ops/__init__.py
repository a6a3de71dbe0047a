"""Shared pure tensor math (torch only): log-probs, masking, reductions, KL, advantage estimators
(GRPO, RLOO, REINFORCE++), policy losses (PPO/GPPO surrogates, GSPO, CISPO), rollout/training
mismatch weights."""
