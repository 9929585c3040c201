"""The one vocabulary of failure categories, their properties, and the typed verdict.

Every layer (validator, runner, sandbox, agents, graph, CLI) reports failures
with one of these categories, so that the fixer agent and the user see the same
words. Each category carries a short "what to do next" hint and its properties
(`PROPERTIES`): whether it is transient (the same call may succeed when retried),
whether a run of them stops the search (`stops_run`: "endpoint" when the LLM
endpoint is down, "machine" when jobs cannot run here), whether it is the
candidate's fault, and whether the fixer may try to repair it (`debuggable`).
The graph's category sets (TRANSIENT_CATEGORIES, ENDPOINT_CATEGORIES,
NOT_DEBUGGABLE, JOB_ERROR_CATEGORIES) are derived from this table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class Category(str, Enum):
    """Why a candidate was rejected or failed. Values are stable strings."""

    SYNTAX = "syntax"
    MISSING_SYMBOL = "missing-symbol"
    BAD_SIGNATURE = "bad-signature"
    FORBIDDEN_CALL = "forbidden-call"
    NEEDS_INTERNET = "needs-internet"
    INIT_ERROR = "init-error"
    SETUP_ERROR = "setup-error"
    LEARN_ERROR = "learn-error"
    SHAPE_ERROR = "shape-error"
    EVAL_CONTRACT = "eval-contract"
    NAN = "nan"
    TOO_LARGE = "too-large"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out-of-memory"
    CRASHED = "crashed"
    JOB_ERROR = "job-error"  # the job could not run here for a reason outside the candidate's code
    BAD_HYPERPARAMETERS = "bad-hyperparameters"
    # The reply held no usable candidate (agents/extract.py).
    EMPTY_REPLY = "empty-reply"
    NO_CODE = "no-code"
    TRUNCATED = "truncated"  # finish_reason "length" without a complete final answer
    MULTIPLE_CANDIDATES_NONE_VALID = "multiple-candidates-none-valid"
    BAD_STRUCTURED_REPLY = "bad-structured-reply"  # a reply that should hold a JSON object held none
    # The LLM endpoint (agents/errors.py).
    ENDPOINT_UNAVAILABLE = "endpoint-unavailable"
    ENDPOINT_TIMEOUT = "endpoint-timeout"
    RATE_LIMITED = "rate-limited"
    ENDPOINT_REJECTED = "endpoint-rejected"
    BAD_RESPONSE = "bad-response"  # not a usable chat completion (invalid JSON, redirect, too deep, ...)
    REPLY_TOO_LARGE = "reply-too-large"  # body or reasoning over the configured cap
    CONTEXT_LENGTH = "context-length"  # the prompt alone does not fit the model's context
    CONTEXT_TRUNCATED = "context-truncated"  # the server silently cut the prompt
    LLM = "llm"  # an endpoint failure of no more specific kind
    VLLM_NOT_INSTALLED = "vllm-not-installed"
    # The search itself (graph).
    DUPLICATE = "duplicate"
    INTERRUPTED = "interrupted"
    INTERNAL = "internal"
    STOPPED_EARLY = "stopped-early"  # training stopped by the search before its epochs ran out (future use)
    # Errors of the run or the command line (NNCaptionError subclasses); never a candidate's row.
    ERROR = "error"
    CONFIG = "config"
    USAGE = "usage"
    DATASET = "dataset"
    ENVIRONMENT = "environment"
    SANDBOX_DOCKER = "sandbox-docker"
    SANDBOX_IMAGE = "sandbox-image"
    CHECKPOINT = "checkpoint"  # a checkpoint database that holds what the project never writes
    RUN_DIR = "run-dir"  # a run directory with invalid ids, links or files
    UNTRUSTED_RUN = "untrusted-run"  # a copied run's config asks for endpoints/keys/sandbox the user did not give

    def __str__(self) -> str:  # "syntax", not "Category.SYNTAX"
        return self.value

    @property
    def hint(self) -> str:
        """What the author of the candidate (or the user) should do next."""
        return HINTS[self]

    @property
    def props(self) -> CategoryProps:
        return PROPERTIES[self]

    @property
    def transient(self) -> bool:
        """Retrying the same call may succeed."""
        return PROPERTIES[self].transient

    @property
    def stops_run(self) -> str | None:
        """"endpoint" or "machine" when a run of these ends the search; None otherwise."""
        return PROPERTIES[self].stops_run

    @property
    def candidates_fault(self) -> bool:
        """The candidate's code (or the reply that should hold it) is to blame."""
        return PROPERTIES[self].candidates_fault

    @property
    def debuggable(self) -> bool:
        """The fixer may try to repair a candidate that failed this way."""
        return PROPERTIES[self].debuggable


