"""The source pieces the composer assembles into a captioning candidate (see `nncaption.agents.compose`).

The model code lives in real Python modules under `nncaption.agents.templates` (ruff and mypy check them; see that
package's docstring for the two rules: `SLOT_<NAME>` names are replaced, `  # only if <flag>` lines are kept or
dropped). `piece(name, slots, flags)` reads one template module's text after its start line and fills it in. Only
the file header and the section rule, which are text rather than code, stay strings here.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from importlib import resources

TEMPLATE_PACKAGE = "nncaption.agents.templates"
START_LINE = "# nncaption-template: start\n"
_SLOT = re.compile(r"SLOT_[A-Z][A-Z0-9_]*")
_ONLY_IF = re.compile(r"  # only if ([a-z_]+)$")

HEADER = '''{marker}
"""{summary}

{details}
"""

'''

SECTION = "# " + "-" * 75 + " {title}\n"


def template_text(name: str) -> str:
    """The piece of template module `name`: its text after the start line, leading blank lines dropped."""
    text = resources.files(TEMPLATE_PACKAGE).joinpath(f"{name}.py").read_text(encoding="utf-8")
    _header, sep, body = text.partition(START_LINE)
    if not sep:
        raise ValueError(f"template {name}.py has no start line {START_LINE.strip()!r}")
    return body.lstrip("\n")


def render(text: str, slots: Mapping[str, str], flags: Collection[str] = ()) -> str:
    """Fill a piece: drop the `# only if` lines whose flag is not set, replace every SLOT_<NAME> by `slots[NAME]`.

    A slot without a value, or a value given for no slot, is a ValueError (a template and its caller disagree).
    """
    lines = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        cond = _ONLY_IF.search(body)
        if cond:
            if cond.group(1) not in flags:
                continue
            line = body[: cond.start()] + line[len(body):]
        lines.append(line)
    used: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        name = match.group(0)[len("SLOT_"):]
        if name not in slots:
            raise ValueError(f"template slot {match.group(0)} has no value")
        used.add(name)
        return slots[name]

    out = _SLOT.sub(fill, "".join(lines))
    unused = set(slots) - used
    if unused:
        raise ValueError(f"values for no template slot: {', '.join(sorted(unused))}")
    return out


def piece(name: str, slots: Mapping[str, str] | None = None, flags: Collection[str] = ()) -> str:
    """Template module `name`'s piece, filled in (see `render`)."""
    return render(template_text(name), slots or {}, flags)


def rnn_decoder_source(cell: str, feed: bool) -> str:
    """The LSTM or GRU `CaptionDecoder` (`cell` is "LSTM" or "GRU"; `feed`: features fed at every step)."""
    return piece(
        "rnn_decoder",
        {"CELL": cell, "RNN": f"nn.{cell}", "FEED_DOC": " and are fed at every step" if feed else ""},
        flags={cell.lower()},
    )
