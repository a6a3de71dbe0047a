"""Role classes by kind and name (`runtime.roles` in the config picks one name per kind).

Roles are plain classes (docs/design.md#roles); rlft.runtime wraps them in Ray actors or builds
them in-process. A test registers fakes here (`ROLES["generator"].register("fake", Fake)`)
and runs the real controller with them.

Constructor keywords each kind receives (fakes take the same):
  learner:   cfg, spec (the AlgorithmSpec), rank, world_size, model_path, master_addr, master_port, grad_accum, num_threads
  generator: cfg, index, model_path, dtype, lora_rank, seed, cpu_bind
  reward:    cfg, index
  critic:    as learner (LearnerActor: its cfg is the companion's run config, its spec the companion's)
  environment: cfg (with a `retrieval` section, rlft.retrieval.config.RetrievalConfig), index
  teacher:   cfg, index, model_path (the teacher's folder), device, dtype, num_threads
"""

from __future__ import annotations

from rlft.registry import Registry

ROLES: dict[str, Registry] = {
    "learner": Registry("learner role", {"deepspeed": "rlft.roles.learner:LearnerActor"}),
    "generator": Registry("generator role", {"vllm": "rlft.roles.generator:GeneratorActor",
                                            "diffusion": "rlft.roles.diffusion_generator:DiffusionGeneratorActor"}),
    "reward": Registry("reward role", {"checker": "rlft.roles.reward:RewardActor"}),
    "environment": Registry("environment role", {"bm25": "rlft.roles.environment:RetrievalEnvironmentActor"}),
    "teacher": Registry("teacher role", {"hf": "rlft.roles.teacher:TeacherActor"}),
    "critic": Registry("critic role", {"deepspeed": "rlft.roles.learner:LearnerActor"}),
}
