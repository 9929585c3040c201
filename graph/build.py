"""Wiring of the per-candidate graph: one LangGraph thread per candidate (`thread_id` = its id, e.g. "c0003").

    START -> design -> static -> review -> smoke -> train -> record -> END
               \\         \\        \\        \\       \\
                +---------+--------+--------+-------+--> fix -> static (bounded rounds)

Every node routes with `Command(goto=next)`, so the edges live in the nodes. The
scheduler (graph/scheduler.py) starts one thread per candidate and never waits for
a step of another candidate: there is no run-wide superstep. The LLM-facing nodes
have a RetryPolicy for transient endpoint errors (`TransientEndpointError`);
everything else is a value in state.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import START, StateGraph
from langgraph.types import RetryPolicy

from nncaption.graph.nodes import Nodes
from nncaption.graph.pipeline import TransientEndpointError
from nncaption.graph.state import Task

NODE_NAMES: tuple[str, ...] = ("design", "static", "review", "smoke", "train", "fix", "record")
PLAN_NODE = "dispatch"  # the scheduler's planning step in the steps table (not a graph node)


def _fn(method: Any) -> Any:
    """A node method as LangGraph's loosely typed node callable."""
    return method


def build_graph(nodes: Nodes, *, retries: int = 3) -> StateGraph[Any]:
    """The uncompiled per-candidate StateGraph (compile it with the run's checkpointer)."""
    retry = RetryPolicy(retry_on=TransientEndpointError, max_attempts=retries, initial_interval=0.5,
                        backoff_factor=2.0, max_interval=10.0, jitter=False)
    g: StateGraph[Any] = StateGraph(Task)
    g.add_node("design", _fn(nodes.design), retry_policy=retry)
    g.add_node("static", _fn(nodes.static))
    g.add_node("review", _fn(nodes.review), retry_policy=retry)
    g.add_node("smoke", _fn(nodes.smoke))
    g.add_node("train", _fn(nodes.train))
    g.add_node("fix", _fn(nodes.fix), retry_policy=retry)
    g.add_node("record", _fn(nodes.record))
    g.add_edge(START, "design")
    return g


def thread_config(cid: str, recursion_limit: int) -> dict[str, Any]:
    """The LangGraph config of candidate `cid`'s thread."""
    return {"configurable": {"thread_id": cid}, "recursion_limit": recursion_limit}
