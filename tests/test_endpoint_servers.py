"""Against emulated OpenAI reasoning models, Ollama, llama.cpp, SGLang and a Cloudflare proxy: each as its users
expect (request shapes, context handling, silent truncation, proxy pages)."""

from __future__ import annotations

from typing import Any

import pytest
from llm_emulator import Emulator, prompt_of, tokens

from nncaption.agents import compose
from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.designer import design_sync
from nncaption.agents.errors import ContextLengthExceeded, ContextTruncated
from nncaption.agents.settings import LLMSettings
from nncaption.prompts.library import DatasetFacts

pytestmark = pytest.mark.timeout(120)

FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)
GOOD = compose.compose_model("resnet", "gru", seed=0)
ANSWER = f"```python\n{GOOD.code}```\nSUMMARY: {GOOD.summary}"


def client(url: str, model: str, **kw: Any) -> LLMClient:
    opts: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "max_retries": 2}
    opts.update(kw)
    return LLMClient(LLMSettings.single(url, model, **opts), keep_exchanges=True)


def answer(body: dict[str, Any]) -> tuple[str, str]:
    return ANSWER, "reasoning " * 100


@pytest.mark.parametrize("profile", ["auto", "generic"])
def test_an_openai_reasoning_model_designs_within_four_requests(profile: str) -> None:
    """Detected (owned_by system): max_completion_tokens and no sampling from the start; undetected: learnt from
    the 400s ("Use 'max_completion_tokens' instead", "Unsupported value: 'temperature'")."""
    with Emulator("openai", models=("o3-mini",), answer=answer, context=200_000) as emu:
        d = design_sync(client(emu.base_url, "o3-mini", profile=profile), FACTS, k=2, seed=0)
    assert d.code == GOOD.code and len(emu.bodies) <= 4
    last = emu.bodies[-1]
    assert "max_tokens" not in last and last["max_completion_tokens"] > 0 and "temperature" not in last
    if profile == "auto":
        assert len(emu.bodies) == 1


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_ollama_gets_num_ctx_and_a_silently_cut_prompt_is_context_truncated() -> None:
    with Emulator("ollama", models=("qwen3:8b",), answer=answer, ollama_ctx=2048) as emu:
        c = client(emu.base_url, "qwen3:8b")
        with pytest.raises(ContextTruncated) as ei:
            design_sync(c, FACTS, k=5, seed=0)  # an 18,000-character prompt read as 2048 tokens
    body = emu.bodies[-1]
    assert body["options"]["num_ctx"] >= tokens(prompt_of(body)) + 1000
    assert ei.value.category == "context-truncated" and ei.value.exchange is not None
    assert "OLLAMA_CONTEXT_LENGTH" in ei.value.hint and "num_ctx" in ei.value.hint
    # a context large enough for the prompt: the design goes through
    with Emulator("ollama", models=("qwen3:8b",), answer=answer, ollama_ctx=131072) as emu:
        d = design_sync(client(emu.base_url, "qwen3:8b"), FACTS, k=2, seed=0)
    assert d.code == GOOD.code


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_llamacpp_context_is_read_from_props_and_its_context_error_is_typed() -> None:
    with Emulator("llamacpp", models=("model.gguf",), answer=answer, context=16384) as emu:
        d = design_sync(client(emu.base_url, "model.gguf"), FACTS, k=2, seed=0)
        assert d.code == GOOD.code and "/props" in emu.paths
        body = emu.bodies[-1]
        assert tokens(prompt_of(body)) + body["max_tokens"] <= 16384
    with Emulator("llamacpp", models=("model.gguf",), context=1024) as emu:
        c = client(emu.base_url, "model.gguf")
        with pytest.raises(ContextLengthExceeded) as ei:
            run_sync(c.chat("fixer", [{"role": "user", "content": "x = 1\n" * 2000}]), c)
    assert ei.value.prompt_tokens == 3000 and ei.value.context_tokens == 1024


def test_sglang_context_error_recovers() -> None:
    with Emulator("sglang", models=("qwen",), answer=answer, context=32768, list_context=False) as emu:
        d = design_sync(client(emu.base_url, "qwen"), FACTS, k=2, seed=0)
    assert d.code == GOOD.code and len(emu.bodies) == 2 and d.exchanges[-1].profile == "sglang"


