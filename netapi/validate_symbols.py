"""Symbols and signatures of a candidate: `supported_hyperparameters()`, `class Net(nn.Module)` and its methods.

The runner calls the Net API positionally (`Net(in_shape, out_shape, prm, device)`, `train_setup(prm)`,
`learn(train_data)`, `model(images)`), so this check asks only that those calls bind: parameter names may
differ and extra parameters with defaults are fine, as in many LEMUR models.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from nncaption.netapi.categories import Category
from nncaption.netapi.contract import NET_METHODS
from nncaption.netapi.validate_paths import Finding, dotted, module_level, snippet

METHOD_PURPOSE: dict[str, str] = {
    "__init__": "builds the layers from in_shape (B, C, H, W) and out_shape (vocab_size,)",
    "train_setup": "creates the optimiser and loss from prm['lr'] and prm['momentum']",
    "learn": "runs one epoch over (images, captions) batches and steps the optimiser",
    "forward": "teacher-forces with captions, or decodes free-running from images alone",
}


def _signature_text(name: str) -> str:
    params = list(NET_METHODS[name])
    if name == "forward":
        params = [p if p in ("self", "images") else f"{p}=None" for p in params]
    return f"def {name}({', '.join(params)}):"


def check_symbols(tree: ast.Module, source: str) -> Iterator[Finding]:
    """Missing symbols and bad signatures: `supported_hyperparameters`, `class Net` and its four methods."""
    stmts = list(module_level(tree.body))
    yield from _check_hparams(stmts)
    classes: dict[str, ast.ClassDef] = {}
    net: ast.ClassDef | None = None
    net_alias_line: int | None = None
    for stmt in stmts:
        if isinstance(stmt, ast.ClassDef):
            classes[stmt.name] = stmt
            if stmt.name == "Net":
                net = stmt
        elif isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "Net" for t in stmt.targets):
            if isinstance(stmt.value, ast.Name) and stmt.value.id in classes:
                net, net_alias_line = classes[stmt.value.id], stmt.lineno
    if net is None:
        nested = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Net"]
        where = f" (the class Net at line {nested[0].lineno} is nested; move it to module level)" if nested else ""
        yield Finding(
            Category.MISSING_SYMBOL,
            nested[0].lineno if nested else None,
            f"no module-level `class Net(nn.Module)`{where}. Define `class Net(nn.Module):` with "
            "__init__, train_setup, learn and forward.",
        )
        return
    line = net_alias_line or net.lineno
    if not _is_module_like(net, classes, set()):
        bases = ", ".join(snippet(b, source) for b in net.bases) or "nothing"
        yield Finding(
            Category.MISSING_SYMBOL,
            line,
            f"line {line}: `class {net.name}` derives from {bases}, not from nn.Module. "
            f"Write `class {net.name}(nn.Module):` and call `super().__init__()` first in __init__.",
        )
    methods = _collect_methods(net, classes)
    for name in NET_METHODS:
        fn = methods.get(name)
        if fn is None:
            yield Finding(
                Category.MISSING_SYMBOL,
                line,
                f"line {line}: class Net has no `{name}` method. Add `{_signature_text(name)}` "
                f"that {METHOD_PURPOSE[name]}.",
            )
        elif isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            problem = _signature_problem(name, fn)
            if problem:
                yield Finding(Category.BAD_SIGNATURE, fn.lineno, f"line {fn.lineno}: Net.{name} {problem}")


def _check_hparams(stmts: list[ast.stmt]) -> Iterator[Finding]:
    fn: ast.AST | None = None
    line: int | None = None
    for stmt in stmts:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "supported_hyperparameters":
            fn, line = stmt, stmt.lineno
        elif isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "supported_hyperparameters" for t in stmt.targets
        ):
            fn, line = stmt.value, stmt.lineno
    fix = "Define `def supported_hyperparameters():\n    return {'lr', 'momentum', 'dropout'}` at module level."
    if fn is None:
        yield Finding(Category.MISSING_SYMBOL, None, f"no module-level `supported_hyperparameters()`. {fix}")
        return
    if isinstance(fn, ast.AsyncFunctionDef):
        yield Finding(Category.BAD_SIGNATURE, line, f"line {line}: supported_hyperparameters must not be async. {fix}")
        return
    if isinstance(fn, (ast.FunctionDef, ast.Lambda)):
        args = fn.args
        positional = args.posonlyargs + args.args
        if len(positional) > len(args.defaults) or any(d is None for d in args.kw_defaults):
            yield Finding(
                Category.BAD_SIGNATURE, line,
                f"line {line}: supported_hyperparameters must take no arguments (it is called as "
                f"`supported_hyperparameters()`). {fix}",
            )
        returns = [fn.body] if isinstance(fn, ast.Lambda) else list(_own_returns(fn))
        if not returns:
            yield Finding(
                Category.BAD_SIGNATURE, line,
                f"line {line}: supported_hyperparameters returns nothing; it must return a set of names. {fix}",
            )
        for r in returns:
            bad = _not_a_set(r)
            if bad:
                yield Finding(
                    Category.BAD_SIGNATURE, getattr(r, "lineno", line),
                    f"line {getattr(r, 'lineno', line)}: supported_hyperparameters returns {bad}, not a set. {fix}",
                )
        return
    yield Finding(
        Category.BAD_SIGNATURE, line,
        f"line {line}: `supported_hyperparameters` is assigned a value, not defined as a function. {fix}",
    )


def _own_returns(fn: ast.FunctionDef) -> Iterator[ast.expr | None]:
    """Return values of `fn` itself (not of nested functions or classes)."""
    stack: list[ast.AST] = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Return):
            yield node.value if node.value is not None else ast.Constant(value=None, lineno=node.lineno)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _not_a_set(value: ast.expr | None) -> str | None:
    """A description of a return value that is certainly not a set, else None."""
    if value is None or (isinstance(value, ast.Constant) and value.value is None):
        return "None"
    if isinstance(value, ast.Dict):
        return "a dict (`{}` is an empty dict; use `set()` or `{'lr', ...}`)"
    if isinstance(value, (ast.List, ast.ListComp)):
        return "a list"
    if isinstance(value, ast.Tuple):
        return "a tuple"
    if isinstance(value, ast.DictComp):
        return "a dict"
    if isinstance(value, (ast.Constant, ast.JoinedStr)):
        return f"a constant {type(getattr(value, 'value', '')).__name__}"
    return None


def _is_module_like(cls: ast.ClassDef, classes: dict[str, ast.ClassDef], seen: set[str]) -> bool:
    """True when a base is nn.Module-like (…Module, …Sequential, anything from torch) or a local such class."""
    seen = seen | {cls.name}
    for base in cls.bases:
        name = dotted(base) or ""
        last = name.rsplit(".", 1)[-1]
        if name.startswith(("torch.", "nn.", "torchvision.")) or last.endswith(("Module", "Sequential", "ModuleList",
                                                                                "ModuleDict")):
            return True
        if last in classes and last not in seen and _is_module_like(classes[last], classes, seen):
            return True
    return False


def _collect_methods(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> dict[str, ast.AST]:
    """Methods of `cls`, then of its local base classes (depth first), first definition wins."""
    found: dict[str, ast.AST] = {}
    order: list[ast.ClassDef] = []

    def visit(c: ast.ClassDef, seen: set[str]) -> None:
        order.append(c)
        for base in c.bases:
            last = (dotted(base) or "").rsplit(".", 1)[-1]
            if last in classes and last not in seen:
                visit(classes[last], seen | {last})

    visit(cls, {cls.name})
    for c in order:
        for stmt in c.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.setdefault(stmt.name, stmt)
            elif isinstance(stmt, ast.Assign):
                for t in stmt.targets:
                    if isinstance(t, ast.Name):
                        found.setdefault(t.id, stmt)  # e.g. `forward = _decode`: cannot check, accept
    return found


def _signature_problem(name: str, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """Why the runner could not call `Net.<name>` as the contract does, or None.

    The runner calls methods positionally (`Net(in_shape, out_shape, prm, device)`,
    `learn(train_data)`, `model(images)`), so parameter names may differ and extra
    `*args`/`**kwargs` are fine, as in many LEMUR models. What matters is that the
    contract's call binds: enough positional slots, no other required parameters,
    and for `forward` that `captions` (and `hidden_state`, when present) default to None.
    """
    expected = NET_METHODS[name]
    want = f"Use exactly `{_signature_text(name)}` (extra parameters need defaults)."
    if isinstance(fn, ast.AsyncFunctionDef):
        return f"must not be `async`. {want}"
    for dec in fn.decorator_list:
        d = dotted(dec.func if isinstance(dec, ast.Call) else dec) or ""
        if d.rsplit(".", 1)[-1] in ("staticmethod", "classmethod", "property"):
            return f"must be a plain method, not @{d}. {want}"
    args = fn.args
    positional = args.posonlyargs + args.args
    names = [a.arg for a in positional]
    have = f"({', '.join(names + (['*' + args.vararg.arg] if args.vararg else []))})"
    # forward is called as forward(images) for scoring and forward(images, captions) for teacher forcing
    n_called = 2 if name == "forward" else len(expected)
    if len(positional) < n_called and args.vararg is None:
        return f"has parameters {have} but the contract calls it with ({', '.join(expected)}). {want}"
    first_default = len(positional) - len(args.defaults)
    required = max(first_default, 0)
    if required > (len(positional) if name == "forward" else n_called):
        extra = positional[n_called].arg
        return f"has an extra required parameter `{extra}`; the caller never passes it. Give it a default. {want}"
    for a, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        if kw_default is None:
            return f"has a required keyword-only parameter `{a.arg}`; give it a default. {want}"
    if name == "forward":
        for i in (2, 3):
            if i >= len(positional):
                if i == 2 and args.vararg is None:
                    return f"has no `captions` parameter: teacher forcing calls `forward(images, captions)`. {want}"
                continue
            default = args.defaults[i - first_default] if i >= first_default else None
            if default is None or not (isinstance(default, ast.Constant) and default.value is None):
                return (f"needs `{positional[i].arg}=None`: scoring calls `forward(images)` alone and must get a "
                        f"free-running decode. {want}")
    return None
