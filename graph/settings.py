"""What a search run is configured with (validated; the TOML file and the CLI flags fill it).

`RunSettings` is the one resolved configuration: it is written to RUN_DIR/config.json
(secrets masked: only the *names* of the environment variables holding API keys are
ever stored) and read back by `--resume`. `nncaption.runconfig` loads it from TOML
and flags; the graph only reads it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nncaption.agents.settings import LLMSettings, mask_secrets
from nncaption.graph.policy import PolicySettings

AgentKind = Literal["baseline", "llm"]
SandboxKind = Literal["local", "docker", "ray"]
DatasetName = Literal["synthetic", "coco"]
DecoderName = Literal["lstm", "gru", "transformer"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetSettings(_Strict):
    """When the search stops: whichever limit comes first."""

    candidates: int = Field(default=4, ge=1, description="candidates to make (drafts, improvements and repairs)")
    wall_time_s: float | None = Field(default=None, gt=0, description="seconds of wall time (all sessions together)")
    max_tokens: int | None = Field(default=None, ge=1, description="LLM tokens (prompt + completion, all roles)")
    max_cost_usd: float | None = Field(default=None, gt=0, description="US dollars of LLM calls (each endpoint's "
                                       "price_in_per_mtok / price_out_per_mtok times its tokens), graph/budget.py")
    max_train_seconds: float | None = Field(default=None, gt=0, description="seconds of training jobs (CPU and "
                                            "GPU jobs together; reused jobs cost nothing), graph/budget.py")


class NoveltySettings(_Strict):
    """The near-duplicate check before training (graph/novelty.py): Jaccard over 5-token shingles of the
    normalised code against the most recent and the best trained candidates."""

    threshold: float = Field(default=0.95, ge=0.0, le=1.0, description="similarity at which a design is too close "
                             "(asked again once, then recorded as a duplicate); 0 = off")
    recent: int = Field(default=50, ge=0, le=1000, description="most recent trained candidates compared")
    best: int = Field(default=10, ge=0, le=1000, description="best scored candidates compared")


class AgentSettings(_Strict):
    """Who designs, reviews and fixes: the random-search baseline (in-process) or LLM endpoints."""

    kind: AgentKind = "baseline"
    llm: LLMSettings = Field(default_factory=lambda: LLMSettings())
    llm_review: bool = Field(default=True, description="with kind=llm: ask the reviewer LLM after the static check")
    snippets: int = Field(default=5, ge=0, le=20, description="backbone snippets in each designer prompt")
    from_lemur: bool = False
    decoders: tuple[DecoderName, ...] = ("lstm", "gru", "transformer")
    replay: str | None = Field(default=None, description="a run directory whose recorded LLM exchanges answer this run")
    fault_rate: float = Field(default=0.0, ge=0.0, le=1.0,
                              description="baseline only: planted defects (exercise the fixer)")


class TrainSettings(_Strict):
    """How every candidate is smoke-checked, trained and scored in the sandbox."""

    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=32, ge=1)
    max_train_batches: int | None = Field(default=None, ge=1)
    max_val_images: int | None = Field(default=None, ge=1)
    epoch_time_limit_s: float = Field(default=300.0, gt=0)
    smoke_time_limit_s: float = Field(default=120.0, gt=0)
    max_params: int = Field(default=20_000_000, ge=1)
    threads: int | None = Field(default=None, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"
    jobs_root: str | None = Field(default=None, description="content-addressed sandbox jobs (default RUN_DIR/jobs); "
                                  "share one between runs to reuse identical trainings")


class DataSettings(_Strict):
    dataset: DatasetName = "synthetic"
    coco_root: str | None = None
    prepared: str | None = None
    size: int = Field(default=64, ge=16, le=512)
    data_seed: int = 0
    val_limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _coco_needs_root(self) -> DataSettings:
        if self.dataset == "coco" and not self.coco_root and not self.prepared:
            raise ValueError("data.dataset = 'coco' needs data.coco_root (or --coco-root DIR)")
        if self.coco_root and self.dataset != "coco":
            raise ValueError("data.coco_root is only used with data.dataset = 'coco'")
        return self


class SandboxSettings(_Strict):
    kind: SandboxKind = "local"
    ray_address: str | None = None
    docker_runtime: str | None = None
    gpus: tuple[int, ...] = ()
    jobs_per_gpu: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _options_match_kind(self) -> SandboxSettings:
        if self.ray_address and self.kind != "ray":
            raise ValueError("sandbox.ray_address needs sandbox.kind = 'ray'")
        if self.docker_runtime and self.kind != "docker":
            raise ValueError("sandbox.docker_runtime needs sandbox.kind = 'docker'")
        return self


class RunSettings(_Strict):
    """The resolved configuration of one search run."""

    seed: int = 0
    concurrency: int = Field(default=2, ge=1, le=256, description="candidates in flight at once")
    lookahead: int = Field(default=1, ge=0, le=64, description="candidates beyond concurrency that may design and "
                           "check while every training slot is busy (each waits for a free training slot)")
    refill_at: int | None = Field(default=None, ge=1, le=256,
                                  description="ignored (older runs): the scheduler fills each slot as it frees")
    max_fix_rounds: int = Field(default=2, ge=0, le=10, description="fixer rounds per candidate (checks and training)")
    node_retries: int = Field(default=3, ge=1, le=10, description="tries of a node on a transient endpoint error")
    endpoint_down_after: int = Field(default=3, ge=1, description="stop when this many candidates in a row lost their "
                                     "endpoint")
    job_error_after: int = Field(default=3, ge=1, description="stop when this many candidates in a row could not run "
                                 "on this machine (category job-error, e.g. CUDA not usable in the sandbox)")
    budget: BudgetSettings = Field(default_factory=lambda: BudgetSettings())
    policy: PolicySettings = Field(default_factory=lambda: PolicySettings())
    novelty: NoveltySettings = Field(default_factory=lambda: NoveltySettings())
    agents: AgentSettings = Field(default_factory=lambda: AgentSettings())
    train: TrainSettings = Field(default_factory=lambda: TrainSettings())
    data: DataSettings = Field(default_factory=lambda: DataSettings())
    sandbox: SandboxSettings = Field(default_factory=lambda: SandboxSettings())

    @property
    def recursion_limit(self) -> int:
        """Steps one candidate's thread may take: at most ~6 nodes per fix round, with room to spare."""
        return 20 + 6 * (self.max_fix_rounds + 1)

    def masked_dump(self) -> dict[str, Any]:
        """The settings as JSON data with secrets masked (URL credentials, secret-looking keys): what a run
        directory, `config show`, traces and Studio store or print."""
        return dict(mask_secrets(self.model_dump(mode="json")))