def test_a_cloudflare_524_page_is_retried() -> None:
    with Emulator("vllm", models=("m",), answer=answer, proxy_errors=2) as emu:
        d = design_sync(client(emu.base_url, "m"), FACTS, k=2, seed=0)
    assert d.code == GOOD.code and len(emu.bodies) == 3 and d.exchanges[-1].attempts == 3


SHORT = ("```python\nimport torch\n\n\ndef supported_hyperparameters():\n    return {'lr'}\n\n\n"
         "class Net(torch.nn.Module):\n    pass\n```\nSUMMARY: tiny")


@pytest.mark.parametrize("kind", ["vllm", "sglang", "llamacpp"])
def test_a_prompt_too_long_for_the_context_designs_with_fewer_snippets(kind: str) -> None:
    """The prompt alone (5 snippets, ~4600 tokens) exceeds a 4000-token window: each server's context error is
    read, the designer drops snippets and the (short) design goes through."""
    with Emulator(kind, models=("m",), answer=lambda b: (SHORT, "r " * 50), context=4000) as emu:
        d = design_sync(client(emu.base_url, "m"), FACTS, k=5, seed=0)
    assert "class Net" in d.code and len(d.snippets) < 5
    assert tokens(prompt_of(emu.bodies[0])) > 4000 and tokens(prompt_of(emu.bodies[-1])) < 4000
    assert d.exchanges[0].error and d.exchanges[0].error.startswith("context-length")


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
@pytest.mark.parametrize("kind", ["vllm", "sglang", "ollama", "llamacpp", "openai"])
def test_openai_api_key_never_reaches_a_non_openai_host(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENAI_API_KEY set, no api_key_env: every server but api.openai.com gets the placeholder; a variable the
    user names is sent."""
    secret = "sk-openai-h9-0123456789-never-here"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    model = "o3-mini" if kind == "openai" else "m"
    with Emulator(kind, models=(model,), answer=answer, context=200_000, ollama_ctx=200_000) as emu:
        d = design_sync(client(emu.base_url, model), FACTS, k=2, seed=0)
    assert d.code == GOOD.code and emu.auths and emu.bodies
    assert all(a == "Bearer EMPTY" for a in emu.auths), set(emu.auths)
    monkeypatch.setenv("MY_SERVER_KEY", "sk-mine")
    with Emulator(kind, models=(model,), answer=answer, context=200_000, ollama_ctx=200_000,
                  api_key="sk-mine") as emu:
        design_sync(client(emu.base_url, model, api_key_env="MY_SERVER_KEY"), FACTS, k=2, seed=0)
    assert emu.auths and all(a == "Bearer sk-mine" for a in emu.auths)


@pytest.mark.parametrize("body,prompt,window", [
    ({"object": "error", "code": 400, "message": "This model's maximum context length is 32768 tokens. However, you "
      "requested 40000 tokens (8000 in the messages, 32000 in the completion). Please reduce the length of the "
      "messages or completion."}, 8000, 32768),
    ({"object": "error", "code": 400, "message": "This model's maximum context length is 32768 tokens. However, your "
      "request has 40000 input tokens. Please reduce the length of the input messages."}, 40000, 32768),
    ({"object": "error", "code": 400, "message": "'max_tokens' or 'max_completion_tokens' is too large: 32768. This "
      "model's maximum context length is 32768 tokens and your request has 8000 input tokens (32768 > 32768 - "
      "8000)."}, 8000, 32768),
    ({"object": "error", "code": 400, "message": "Requested token count exceeds the model's maximum context length of "
      "4096 tokens. You requested a total of 5000 tokens: 3000 tokens from the input messages and 2000 tokens for "
      "the completion."}, 3000, 4096),
    ({"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error", "n_prompt_tokens": 9000, "n_ctx": 8192}}, 9000, 8192),
    ({"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages resulted in "
                "130000 tokens. Please reduce the length of the messages.", "type": "invalid_request_error",
                "param": "messages", "code": "context_length_exceeded"}}, 130000, 128000),
])
def test_context_errors_of_each_server_are_read(body: dict[str, Any], prompt: int, window: int) -> None:
    from nncaption.agents.interpret import context_info, is_context_length_error

    assert is_context_length_error(400, body)
    info = context_info(body)
    assert (info.prompt_tokens, info.context_tokens) == (prompt, window)
