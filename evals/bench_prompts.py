"""How much of a run's designer prompts can a server's prefix cache reuse?

    python -m nncaption.evals.bench_prompts [--seeds 0 1] [--k 5] [--json]

Renders two designer prompts of one run (the same dataset facts; different seeds, so
different snippets, and a decoder hint and feedback only in the second) exactly as
`design()` sends them, and prints the length in characters of their shared prefix
next to the parts that should be inside it: the system text, then the user message's
contract, dataset facts, rules and answer format. vLLM's automatic prefix caching
reuses the KV cache of a shared prefix, so the target is at least the system text
plus the contract.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from nncaption.agents.feedback import CandidateSummary, FailureSummary, Feedback
from nncaption.prompts.library import DatasetFacts, designer_messages, sample_snippets, system_text
from nncaption.prompts.library import contract_text as _contract_text

FACTS = DatasetFacts(vocab_size=317, image_size=64, max_len=20, n_caps=5, n_train=800, name="synthetic")


def chat_text(messages: Sequence[dict[str, Any]]) -> str:
    """The messages as one string in order (what a chat template concatenates, minus the role tokens)."""
    return "".join(f"<{m['role']}>{m['content']}" for m in messages)


def shared_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of `a` and `b`."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def measure(seeds: Sequence[int] = (0, 1), k: int = 5) -> dict[str, Any]:
    """Prefix statistics of two designer prompts of one run."""
    fb = Feedback(top=[CandidateSummary("resnet + GRU", {"lr": 0.001, "batch": 32}, [0.02, 0.04])],
                  failures=[FailureSummary("shape-error", "RuntimeError: mat1 and mat2 shapes cannot be multiplied")])
    first = designer_messages(FACTS, sample_snippets(k, seeds[0]))
    second = designer_messages(FACTS, sample_snippets(k, seeds[1]), decoder="transformer",
                               top=[c.to_prompt() for c in fb.top], failures=[f.to_prompt() for f in fb.failures])
    a, b = chat_text(first), chat_text(second)
    shared = shared_prefix(a, b)
    system = len(chat_text([{"role": "system", "content": system_text("designer")}]))
    user_a = first[1]["content"]
    contract_end = system + len("<user>") + user_a.index(_contract_text().strip()) + len(_contract_text().strip())
    constant_end = system + len("<user>") + user_a.index("# Task")
    return {
        "seeds": list(seeds), "k": k, "prompt_chars": [len(a), len(b)], "shared_prefix_chars": shared,
        "system_chars": system, "system_plus_contract_chars": contract_end,
        "constant_part_chars": constant_end,
        "target_met": shared >= contract_end,
        "shared_fraction": round(shared / max(len(a), 1), 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nncaption.evals.bench_prompts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs=2, default=(0, 1), metavar=("A", "B"))
    parser.add_argument("--k", type=int, default=5, help="snippets per prompt (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    r = measure(tuple(args.seeds), args.k)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"two designer prompts of one run (seeds {r['seeds'][0]} and {r['seeds'][1]}, K={r['k']}): "
              f"{r['prompt_chars'][0]} and {r['prompt_chars'][1]} characters")
        print(f"shared prefix: {r['shared_prefix_chars']} characters ({r['shared_fraction']:.0%} of the first)")
        print(f"  system text ends at {r['system_chars']}, system + contract at {r['system_plus_contract_chars']}, "
              f"constant part (facts, rules, answer format) at {r['constant_part_chars']}")
        print(f"target (shared prefix >= system text + contract): {'met' if r['target_met'] else 'NOT met'}")
    return 0 if r["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
