"""Endpoint settings: keys go only where the user said, are masked everywhere shown, and roles inherit the shared one.

The key tests send real requests through `LLMClient` to a loopback server that
records the Authorization header it receives.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.http_server import completion_body
from nncaption.agents.settings import DEFAULT_MAX_TOKENS, EndpointSettings, LLMSettings, mask_url
from nncaption.netapi.errors import ConfigError

SECRET = "sk-test-0123456789abcdef-secret"


class HeaderRecorder:
    """A loopback chat-completions server that keeps the Authorization header of every request."""

    def __init__(self) -> None:
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def _answer(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                outer.auth.append(self.headers.get("Authorization"))
                self._answer({"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                outer.auth.append(self.headers.get("Authorization"))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                self._answer(completion_body(str(body.get("model")), "fine"))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> HeaderRecorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorder() -> Iterator[HeaderRecorder]:
    with HeaderRecorder() as r:
        yield r


def _chat(settings: LLMSettings) -> None:
    client = LLMClient(settings)
    ex = run_sync(client.chat("designer", [{"role": "user", "content": "hi"}]), client)
    assert ex.reply.strip() == "fine"


def test_openai_key_never_reaches_another_host(recorder: HeaderRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    _chat(LLMSettings.single(recorder.base_url, "m"))
    assert recorder.auth and all(SECRET not in (a or "") for a in recorder.auth), recorder.auth
    assert recorder.auth[-1] == "Bearer EMPTY"
    # OpenAI's own host is the one place the variable is read without being named
    assert EndpointSettings(base_url="https://api.openai.com/v1").api_key() == SECRET
    assert EndpointSettings(base_url="http://127.0.0.1:8000/v1").api_key() == "EMPTY"
    assert EndpointSettings(base_url="https://openai.example.com/v1").api_key() == "EMPTY"


def test_a_named_key_variable_is_sent(recorder: HeaderRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    monkeypatch.setenv("MY_VLLM_KEY", SECRET)
    _chat(LLMSettings.single(recorder.base_url, "m", api_key_env="MY_VLLM_KEY"))
    assert recorder.auth[-1] == f"Bearer {SECRET}"


def test_a_key_is_refused_over_plain_http_to_a_remote_host(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="plain http to 10.1.2.3.*allow_insecure_key"):
        LLMSettings.single("http://10.1.2.3:8000/v1", "m", api_key_env="MY_VLLM_KEY")
    # a role that inherits the key variable and names a remote http URL is refused too
    with pytest.raises(ConfigError, match="fixer: .*plain http to gpu-box"):
        LLMSettings.from_dict({"shared": {"api_key_env": "MY_VLLM_KEY"}, "fixer": {"base_url": "http://gpu-box/v1"}})
    # without a key, or over https, or on loopback, or when the config says so: accepted
    LLMSettings.single("http://10.1.2.3:8000/v1", "m")
    LLMSettings.single("https://10.1.2.3:8000/v1", "m", api_key_env="MY_VLLM_KEY")
    LLMSettings.single("http://[::1]:8000/v1", "m", api_key_env="MY_VLLM_KEY")
    LLMSettings.single("http://localhost:8000/v1", "m", api_key_env="MY_VLLM_KEY")
    s = LLMSettings.single("http://10.1.2.3:8000/v1", "m", api_key_env="MY_VLLM_KEY", allow_insecure_key=True)
    monkeypatch.setenv("MY_VLLM_KEY", SECRET)
    assert s.shared.api_key() == SECRET
    # plain http to OpenAI's host never carries OPENAI_API_KEY
    with pytest.raises(ConfigError, match="plain http"):
        LLMSettings.single("http://api.openai.com/v1", "gpt-5")
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        LLMSettings.single("https://x/v1", "m", api_key_env="sk-pasted-key-itself")


def test_masked_dump_hides_keys_credentials_and_secret_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_VLLM_KEY", SECRET)
    s = LLMSettings.from_dict({"shared": {"base_url": f"https://user:{SECRET}@h/v1?api_key={SECRET}&x=1",
                                          "api_key_env": "MY_VLLM_KEY",
                                          "extra_body": {"api_key": SECRET, "headers": {"Authorization": SECRET},
                                                         "max_tokens": 7}}})
    shown = json.dumps(s.masked_dump())
    assert SECRET not in shown
    dump = s.shared.masked_dump()
    assert dump["api_key"] == "$MY_VLLM_KEY set (***)" and dump["api_key_env"] == "MY_VLLM_KEY"
    assert dump["base_url"] == "https://***@h/v1?api_key=***&x=1"
    assert dump["extra_body"] == {"api_key": "***", "headers": {"Authorization": "***"}, "max_tokens": 7}
    assert SECRET not in s.shared.describe()
    assert mask_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    monkeypatch.delenv("MY_VLLM_KEY")
    assert s.shared.masked_dump()["api_key"] == "$MY_VLLM_KEY unset (EMPTY is sent)"


def test_roles_inherit_the_shared_endpoint_field_by_field() -> None:
    s = LLMSettings.from_dict({"shared": {"base_url": "https://gpu:8000/v1", "model": "big", "api_key_env": "K",
                                          "max_tokens": 20000, "profile": "vllm"},
                               "fixer": {"temperature": 0.2},
                               "reviewer": {"model": "small", "max_tokens": 4096}})
    fixer, reviewer, designer = s.for_role("fixer"), s.for_role("reviewer"), s.for_role("designer")
    assert (fixer.base_url, fixer.model, fixer.api_key_env, fixer.max_tokens, fixer.profile, fixer.temperature) == \
        ("https://gpu:8000/v1", "big", "K", 20000, "vllm", 0.2)
    assert (reviewer.base_url, reviewer.model, reviewer.max_tokens, reviewer.temperature) == \
        ("https://gpu:8000/v1", "small", 4096, 0.6)
    assert designer == s.shared
    # a dump keeps only the role's own fields, so the recorded config resolves the same way
    dumped = s.model_dump(mode="json")
    assert dumped["fixer"] == {"temperature": 0.2}
    again = LLMSettings.model_validate(json.loads(json.dumps(dumped)))
    assert again.resolved() == s.resolved()
    # changing the shared endpoint afterwards (as replay does) reaches the roles that did not set it
    moved = s.model_copy(update={"shared": s.shared.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})})
    assert moved.for_role("fixer").base_url == "http://127.0.0.1:9/v1"


def test_defaults_fit_a_reasoning_model() -> None:
    ep = EndpointSettings()
    assert ep.max_tokens == DEFAULT_MAX_TOKENS >= 30000
    assert ep.profile == "auto" and ep.api_key_env is None
    with pytest.raises(ConfigError, match="profile"):
        LLMSettings.from_dict({"shared": {"profile": "tgi"}})


def test_config_show_prints_each_roles_resolved_endpoint(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from nncaption import runconfig

    monkeypatch.setenv("DESIGN_KEY", SECRET)
    s = runconfig.resolve({"agents": {"kind": "llm", "llm": {
        "shared": {"base_url": "https://gpu:8000/v1", "model": "big", "api_key_env": "DESIGN_KEY"},
        "fixer": {"temperature": 0.2}}}})
    shown = runconfig.show(s)
    assert SECRET not in shown
    eps = json.loads(shown)["effective_endpoints"]
    assert eps["fixer"]["base_url"] == "https://gpu:8000/v1" and eps["fixer"]["model"] == "big"
    assert eps["fixer"]["temperature"] == 0.2 and eps["designer"]["temperature"] == 0.6
    assert eps["fixer"]["api_key"] == "$DESIGN_KEY set (***)"
