"""An LLM endpoint against the random-search baseline on the same budget and seeds.

    python -m nncaption.evals.llm_vs_random --out DIR --llm-base-url http://HOST:8000/v1 \\
        --llm-model deepseek-ai/DeepSeek-R1-0528-Qwen3-8B --seeds 0,1,2 --candidates 20
    python -m nncaption.evals.llm_vs_random --out DIR --offline --seeds 0,1 --candidates 2   # smoke test

The "llm" arm designs, reviews and fixes through the endpoint; the "random" arm is
nn-caption's in-process random-search baseline (NOT an LLM; its fixer is an oracle
that undoes its own planted defects, so compare its fix-dependent rates with care).
Ends with one comparison table (Markdown and CSV: success rate per stage and best
COCO-protocol BLEU-4, mean over seeds with bootstrap 95% CIs) and a plot.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from nncaption.evals.suite import Arm, suite_main

TITLE = "LLM designer vs random search (same budget and seeds)"


def arms(base_url: str | None, model: str | None) -> list[Arm]:
    return [Arm("llm", {"agents": {"kind": "llm"}}), Arm("random", {"agents": {"kind": "baseline"}}, uses_llm=False)]


def main(argv: Sequence[str] | None = None) -> int:
    return suite_main("python -m nncaption.evals.llm_vs_random", __doc__, TITLE, arms, argv)


if __name__ == "__main__":
    sys.exit(main())
