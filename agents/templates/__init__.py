"""The composer's model templates: real Python modules (ruff and mypy check them) that
`nncaption.agents.compose_source` reads as text and assembles into a candidate file.

Each template module has a header (its docstring and the imports that make it valid, type-checked Python) and,
after the line `# nncaption-template: start`, the piece the composer copies. Inside a piece:

- a name `SLOT_<NAME>` (defined in `slots`, so the module imports) is replaced by the composer's value for it;
- a line ending in `  # only if <flag>` is kept (without that comment) when the flag holds, else dropped.

The names the pieces use from each other (`PAD`, `CaptionDecoder`, `Backbone`, ...) are imported in the headers,
so a piece that uses a name no other piece defines fails the type check here, not in a sandbox job.
"""