@dataclass(frozen=True)
class CategoryProps:
    """What a category means for the search (see the module docstring)."""

    transient: bool = False
    stops_run: str | None = None  # "endpoint" | "machine" | None
    candidates_fault: bool = False
    debuggable: bool = False


_CODE = CategoryProps(candidates_fault=True, debuggable=True)
_REPLY = CategoryProps(candidates_fault=True, debuggable=False)  # a reply without a usable candidate
_DOWN = CategoryProps(transient=True, stops_run="endpoint")
_NEUTRAL = CategoryProps()
_CODE_VALUES = ("syntax", "missing-symbol", "bad-signature", "forbidden-call", "needs-internet", "init-error",
                "setup-error", "learn-error", "shape-error", "eval-contract", "nan", "too-large", "timeout",
                "out-of-memory", "crashed", "bad-hyperparameters", "multiple-candidates-none-valid")


def _props(c: Category) -> CategoryProps:
    if c.value in _CODE_VALUES:
        return _CODE
    if c in (Category.EMPTY_REPLY, Category.NO_CODE, Category.TRUNCATED):
        return _REPLY
    if c in (Category.ENDPOINT_UNAVAILABLE, Category.ENDPOINT_TIMEOUT, Category.RATE_LIMITED):
        return _DOWN
    if c is Category.JOB_ERROR:
        return CategoryProps(stops_run="machine")
    return _NEUTRAL


PROPERTIES: dict[Category, CategoryProps] = {c: _props(c) for c in Category}

# The sets the graph branches on (string values, so plain `str` categories compare directly).
TRANSIENT_CATEGORIES: frozenset[str] = frozenset(c.value for c in Category if c.transient)
ENDPOINT_CATEGORIES: frozenset[str] = frozenset(c.value for c in Category if c.stops_run == "endpoint")
JOB_ERROR_CATEGORIES: frozenset[str] = frozenset(c.value for c in Category if c.stops_run == "machine")
NOT_DEBUGGABLE: frozenset[str] = frozenset(c.value for c in Category if not c.debuggable)
# Categories a verdict on candidate code can carry (the reviewer's and fixer's vocabulary).
CODE_CATEGORIES: tuple[str, ...] = tuple(c.value for c in Category if c.candidates_fault and c.debuggable)


