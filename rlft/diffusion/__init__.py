"""Masked discrete diffusion (MDLM style) over DNA and the DRAKES differentiable sampler
(docs/algorithms.md#mdlm, docs/algorithms.md#drakes).

Modules (pure torch; nothing here imports DeepSpeed, Ray or vLLM):

* ``schedule``  -- the log-linear noise schedule (move chance, alpha, sigma, dsigma).
* ``model``     -- ``MDLM``: a dilated 1-D residual CNN denoiser, SUBS log-probs, save/load.
* ``mdlm``      -- forward corruption, continuous-time NELBO, reverse step, hard ancestral sampler,
                   approximate log-likelihood ("App-Log-Lik").
* ``relaxed``   -- DRAKES: Gumbel-softmax, straight-through, the truncated relaxed sampler and its KL.
* ``metrics``   -- evaluation metrics on generated sequences.

Vocabulary: A=0, C=1, G=2, T=3, MASK=4.
"""
