"""LLM agents over any OpenAI-compatible endpoint, and the random-search baseline (nothing is imported eagerly).

- `protocols` `Designer` / `Reviewer` / `Fixer` protocols and `DesignRequest` (what the graph holds)
- `llm_agents` `LLMDesigner` / `LLMReviewer` / `LLMFixer`: the protocols over an `LLMClient`
- `baseline`  `BaselineDesigner` / `BaselineReviewer` / `BaselineFixer`: the seeded random-search baseline,
              in-process, NOT an LLM (its fixer is an oracle that undoes its own planted defect)
- `settings`  per-role endpoint settings (`EndpointSettings`, `LLMSettings`)
- `client`    `LLMClient`: retries, typed errors (`errors`), reasoning split, usage, record (`recording`)
- `records`   `LLMExchange` / `Usage`: the trace of every call (model requested and model returned)
- `extract`   `extract_code` / `extract_candidate` (code, prm, summary; JSON-mode replies too) / `ExtractionError`
- `hparams`   the hyperparameter channel: reading and validating the prm a reply asks for
- `designer`, `reviewer`, `fixer`: the agent functions (async, with *_sync wrappers); `feedback`: their inputs
- `offline_server` (NOT an LLM: the baseline behind an OpenAI-compatible endpoint), `replay_server`, `vllm_server`
- `compose`   the composer the baseline draws from (prm-driven sizes, defects, repair, mutations)
"""
