"""A vLLM engine driven step by step, so that new weights can load while requests are in flight.

`LLM.generate` runs the engine until its own requests finish and returns them; nothing else may touch
the engine meanwhile. With `rollout.in_flight_updates` a generator must load a new policy version while
it samples (asynchronous training, docs/design.md#asynchronous-training), so its engine is driven here:

    submit(requests)        each sample its own request (n samples of a prompt: seeds seed .. seed + n - 1,
                            the seeds vLLM gives the children of an n-sample request)
    wait(ids)               step the engine until those requests finish; whichever waiting thread holds
                            the lock steps, and every step's new tokens go to their requests, tagged with
                            the policy version the engine ran when it sampled them
    between_steps(change)   vLLM's pause_scheduler("keep"): requests in flight stay where they are (their KV
                            cache too); the tokens already sampled are collected under the old version; then
                            `change()` (the weight load) runs, the version moves on, and the scheduler resumes

The engine core may run in this process (stepped by `step()`) or in its own (it steps by itself and
sends outputs in order; a utility call's answer comes after every output sampled before it, so once
the pause returns, draining the output queue collects exactly the old version's tokens).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Sampled:
    """One request's completion so far: tokens, their sampling log-probs, the version of each token."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    prompt_logprobs: list | None = None
    done: bool = False


class SteppedEngine:
    def __init__(self, llm, version: int = 0):
        self.engine = llm.llm_engine
        self.version = version
        self.lock = threading.Lock()
        self.requests: dict[str, Sampled] = {}
        self._ids = itertools.count()

    def submit(self, prompts: list, params: list, lora_request=None) -> list[str]:
        """Add one request per (prompt, params) (each with n=1); their ids."""
        from vllm.sampling_params import RequestOutputKind

        ids = []
        with self.lock:
            for prompt, p in zip(prompts, params):
                if p.n != 1:
                    raise ValueError("SteppedEngine takes one sample per request (expand n before submitting)")
                p.output_kind = RequestOutputKind.CUMULATIVE
                request_id = f"rlft-{next(self._ids)}"
                self.requests[request_id] = Sampled()
                self.engine.add_request(request_id, prompt, p, lora_request=lora_request)
                ids.append(request_id)
        return ids

    def wait(self, ids: list[str]) -> list[Sampled]:
        """Step until every request in `ids` finished; their completions, in order (and forgotten here)."""
        while True:
            with self.lock:
                if all(self.requests[i].done for i in ids):
                    return [self.requests.pop(i) for i in ids]
                self._collect(self.engine.step())

    def between_steps(self, change: Callable[[], Any], new_version: int | None = None) -> Any:
        """Run `change` with the scheduler paused and every token sampled so far collected; then the
        engine samples as `new_version` (if given)."""
        with self.lock:
            client = self.engine.engine_core
            engine_utility(client, "pause_scheduler", "keep", False)
            queue = getattr(client, "outputs_queue", None)  # the engine core's own process: its outputs so far
            while queue is not None and not queue.empty():
                self._collect(self.engine.step())
            try:
                result = change()
                if new_version is not None:
                    self.version = new_version
            finally:
                engine_utility(client, "resume_scheduler")
            return result

    def _collect(self, outputs: list) -> None:
        for out in outputs:
            sampled = self.requests.get(out.request_id)
            if sampled is None:  # not ours (cannot happen while every request goes through `submit`)
                continue
            completion = out.outputs[0]
            new = len(completion.token_ids) - len(sampled.token_ids)
            if new > 0:
                start = len(sampled.token_ids)
                ids = list(completion.token_ids)
                sampled.token_ids = ids
                if completion.logprobs:
                    sampled.logprobs.extend(completion.logprobs[i][ids[i]].logprob for i in range(start, len(ids)))
                sampled.versions.extend([self.version] * new)
            sampled.text = completion.text
            if out.prompt_logprobs is not None:
                sampled.prompt_logprobs = out.prompt_logprobs
            if out.finished:
                sampled.finish_reason = completion.finish_reason
                sampled.done = True


def engine_utility(client, method: str, *args) -> Any:
    """Call one of vLLM's engine-core utilities (pause_scheduler, resume_scheduler) through the client:
    a message to the engine core's process, or a direct call when the engine core runs in this one."""
    if hasattr(client, "call_utility"):
        return client.call_utility(method, *args)
    return getattr(client.engine_core, method)(*args)
