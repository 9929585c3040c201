"""nn-caption: LLM agents design image-captioning networks, train them safely and learn from the results.

Layers (dependencies point one way only): `nncaption.netapi` <- `nncaption.sandbox` <- `nncaption.agents`,
`nncaption.prompts` <- `nncaption.graph` <- the CLI (`nncaption.cli` and `nncaption.cmd_*`); `nncaption.evals` holds
benchmarks. The top-level folders of the repository install as these subpackages (setuptools package-dir).
"""

__version__ = "0.1.0"
