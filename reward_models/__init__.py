"""Trainable reward models and oracles, with the scripts that train them and their checkpoints."""
