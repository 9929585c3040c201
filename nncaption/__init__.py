"""nn-caption: LLM agents design image-captioning networks, train them safely and learn from the results.

Layers (dependencies point left to right only):
`nncaption.netapi` <- `nncaption.sandbox` <- `nncaption.agents` <- `nncaption.graph` <- CLI.
"""

__version__ = "0.1.0"
