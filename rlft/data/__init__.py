"""Tasks with checkers (arith, gsm8k, reasoning_gym, jsonl) and readers for user data files."""
