"""The random-search baseline, in-process: `BaselineDesigner`, `BaselineReviewer`, `BaselineFixer`.

NOT an LLM. The designer draws a composition (backbone snippet, decoder family,
hyperparameters) with a seeded random generator from the same search space the LLM
is offered (`nncaption.agents.compose`); the LLM-guided search must beat it. The
offline HTTP endpoint (`nncaption.agents.offline_server`) calls the same
`baseline_design` / `baseline_fix` functions, so driving the baseline in-process or
over HTTP gives the same candidates for the same seed.

`fault_rate` plants realistic defects in designs (to exercise the fixer path). The
baseline's fixer is an ORACLE: it reads the composition marker of its own file and
re-composes it, which undoes its own planted defect by construction; its "fix rate"
measures nothing and must never be reported as one. Its explanations are labelled
baseline traces, never first-person reasoning.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nncaption.agents import compose, mutate
from nncaption.agents.defects import check_fault_settings
from nncaption.agents.designer import Design
from nncaption.agents.fixer import ErrorInput, Fix, describe_error
from nncaption.agents.hparams import Prm, validate_prm
from nncaption.agents.protocols import DesignRequest
from nncaption.agents.reviewer import Review, review
from nncaption.netapi.errors import ConfigError
from nncaption.prompts.library import error_tail, sample_snippets

log = logging.getLogger(__name__)

BASELINE_NAME = "nncaption-offline-composer"
TRACE_LABEL = f"Baseline trace ({BASELINE_NAME}: seeded random search over the snippet library, not an LLM)"

__all__ = [
    "BASELINE_NAME",
    "BaselineChoice",
    "BaselineDesigner",
    "BaselineFixer",
    "BaselineReviewer",
    "baseline_design",
    "baseline_fix",
    "composition_seed",
]


@dataclass(frozen=True)
class BaselineChoice:
    """One baseline answer: the file, its prm, a summary, the planted defect (if any) and a labelled trace."""

    code: str
    prm: Prm
    summary: str
    backbone: str
    decoder: str
    fault: str | None
    trace: str


def composition_seed(server_seed: int, seed: int, mode: str) -> int:
    """The composer's seed for one request: a stable hash of the baseline's seed, the request's seed and mode."""
    return int(hashlib.sha256(f"{server_seed}:{seed}:{mode}".encode()).hexdigest()[:8], 16) % 1_000_000


def _plant(code: str, rng: random.Random, seed: int, kinds: Sequence[str]) -> tuple[str | None, str]:
    order = list(kinds)
    rng.shuffle(order)
    for kind in order:  # a kind that does not apply to this composition falls through to the next
        try:
            return kind, compose.inject_defect(code, kind, seed)
        except ConfigError:
            log.debug("defect %s does not apply here; trying the next kind", kind)
    return None, code


def baseline_design(
    *,
    server_seed: int,
    seed: int,
    mode: str = "compose",
    decoder: str | None = None,
    snippets: Sequence[str] = (),
    parent_code: str | None = None,
    parent_prm: Mapping[str, Any] | None = None,
    fault_rate: float = 0.0,
    fault_kinds: Sequence[str] = compose.DEFECT_KINDS,
) -> BaselineChoice:
    """The baseline's design for a request (the same function behind the HTTP endpoint)."""
    cseed = composition_seed(server_seed, seed, mode)
    if mode == "improve" and parent_code:
        model = mutate.improve(parent_code, seed=cseed, prm=parent_prm)
        how = "mutated one aspect of the parent's composition"
    else:
        hints = {"decoder": decoder, "backbones": list(snippets), "seed": seed}
        model = compose.compose_for_request(hints, seed=cseed)
        how = f"drew backbone {model.backbone} among {', '.join(snippets) or 'all snippets'}"
    code, fault = model.code, None
    rng = random.Random(cseed)
    if rng.random() < fault_rate:
        fault, code = _plant(code, rng, cseed, fault_kinds)
    prm = validate_prm(model.prm, model.code)
    trace = (f"{TRACE_LABEL}: {how}; decoder {model.decoder}; composition seed {cseed}; prm "
             + ", ".join(f"{k}={v}" for k, v in sorted(prm.items()))
             + (f"; planted defect: {fault} (exercises the fixer)" if fault else ""))
    return BaselineChoice(code=code.rstrip() + "\n", prm=prm, summary=model.summary, backbone=model.backbone,
                          decoder=model.decoder, fault=fault, trace=trace)


