"""The Net API contract: special tokens, the documented text, output decoding.

`CONTRACT.md` beside this file is the single source of the contract; prompts and
the validator both use it through `contract_text()`.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIALS: tuple[str, ...] = ("<pad>", "<sos>", "<eos>", "<unk>")

REQUIRED_HPARAMS: tuple[str, ...] = ("lr", "momentum", "dropout")
NET_METHODS: dict[str, tuple[str, ...]] = {
    "__init__": ("self", "in_shape", "out_shape", "prm", "device"),
    "train_setup": ("self", "prm"),
    "learn": ("self", "train_data"),
    "forward": ("self", "images", "captions", "hidden_state"),
}


def contract_text() -> str:
    """The human- and LLM-readable contract (CONTRACT.md)."""
    return resources.files("nncaption.netapi").joinpath("CONTRACT.md").read_text(encoding="utf-8")


class OutputContractError(ValueError):
    """forward(images) returned something that is neither ids nor logits."""


def output_to_ids(out: Any, batch: int, vocab_size: int) -> torch.Tensor:
    """Turn a free-running forward() result into token ids [B, L] (long, on CPU).

    Accepts ids [B, L], logits [B, L, V] or a tuple/list whose first element is
    one of those. Raises OutputContractError with a message for the fixer.
    """
    import torch

    if isinstance(out, (tuple, list)):
        if not out:
            raise OutputContractError("forward(images) returned an empty tuple; return ids [B, L] or logits [B, L, V].")
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise OutputContractError(
            f"forward(images) returned {type(out).__name__}; return a tensor of ids [B, L] or logits [B, L, V]."
        )
    if out.dim() == 3:
        if out.shape[0] != batch or out.shape[2] != vocab_size:
            raise OutputContractError(
                f"forward(images) returned logits of shape {tuple(out.shape)}; expected [{batch}, L, {vocab_size}]."
            )
        if not torch.isfinite(out).all():
            raise OutputContractError("forward(images) returned NaN/Inf logits.")
        ids = out.argmax(dim=-1)
    elif out.dim() == 2:
        if out.shape[0] != batch:
            raise OutputContractError(
                f"forward(images) returned ids of shape {tuple(out.shape)}; expected [{batch}, L]."
            )
        if out.is_floating_point():
            if not torch.isfinite(out).all():
                raise OutputContractError("forward(images) returned NaN/Inf values where token ids were expected.")
            if not torch.equal(out, out.round()):
                raise OutputContractError(
                    "forward(images) returned a 2-D float tensor that is not integral; "
                    "return long token ids [B, L] or logits [B, L, V]."
                )
        ids = out.long()
    else:
        raise OutputContractError(
            f"forward(images) returned a {out.dim()}-D tensor of shape {tuple(out.shape)}; "
            f"expected ids [B, L] or logits [B, L, V]."
        )
    ids = ids.detach().cpu()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise OutputContractError(
            f"forward(images) returned token ids outside [0, {vocab_size}); ids must index the vocabulary."
        )
    return ids

