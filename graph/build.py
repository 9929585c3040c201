"""Wiring of the flat search graph (no subgraphs).

    START -> dispatch --Send--> design -> static -> review -> smoke -> train -> record -> dispatch
                                  \\         \\        \\        \\       \\
                                   +---------+--------+--------+-------+--> fix -> static (bounded rounds)

Every per-candidate node routes with `Command(goto=Send(next, task))`, so the
edges live in the nodes; `dispatch` ends the run (END) when the budget is used
and nothing is in flight. The LLM-facing nodes have a RetryPolicy for transient
endpoint errors (`TransientEndpointError`); everything else is a value in state.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import START, StateGraph
from langgraph.types import RetryPolicy

from nncaption.graph.nodes import Nodes
from nncaption.graph.pipeline import TransientEndpointError
from nncaption.graph.state import RunState

NODE_NAMES: tuple[str, ...] = ("dispatch", "design", "static", "review", "smoke", "train", "fix", "record")
THREAD_ID = "search"


def _fn(method: Any) -> Any:
    """A node method as LangGraph's loosely typed node callable (its stubs cannot express Send-fed nodes)."""
    return method


def build_graph(nodes: Nodes, *, retries: int = 3) -> StateGraph[Any]:
    """The uncompiled StateGraph (compile it with the run's checkpointer)."""
    retry = RetryPolicy(retry_on=TransientEndpointError, max_attempts=retries, initial_interval=0.5,
                        backoff_factor=2.0, max_interval=10.0, jitter=False)
    g: StateGraph[Any] = StateGraph(RunState)
    g.add_node("dispatch", _fn(nodes.dispatch))
    g.add_node("design", _fn(nodes.design), retry_policy=retry)
    g.add_node("static", _fn(nodes.static))
    g.add_node("review", _fn(nodes.review), retry_policy=retry)
    g.add_node("smoke", _fn(nodes.smoke))
    g.add_node("train", _fn(nodes.train))
    g.add_node("fix", _fn(nodes.fix), retry_policy=retry)
    g.add_node("record", _fn(nodes.record))
    g.add_edge(START, "dispatch")
    return g