HINTS: dict[Category, str] = {
    Category.SYNTAX: "Fix the Python syntax at the reported line; the file must parse as Python 3.11.",
    Category.MISSING_SYMBOL: "Define `supported_hyperparameters()` at module level and `class Net(nn.Module)` with "
    "__init__, train_setup, learn and forward.",
    Category.BAD_SIGNATURE: "Use the exact signatures: __init__(self, in_shape, out_shape, prm, device), "
    "train_setup(self, prm), learn(self, train_data), forward(self, images, captions=None, hidden_state=None).",
    Category.FORBIDDEN_CALL: "Remove process spawning, networking, file writes outside the working directory, "
    "exit calls and dynamic code execution; a model only needs torch.",
    Category.NEEDS_INTERNET: "Do not download weights: build the backbone from scratch (no `pretrained=True`, "
    "no `weights=...`, no torch.hub, no load_state_dict_from_url).",
    Category.INIT_ERROR: "Net.__init__ raised: check layer sizes against in_shape (B, C, H, W) and "
    "out_shape (vocab_size,), and read prm with the keys it is given.",
    Category.SETUP_ERROR: "train_setup raised: create the optimiser and loss from self.parameters() and prm['lr'], "
    "prm['momentum'].",
    Category.LEARN_ERROR: "learn raised: it gets (images [B,3,H,W] float, captions [B,Ncap,T] long) batches; "
    "use captions[:, 0, :] for teacher forcing and step the optimiser.",
    Category.SHAPE_ERROR: "Fix tensor shapes: forward(images) must return token ids [B, L] or logits [B, L, V] "
    "(V = vocab size), optionally as the first element of a tuple.",
    Category.EVAL_CONTRACT: "forward(images) without captions must decode free-running (greedy from SOS, stop at EOS) "
    "and return ids [B, L] or logits [B, L, V].",
    Category.NAN: "The loss or the outputs became NaN/Inf: lower the learning rate, clip gradients, "
    "check divisions and log/exp of unbounded values.",
    Category.TOO_LARGE: "Reduce the parameter count: fewer channels or layers, a smaller embedding/hidden size.",
    Category.TIMEOUT: "The job ran past its time limit: make the model smaller or cheaper per batch, "
    "and make sure no loop waits forever.",
    Category.OUT_OF_MEMORY: "The job ran out of memory: reduce batch-independent buffers, channels, "
    "hidden sizes or the decoder length.",
    Category.CRASHED: "The process died without a Python error (signal, exit call or killed): "
    "remove exit calls, ctypes and native tricks; read the stderr tail.",
    Category.JOB_ERROR: "Nothing to change in the code: the job could not run on this machine (for example CUDA "
    "is not usable in the sandbox, or the dataset cannot be read). Check the machine; for CUDA run "
    "`python -m nncaption.evals.gpu_doctor`.",
    Category.BAD_HYPERPARAMETERS: "Give the hyperparameters as numbers in range: lr in (0, 1], momentum in [0, 1), "
    "dropout in [0, 1), batch an integer 1..512; other keys finite numbers named in supported_hyperparameters().",
    Category.EMPTY_REPLY: "The model returned nothing: check max_tokens and the endpoint, then ask again.",
    Category.NO_CODE: "Answer with the complete candidate file in one ```python fenced block.",
    Category.TRUNCATED: "The reply was cut off (max_tokens reached): raise max_tokens or ask for a shorter model "
    "and less reasoning.",
    Category.MULTIPLE_CANDIDATES_NONE_VALID: "The reply held several code blocks and none parses as Python: answer "
    "with ONE complete ```python block that defines the whole file.",
    Category.BAD_STRUCTURED_REPLY: "The model did not follow the JSON format; retry, or use a server that honours "
    "response_format.",
    Category.ENDPOINT_UNAVAILABLE: "Start the LLM server and check base_url; 5xx errors mean the server or a proxy "
    "in front of it is failing: read its log.",
    Category.ENDPOINT_TIMEOUT: "The endpoint stopped sending: check the server is not overloaded or hung; raise "
    "idle_timeout_s / timeout_s or lower max_tokens.",
    Category.RATE_LIMITED: "Lower the concurrency limit, raise max_retries, or wait and run again.",
    Category.ENDPOINT_REJECTED: "Read the endpoint's message: a wrong model name, an invalid API key or an "
    "unsupported parameter.",
    Category.BAD_RESPONSE: "The endpoint answered with something that is not a usable chat completion: check "
    "base_url (it must end in /v1) and the server.",
    Category.REPLY_TOO_LARGE: "The reply exceeded the size cap: lower max_tokens or raise max_reply_bytes.",
    Category.CONTEXT_LENGTH: "The prompt does not fit the model's context: use fewer snippets or serve the model "
    "with a longer context (--max-model-len).",
    Category.CONTEXT_TRUNCATED: "The server cut the prompt silently: raise its context (Ollama: num_ctx or "
    "OLLAMA_CONTEXT_LENGTH; vLLM: --max-model-len; llama.cpp: -c).",
    Category.LLM: "Check the endpoint settings (base_url, model, API key variable) and that the server is up.",
    Category.VLLM_NOT_INSTALLED: "Install the optional extra on a machine with a GPU: pip install 'nn-caption[vllm]'.",
    Category.DUPLICATE: "Nothing to fix: the same network was already trained.",
    Category.INTERRUPTED: "The run was stopped while this candidate was in flight; --resume continues it.",
    Category.INTERNAL: "An error inside nn-caption: please report it with the trace.",
    Category.STOPPED_EARLY: "The search stopped this training early.",
    Category.ERROR: "Read the message.",
    Category.CONFIG: "Fix the named configuration value.",
    Category.USAGE: "Fix the command line (see --help).",
    Category.DATASET: "Prepare the dataset again (nncaption data prepare).",
    Category.ENVIRONMENT: "Fix the machine's setup as the message says.",
    Category.SANDBOX_DOCKER: "Check that Docker is installed and running.",
    Category.SANDBOX_IMAGE: "Build the sandbox image again.",
    Category.CHECKPOINT: "The run's checkpoints.sqlite holds data nn-caption never writes: do not resume or fork "
    "a run directory you do not trust.",
    Category.RUN_DIR: "The run directory was edited or is damaged: use a run directory you trust.",
    Category.UNTRUSTED_RUN: "The run directory's config.json asks for settings you did not give: pass them on the "
    "command line, or --trust-run-config if you trust that run directory.",
}


@dataclass(frozen=True)
class Verdict:
    """Outcome of one validation stage.

    `message` is written for the fixer agent: what is wrong, where, and what to
    change. `line` is a 1-based line number in the candidate file when known.
    """

    ok: bool
    stage: str  # "static" | "smoke"
    category: Category | None = None
    message: str = ""
    line: int | None = None

    @classmethod
    def accept(cls, stage: str, message: str = "accepted") -> Verdict:
        return cls(ok=True, stage=stage, category=None, message=message, line=None)

    @classmethod
    def reject(cls, stage: str, category: Category, message: str, line: int | None = None) -> Verdict:
        return cls(ok=False, stage=stage, category=category, message=message, line=line)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["category"] = self.category.value if self.category else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        cat = d.get("category")
        return cls(
            ok=bool(d["ok"]),
            stage=str(d["stage"]),
            category=Category(cat) if cat else None,
            message=str(d.get("message", "")),
            line=d.get("line"),
        )
