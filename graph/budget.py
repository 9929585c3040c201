"""What a run has spent, from its run store: LLM tokens, dollars and training seconds, for the budget stops.

    meter = BudgetMeter(settings)
    spent = meter.read(store)            # Spent(tokens=..., cost_usd=..., train_seconds=...)
    reason = meter.reason(store)         # "budget-cost", "budget-train-seconds" or None

- cost: each LLM call's prompt tokens times its endpoint's `price_in_per_mtok` plus its completion tokens
  (reasoning included, as servers count them) times `price_out_per_mtok`, per million. The endpoint is found by
  the call's (masked URL, model) among the roles' resolved endpoints, else by the call's role; an endpoint
  without prices costs nothing (a local server).
- training seconds: the seconds of the training jobs the sandbox ran (CPU and GPU jobs together, from the
  `sandbox_jobs` rows the train steps write); a reused job (same content address, trained earlier) costs nothing.

Both come from the whole run (every session), so `--resume` continues the same accounts. The meter keeps the
highest value it has read: a job row rewritten on resume can never lower what was spent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from nncaption.agents.settings import EndpointSettings
from nncaption.graph.settings import RunSettings
from nncaption.graph.store import RunStore

log = logging.getLogger(__name__)

MTOK = 1_000_000


@dataclass(frozen=True)
class Spent:
    tokens: int = 0
    cost_usd: float = 0.0
    train_seconds: float = 0.0


def _prices(settings: RunSettings) -> tuple[dict[tuple[str, str], EndpointSettings], dict[str, EndpointSettings]]:
    resolved = settings.agents.llm.resolved()
    by_endpoint = {(ep.safe_url(), ep.model): ep for ep in resolved.values()}
    return by_endpoint, dict(resolved)


def cost_usd(settings: RunSettings, store: RunStore) -> float:
    """Dollars spent on LLM calls so far (all sessions)."""
    by_endpoint, by_role = _prices(settings)
    if not any(ep.price_in_per_mtok or ep.price_out_per_mtok for ep in by_role.values()):
        return 0.0
    rows = store._query(
        "SELECT role, endpoint, model, COALESCE(SUM(MAX(COALESCE(prompt_tokens, 0), 0)), 0), "
        "COALESCE(SUM(MAX(COALESCE(completion_tokens, 0), 0)), 0) FROM llm_calls GROUP BY role, endpoint, model")
    total = 0.0
    for role, endpoint, model, prompt, completion in rows:
        ep = by_endpoint.get((str(endpoint), str(model))) or by_role.get(str(role))
        if ep is None:
            continue
        total += (int(prompt) * ep.price_in_per_mtok + int(completion) * ep.price_out_per_mtok) / MTOK
    return total


def train_seconds(store: RunStore) -> float:
    """Seconds of training jobs run so far (all sessions; reused jobs are free)."""
    rows = store._query("SELECT COALESCE(SUM(MAX(COALESCE(seconds, 0), 0)), 0) FROM sandbox_jobs "
                        "WHERE kind='train' AND COALESCE(reused, 0)=0")
    return float(rows[0][0]) if rows else 0.0


@dataclass
class BudgetMeter:
    """Reads what was spent and says which of the cost / training-seconds budgets is used up."""

    settings: RunSettings
    high: Spent = field(default_factory=Spent)

    def read(self, store: RunStore) -> Spent:
        """What was spent, never less than an earlier read."""
        now = Spent(tokens=store.tokens_used(), cost_usd=cost_usd(self.settings, store),
                    train_seconds=train_seconds(store))
        self.high = Spent(tokens=max(self.high.tokens, now.tokens),
                          cost_usd=max(self.high.cost_usd, now.cost_usd),
                          train_seconds=max(self.high.train_seconds, now.train_seconds))
        return self.high

    def reason(self, store: RunStore) -> str | None:
        """`budget-cost` or `budget-train-seconds` when that budget is used up (cost is checked first), else None."""
        b = self.settings.budget
        if b.max_cost_usd is None and b.max_train_seconds is None:
            return None
        spent = self.read(store)
        if b.max_cost_usd is not None and spent.cost_usd >= b.max_cost_usd:
            return "budget-cost"
        if b.max_train_seconds is not None and spent.train_seconds >= b.max_train_seconds:
            return "budget-train-seconds"
        return None
