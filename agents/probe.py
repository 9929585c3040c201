"""The start-up probe: every role's endpoint is reached and serves its model, before the first candidate.

For each distinct endpoint of the designer, reviewer and fixer it reads the models
listing (and the kind, see `agents/profiles.py`). An endpoint that cannot be
reached is `down` (the run stops with exit 1: start the server); a key the server
refuses (401/403), a base_url without `/v1` (404 or an HTML page on /models) or a
model the server does not serve is a configuration error (exit 2) naming what the
server does serve. Servers of an unknown kind (`generic`, e.g. the offline
composer, which answers any model name) only get a warning for an unlisted model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

from nncaption.agents.profiles import EndpointInfo, discover
from nncaption.agents.settings import ROLES, EndpointSettings
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0
STRICT_PROFILES = frozenset({"vllm", "sglang", "openai", "ollama", "llamacpp"})


@dataclass
class ProbeReport:
    """What the probe found: endpoint info per role, endpoints that did not answer, configuration problems."""

    infos: dict[str, EndpointInfo] = field(default_factory=dict)
    down: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    def raise_problems(self) -> None:
        """A ConfigError (exit 2) naming every problem, if there is one."""
        if self.problems:
            raise ConfigError("; ".join(self.problems), " ".join(dict.fromkeys(self.hints)), exit_code=2)


def _check(roles: list[str], ep: EndpointSettings, info: EndpointInfo, report: ProbeReport) -> None:
    who = "/".join(roles)
    url = ep.safe_url()
    status = info.listing_status
    if status is None:
        report.down.append(f"{url} ({who}): {safe_text(info.listing_problem or 'no answer', 200)}")
        return
    if status in (401, 403):
        var = ep.key_variable()
        report.problems.append(f"{url} ({who}) refused the API key (HTTP {status})")
        report.hints.append(f"set the variable named by api_key_env ({var or 'none configured'}) to a valid key.")
        return
    if status >= 500:
        report.down.append(f"{url} ({who}): GET /models answered HTTP {status}")
        return
    if info.models is None:
        report.problems.append(f"{url} ({who}) is not an OpenAI-compatible API: "
                               f"{safe_text(info.listing_problem or f'HTTP {status}', 200)}")
        report.hints.append("base_url must end in the API's version path, e.g. http://HOST:8000/v1.")
        return
    if ep.model in info.models:
        return
    served = ", ".join(info.models[:20]) or "none"
    if info.profile in STRICT_PROFILES:
        report.problems.append(f"{url} ({who}) does not serve the model {ep.model!r}; it serves: {served}")
        report.hints.append("set the model to one the server serves (--llm-model, or model in the LLM config), "
                            "or serve it under that name (vLLM: --served-model-name).")
    else:
        log.warning("%s (%s) does not list the model %r (it lists: %s); asking anyway", url, who, ep.model, served)


async def probe_endpoints(llm: Any, *, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeReport:
    """Probe each distinct endpoint of the run's roles once; never raises for what the servers answer."""
    groups: dict[tuple[str, str], list[str]] = {}
    settings: dict[tuple[str, str], EndpointSettings] = {}
    for role in ROLES:
        ep = llm.for_role(role)
        key = (ep.base_url.rstrip("/"), ep.model)
        groups.setdefault(key, []).append(role)
        settings.setdefault(key, ep)
    report = ProbeReport()
    infos: dict[str, EndpointInfo] = {}
    async with httpx.AsyncClient(follow_redirects=False, trust_env=True) as http:
        for key, roles in groups.items():
            ep = settings[key]
            url = key[0]
            if url not in infos:
                try:
                    headers = {"Authorization": f"Bearer {ep.api_key()}"}
                except ConfigError as e:  # a key that may not travel to this URL
                    report.problems.append(e.message)
                    report.hints.append(e.hint)
                    continue
                infos[url] = await discover(http, url, headers, timeout_s=timeout_s,
                                            profile=ep.profile)
            _check(roles, ep, infos[url], report)
            for role in roles:
                report.infos[role] = infos[url]
    return report