def baseline_fix(code: str, error_text: str, prm: Mapping[str, Any] | None,
                 category: str | None = None) -> BaselineChoice:
    """The oracle fix: re-compose the file from its own composition marker (undoing a planted defect).

    `error_text` is what a fixer prompt shows (`error_tail`). A NaN error lowers the
    learning rate in the returned prm; a too-large / out-of-memory / timeout error
    halves the decoder sizes (see `mutate.repair_model`).
    """
    model = mutate.repair_model(code, f"{category or ''}\n{error_text}", prm)
    prm_out = validate_prm(model.prm, model.code)
    first = error_text.strip().splitlines()[0][:160] if error_text.strip() else "the reported error"
    trace = (f"{TRACE_LABEL}: oracle fix, re-composed {model.backbone} + {model.decoder} from the file's own "
             f"composition marker after: {first}")
    return BaselineChoice(code=model.code.rstrip() + "\n", prm=prm_out,
                          summary=f"{model.summary} (re-composed after {category or 'the reported error'})",
                          backbone=model.backbone, decoder=model.decoder, fault=None, trace=trace)


class BaselineDesigner:
    """The random-search designer, in-process (NOT an LLM). Seeded and deterministic."""

    kind: Literal["baseline"] = "baseline"

    def __init__(self, seed: int = 0, *, fault_rate: float = 0.0,
                 fault_kinds: Sequence[str] = compose.DEFECT_KINDS) -> None:
        check_fault_settings(fault_rate, fault_kinds)
        self.name = BASELINE_NAME
        self.seed = seed
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.faults: list[str] = []  # defect kinds planted so far, in order
        self._lock = threading.Lock()

    async def design(self, req: DesignRequest) -> Design:
        if req.mode == "improve" and req.parent is None:
            raise ConfigError("designer mode 'improve' needs a parent candidate", "Pass parent=ParentCandidate(...).")
        names = [s.name for s in sample_snippets(req.k, req.seed)] if req.k > 0 else []
        choice = baseline_design(
            server_seed=self.seed, seed=req.seed, mode=req.mode, decoder=req.decoder, snippets=names,
            parent_code=req.parent.code if req.parent else None,
            parent_prm=dict(req.parent.hparams) if req.parent else None,
            fault_rate=self.fault_rate, fault_kinds=self.fault_kinds,
        )
        if choice.fault:
            with self._lock:
                self.faults.append(choice.fault)
        return Design(code=choice.code, prm=choice.prm, summary=choice.summary, mode=req.mode, decoder=req.decoder,
                      snippets=names, exchanges=[], producer=BASELINE_NAME, trace=choice.trace)


class BaselineReviewer:
    """The baseline's reviewer: the static validator and the hyperparameter check only (no LLM)."""

    kind: Literal["baseline"] = "baseline"

    def __init__(self) -> None:
        self.name = BASELINE_NAME

    async def review(self, code: str, prm: Prm) -> Review:
        return await review(code, None, use_llm=False, prm=prm)


class BaselineFixer:
    """ORACLE fixer of the baseline: undoes its OWN planted defect by re-composing from the file's marker.

    It is not a repair strategy (it cannot fix code it did not compose; it returns
    a default composition then), so no fix rate may be reported for it.
    """

    kind: Literal["baseline"] = "baseline"

    def __init__(self) -> None:
        self.name = BASELINE_NAME

    async def fix(self, code: str, prm: Prm, error: ErrorInput) -> Fix:
        text, category = describe_error(error)
        choice = baseline_fix(code, error_tail(text), prm, category)
        return Fix(code=choice.code, prm=choice.prm, summary=choice.summary, category=category, exchanges=[],
                   producer=BASELINE_NAME, trace=choice.trace)
