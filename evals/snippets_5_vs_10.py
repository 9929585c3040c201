"""The paper's ablation: the same search budget with 5 and with 10 backbone snippets in every designer prompt.

    python -m nncaption.evals.snippets_5_vs_10 --out DIR --llm-base-url http://HOST:8000/v1 \\
        --llm-model deepseek-ai/DeepSeek-R1-0528-Qwen3-8B --seeds 0,1,2 --candidates 20
    python -m nncaption.evals.snippets_5_vs_10 --out DIR --offline --seeds 0,1 --candidates 2   # smoke test

Both arms use the same endpoint, budget and seeds; only `agents.snippets` differs.
Ends with one comparison table (Markdown and CSV: success rate per stage and best
COCO-protocol BLEU-4, mean over seeds with bootstrap 95% CIs) and a plot.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from nncaption.evals.suite import Arm, suite_main

TITLE = "Backbone snippets per designer prompt: 5 vs 10"


def arms(base_url: str | None, model: str | None) -> list[Arm]:
    return [Arm(f"snippets-{k}", {"agents": {"kind": "llm", "snippets": k}}) for k in (5, 10)]


def main(argv: Sequence[str] | None = None) -> int:
    return suite_main("python -m nncaption.evals.snippets_5_vs_10", __doc__, TITLE, arms, argv)


if __name__ == "__main__":
    sys.exit(main())
