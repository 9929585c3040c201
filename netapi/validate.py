"""Static validation of a candidate file: parse, required symbols, signatures, safety.

`static_check(source)` never imports or runs the candidate; it reads the syntax
tree with `ast` and returns a `Verdict` (stage "static") in milliseconds.

What it rejects, in this order of precedence (the verdict's category is the
first that applies; its message lists every problem found, so the fixer can
repair them all in one round):

    syntax          the file does not parse
    missing-symbol  no module-level `supported_hyperparameters`, no `class Net`
                    deriving from nn.Module, or a required method is absent
    bad-signature   a Net method's parameters differ from netapi.contract.NET_METHODS,
                    or `supported_hyperparameters` is not a function returning a set
    forbidden-call  an import outside the allow-list of CONTRACT.md (validate_rules),
                    dangerous members of allowed modules (torch.load, numpy.load with
                    allow_pickle, os.system, ...), exit calls, dynamic code execution,
                    file writes outside the working directory, sandbox-escape idioms
    needs-internet  torch.hub, model_zoo, load_state_dict_from_url, `pretrained=True`,
                    `weights=<not None>` in torchvision constructors, `from_pretrained`

The safety scan is pragmatic, not a proof: it resolves import aliases
(`import os as o`, `from os import system`), simple re-bindings (`f = os.system`),
`getattr(module, "name")`, `__builtins__[...]`, `sys.modules[...]` and
`globals()`. Real containment comes from the sandbox.

The work is split by concern: `validate_rules` (the allow-list, read from
CONTRACT.md, and the dangerous names), `validate_symbols` (symbols and
signatures), `validate_safety` (the safety scan) and `validate_paths` (syntax-tree
helpers). This module is the public face: `static_check` and `find_problems`.
A UTF-8 byte-order mark at the start of the file is accepted, as Python does.
"""

from __future__ import annotations

from nncaption.netapi import pyast
from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.validate_paths import Finding, clip
from nncaption.netapi.validate_rules import allowed_modules, allowed_summary
from nncaption.netapi.validate_safety import SafetyScan
from nncaption.netapi.validate_symbols import check_symbols

__all__ = ["STAGE", "MAX_LISTED", "CATEGORY_ORDER", "Finding", "static_check", "find_problems", "allowed_modules",
           "allowed_summary"]

STAGE = "static"
MAX_LISTED = 6  # problems spelled out in one verdict message
BOM = "\ufeff"

CATEGORY_ORDER: tuple[Category, ...] = (
    Category.SYNTAX,
    Category.MISSING_SYMBOL,
    Category.BAD_SIGNATURE,
    Category.FORBIDDEN_CALL,
    Category.NEEDS_INTERNET,
)


def static_check(source: str, filename: str = "candidate.py") -> Verdict:
    """Validate candidate source without importing it; stage "static".

    Accepts when no problem is found. Otherwise rejects with the category of the
    most basic problem (syntax < missing-symbol < bad-signature < forbidden-call <
    needs-internet), its line, and a message that lists up to MAX_LISTED problems,
    each with its line and what to change, followed by the category's hint.
    """
    findings = find_problems(source, filename)
    if not findings:
        return Verdict.accept(STAGE, "static check passed: symbols, signatures and safety rules are fine")
    primary = findings[0]
    lines = [f"- {f.message}" for f in findings[:MAX_LISTED]]
    if len(findings) > MAX_LISTED:
        lines.append(f"- ... and {len(findings) - MAX_LISTED} more problem(s) of the same kinds")
    head = f"{len(findings)} problem(s) in {filename}:" if len(findings) > 1 else f"problem in {filename}:"
    message = "\n".join([head, *lines, f"What to change: {primary.category.hint}"])
    return Verdict.reject(STAGE, primary.category, message, primary.line)


def find_problems(source: str, filename: str = "candidate.py") -> list[Finding]:
    """Every problem static_check would report, most basic category first, then by line."""
    if source.startswith(BOM):  # Python accepts a UTF-8 BOM at the start of a source file; so do we
        source = source[len(BOM):]
    try:
        tree = pyast.parse(source, filename=filename, type_comments=False)
    except SyntaxError as e:
        text = (e.text or "").strip()
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        shown = f": `{clip(text, 100)}`" if text else ""
        msg = f"{where}: {e.msg}{shown}. Fix the syntax there (unclosed brackets, indentation, a stray fence)."
        return [Finding(Category.SYNTAX, e.lineno, msg)]
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        return [Finding(Category.SYNTAX, None, f"the file cannot be parsed ({e}); send plain Python source text.")]
    try:
        findings = list(check_symbols(tree, source)) + list(SafetyScan(tree, source).run())
    except RecursionError:
        return [Finding(Category.SYNTAX, None, "the code is nested too deeply to analyse; flatten the deeply nested "
                        "expressions (long chains of + or nested calls).")]
    unique: dict[tuple[Category, int | None, str], Finding] = {}
    for f in findings:
        unique.setdefault((f.category, f.line, f.message), f)
    return sorted(unique.values(), key=lambda f: (CATEGORY_ORDER.index(f.category), f.line or 0))
