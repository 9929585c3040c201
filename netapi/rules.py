"""The rules the runner applies to what the candidate's process reports: losses, parameters, decoded ids.

The candidate's process (`netapi.child`) reports through the channel; everything
it says is checked here, in the runner, with the same rules for smoke and train
jobs. A broken rule is a `CandidateFailure` with a message for the fixer agent.
"""

from __future__ import annotations

import math
from typing import Any

from nncaption.netapi.categories import Category
from nncaption.netapi.contract import EOS
from nncaption.netapi.job import MAX_PREDICTION_LEN, Step
from nncaption.netapi.supervise import CandidateFailure

NON_FINITE = ("nan", "inf", "-inf", "infinity", "-infinity")


def reported_float(value: Any) -> float | None:
    """A number the child reported: an int/float, a "nan"/"inf" string (how non-finite values travel), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in NON_FINITE:
        return float(value)
    return None


def cut_at_eos(row: list[int]) -> list[int]:
    """Raw ids up to and including the first EOS, at most MAX_PREDICTION_LEN."""
    row = [int(t) for t in row[:MAX_PREDICTION_LEN]]
    if EOS in row:
        row = row[: row.index(EOS) + 1]
    return row


def batch_request_failure(header: dict[str, Any], n_batches: int, epoch: int) -> CandidateFailure | None:
    """The NaN guard on a request for the next batch (it reports the loss and parameters after the previous one)."""
    index = header.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_batches:
        return CandidateFailure(Category.CRASHED, "the candidate's process asked for a batch that does not exist; "
                                f"it was killed.\nWhat to change: {Category.CRASHED.hint}", step=Step.LEARN)
    loss = reported_float(header.get("loss"))
    if loss is not None and not math.isfinite(loss):
        return CandidateFailure(Category.NAN, f"the training loss became {loss} (a non-finite loss) at batch "
                                f"{index} of epoch {epoch} (model.last_loss).\nWhat to change: {Category.NAN.hint}",
                                step=Step.LEARN)
    if header.get("finite") is False:
        return CandidateFailure(Category.NAN, f"the parameters held NaN/Inf by batch {index} of epoch {epoch}: a "
                                "non-finite loss was back-propagated (the training diverged).\n"
                                f"What to change: {Category.NAN.hint}", step=Step.LEARN)
    return None


def learned_failure(header: dict[str, Any], *, epoch: int, served: int, where: str) -> CandidateFailure | None:
    """The rules at the end of Net.learn: finite loss and parameters, batches read, parameters changed (epoch 1)."""
    loss = reported_float(header.get("loss"))
    if loss is not None and not math.isfinite(loss):
        return CandidateFailure(Category.NAN, f"Net.learn returned a non-finite loss ({loss}){where}.\n"
                                f"What to change: {Category.NAN.hint}", step=Step.LEARN)
    if header.get("finite") is False:
        return CandidateFailure(Category.NAN, f"a parameter holds NaN/Inf after Net.learn{where} (a non-finite loss "
                                f"diverged the training).\nWhat to change: {Category.NAN.hint}", step=Step.LEARN)
    if served == 0:
        return CandidateFailure(Category.LEARN_ERROR, f"Net.learn returned without reading a single training batch "
                                f"in epoch {epoch}: iterate over train_data and step the optimiser.\n"
                                f"What to change: {Category.LEARN_ERROR.hint}", step=Step.LEARN)
    if header.get("changed") is False:
        return CandidateFailure(
            Category.LEARN_ERROR,
            f"Net.learn ran over {served} batches but changed no parameter. In learn, for each (images, captions) "
            "batch: compute the loss, call loss.backward() and self.optimizer.step() (the optimiser created in "
            "train_setup from self.parameters()).", step=Step.LEARN)
    return None


def decoded_rows(header: dict[str, Any], payloads: list[bytes], batch: int, vocab_size: int) -> Any:
    """The ids [batch, L] the child returned for one batch of validation images (a numpy int64 array), checked:
    1 <= L <= MAX_PREDICTION_LEN, a payload of exactly that size, every id inside the vocabulary.
    Raises CandidateFailure (eval-contract) otherwise.
    """
    import numpy as np

    def bad(why: str) -> CandidateFailure:
        return CandidateFailure(Category.EVAL_CONTRACT, f"the decode of a batch of {batch} validation images {why}.\n"
                                f"What to change: {Category.EVAL_CONTRACT.hint}", step=Step.DECODE)

    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in shape)):
        raise bad("came back without a shape")
    if shape[0] != batch:
        raise bad(f"came back with {shape[0]} rows")
    if shape[1] < 1:
        raise bad("returned no tokens; decode at least until EOS")
    if shape[1] > MAX_PREDICTION_LEN:
        raise bad(f"came back longer than {MAX_PREDICTION_LEN} tokens")
    if len(payloads) != 1 or len(payloads[0]) != batch * shape[1] * 8:
        raise bad("came back with a payload that does not match its shape")
    rows = np.frombuffer(payloads[0], dtype=np.int64).reshape(batch, shape[1])
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= vocab_size):
        raise bad(f"returned token ids outside [0, {vocab_size})")
    return rows
