"""The fixed vocabulary of failure categories and the typed verdict.

Every layer (validator, runner, sandbox, agents, graph) reports
failures with one of these categories, so that the fixer agent and the user see
the same words. Each category carries a short "what to do next" hint.
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

    def __str__(self) -> str:  # "syntax", not "Category.SYNTAX"
        return self.value

    @property
    def hint(self) -> str:
        """What the author of the candidate should do next."""
        return HINTS[self]


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
