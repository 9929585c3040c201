"""LLM agents over any OpenAI-compatible endpoint (nothing is imported eagerly).

- `settings`  per-role endpoint settings (`EndpointSettings`, `LLMSettings`)
- `client`    `LLMClient`: retries, typed errors (`errors`), reasoning split, usage, record (`recording`)
- `records`   `LLMExchange` / `Usage`: the trace of every call
- `extract`   `extract_code(text)` / `ExtractionError`
- `designer`, `reviewer`, `fixer`: the agents (async, with *_sync wrappers); `feedback`: their inputs
- `offline_server` (NOT an LLM: the random-search baseline), `replay_server`, `vllm_server`
- `compose`   the offline composer's model builder (prompts helper)
"""
