"""Serve a run's checkpoint with bare vLLM (its OpenAI-compatible server, no rlft code in the
server) and score the recipe's held-out questions through the HTTP API.

    .venv/bin/python bench/serve_checkpoint.py configs/gppo_smollm2_sums.yaml \
        --checkpoint runs/bench_real_model/sums_seed0/checkpoints/final

An adapter checkpoint (LoRA and the other PEFT methods that save as LoRA) is merged into the base
model it records with PEFT (`merge_and_unload`) and saved as a plain Hugging Face folder beside
the checkpoint (`<checkpoint>-merged`, kept for reuse), which is what a deployment serves; a full
checkpoint is served as it is. The server is `python -m vllm.entrypoints.openai.api_server
--model <folder>`; each held-out question goes to /v1/chat/completions (greedy, the recipe's
eval.max_new_tokens, the model's own chat template), and the task's checker scores the reply.
Printed: the served accuracy beside the run's own final evaluation (metrics.jsonl of the run folder
that holds the checkpoint); --json keeps both and every reply.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipe_runs import evaluations, write_results  # noqa: E402

from rlft.config import load_config  # noqa: E402
from rlft.data.tasks import build_task  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the recipe")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--kv-cache-mb", type=int, default=512)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "serve_checkpoint.json")
    return parser.parse_args()


def servable_folder(cfg, checkpoint: Path) -> Path:
    """The checkpoint as a plain Hugging Face folder: merged when it is an adapter."""
    if not (checkpoint / "adapter_config.json").is_file():
        return checkpoint
    merged = checkpoint.with_name(checkpoint.name + "-merged")
    if (merged / "config.json").is_file():
        return merged
    from rlft.control.evaluate import load_for_eval

    model, tokenizer = load_for_eval(cfg, str(checkpoint))
    model.merge_and_unload().save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    return merged


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"vLLM server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(2)
    raise SystemExit(f"vLLM server not ready after {timeout:.0f} s")


def ask(url: str, model: str, question: str, max_tokens: int) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}],
                       "temperature": 0.0, "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def run_final_accuracy(checkpoint: Path) -> float | None:
    """The last eval/accuracy the run that wrote this checkpoint logged."""
    run_dir = checkpoint.parent.parent
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    found = evaluations(run_dir, "eval/accuracy")
    return found[-1]["eval/accuracy"] if found else None


def main() -> None:
    args = parse_args()
    cfg = load_config(args.recipe, args.overrides)
    folder = servable_folder(cfg, args.checkpoint.resolve())
    task = build_task(cfg.task)
    examples = task.split("eval")[: cfg.eval.num_examples]
    url, name = f"http://127.0.0.1:{args.port}", "policy"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", name, "--host", "127.0.0.1", "--port", str(args.port), "--dtype", "float32",
               "--enforce-eager", "--max-model-len", "512", "--seed", "0",
               "--kv-cache-memory-bytes", str(args.kv_cache_mb << 20)]
    log = folder.parent / f"{folder.name}.vllm_server.log"  # beside what it served, not in bench/results
    print(f"serving {folder}: {' '.join(command[1:])}", flush=True)
    started = time.time()
    with log.open("w") as server_log:
        server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            wait_ready(url, server)
            ready = time.time() - started
            with ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(lambda ex: ask(url, name, ex.prompt, cfg.eval.max_new_tokens), examples))
        finally:
            server.terminate()
            server.wait(timeout=60)
    scores = [task.score(ex, reply) for ex, reply in zip(examples, replies)]
    served = sum(scores) / len(scores)
    logged = run_final_accuracy(args.checkpoint)
    print(f"served accuracy {served:.3f} on {len(scores)} held-out questions (server ready in {ready:.0f} s); "
          f"the run's final eval/accuracy {logged}")
    write_results(args.json, {"recipe": args.recipe, "overrides": args.overrides, "checkpoint": str(args.checkpoint),
                              "served_folder": str(folder), "command": command, "served_accuracy": served,
                              "run_final_accuracy": logged,
                              "replies": [{"prompt": ex.prompt, "answer": ex.answer, "reply": reply, "score": s}
                                          for ex, reply, s in zip(examples, replies, scores)]})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
