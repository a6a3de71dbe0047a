"""Offline pieces of multi-turn retrieval rollouts (IM-RAG, docs/algorithms.md#im-rag-episodes).

  corpus:  a procedurally generated multi-hop fact corpus (Document, MultiHopQuestion, Corpus)
  hotpot:  reader for HotpotQA-format JSONL into the same Corpus type
  index:   BM25 search over documents (bm25s) and a simple refiner
  episode: the <search>/<answer>/<docs> turn format, coverage, turn rewards, EM and F1
  config:  RetrievalConfig, the config section of the retrieval environment
The environment role that serves searches is rlft.roles.environment.RetrievalEnvironmentActor.
"""
