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
    forbidden-call  process spawning, sockets/HTTP, native code (ctypes), signals,
                    exit calls, dynamic code execution, unpickling, file writes
                    outside the working directory, sandbox-escape idioms
    needs-internet  torch.hub, model_zoo, load_state_dict_from_url, `pretrained=True`,
                    `weights=<not None>` in torchvision constructors, `from_pretrained`

The safety scan is pragmatic, not a proof: it resolves import aliases
(`import os as o`, `from os import system`), simple re-bindings (`f = os.system`),
`getattr(module, "name")`, `__builtins__[...]`, `sys.modules[...]` and
`globals()`. Real containment comes from the sandbox.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Iterator

from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.contract import NET_METHODS

STAGE = "static"
MAX_LISTED = 6  # problems spelled out in one verdict message

# --------------------------------------------------------------------------- rules

# Importing any of these (or a sub-module) is forbidden: a model needs none of them.
FORBIDDEN_MODULES: dict[str, str] = {
    "subprocess": "spawns processes",
    "multiprocessing": "spawns processes",
    "torch.multiprocessing": "spawns processes",
    "concurrent.futures.process": "spawns processes",
    "pty": "spawns processes",
    "pexpect": "spawns processes",
    "sh": "spawns processes",
    "plumbum": "spawns processes",
    "psutil": "controls other processes",
    "socket": "opens network connections",
    "socketserver": "opens network connections",
    "ssl": "opens network connections",
    "http": "makes HTTP requests",
    "urllib": "makes HTTP requests",
    "urllib3": "makes HTTP requests",
    "requests": "makes HTTP requests",
    "httpx": "makes HTTP requests",
    "aiohttp": "makes HTTP requests",
    "ftplib": "opens network connections",
    "smtplib": "opens network connections",
    "poplib": "opens network connections",
    "imaplib": "opens network connections",
    "telnetlib": "opens network connections",
    "xmlrpc": "opens network connections",
    "webbrowser": "opens network connections",
    "paramiko": "opens network connections",
    "torch.distributed": "opens network connections",
    "ctypes": "runs native code",
    "cffi": "runs native code",
    "torch.utils.cpp_extension": "compiles and loads native code",
    "signal": "installs signal handlers / signals processes",
    "importlib": "imports code dynamically",
    "runpy": "runs code dynamically",
    "code": "runs code dynamically",
    "codeop": "compiles code dynamically",
    "builtins": "reaches the builtins (exec, eval, __import__)",
    "marshal": "deserialises code objects",
}

# Importing these means downloading weights.
INTERNET_MODULES: dict[str, str] = {
    "torch.hub": "downloads models and weights",
    "torch.utils.model_zoo": "downloads weights",
    "huggingface_hub": "downloads models and weights",
    "gdown": "downloads files",
    "wget": "downloads files",
}

# Fully qualified callables/attributes that are forbidden (exact names).
FORBIDDEN_NAMES: dict[str, str] = {
    "os.system": "spawns a shell",
    "os.popen": "spawns a shell",
    "os.fork": "forks the process",
    "os.forkpty": "forks the process",
    "os.kill": "signals other processes",
    "os.killpg": "signals other processes",
    "os._exit": "exits the process",
    "os.abort": "aborts the process",
    "os.startfile": "starts programs",
    "sys.exit": "exits the process",
    "sys.modules": "reaches modules behind the validator's back",
    "sys._getframe": "inspects interpreter frames",
    "builtins.exit": "exits the process",
    "builtins.quit": "exits the process",
    "builtins.eval": "executes dynamic code",
    "builtins.exec": "executes dynamic code",
    "builtins.compile": "compiles dynamic code",
    "builtins.__import__": "imports modules dynamically",
    "builtins.globals": "reaches module globals dynamically",
    "builtins.breakpoint": "stops for a debugger and hangs",
    "shutil.rmtree": "deletes directory trees",
    "pickle.load": "unpickles (arbitrary code execution)",
    "pickle.loads": "unpickles (arbitrary code execution)",
    "pickle.Unpickler": "unpickles (arbitrary code execution)",
    "_pickle.loads": "unpickles (arbitrary code execution)",
    "dill.load": "unpickles (arbitrary code execution)",
    "dill.loads": "unpickles (arbitrary code execution)",
    "cloudpickle.load": "unpickles (arbitrary code execution)",
    "cloudpickle.loads": "unpickles (arbitrary code execution)",
    "marshal.load": "deserialises code objects",
    "marshal.loads": "deserialises code objects",
    "asyncio.create_subprocess_exec": "spawns processes",
    "asyncio.create_subprocess_shell": "spawns processes",
    "asyncio.open_connection": "opens network connections",
    "concurrent.futures.ProcessPoolExecutor": "spawns processes",
    "torch.ops.load_library": "loads native code",
    "torch.classes.load_library": "loads native code",
}
# os.<prefix>* (execv, execvp, spawnl, posix_spawn ...)
FORBIDDEN_OS_PREFIXES: tuple[str, ...] = ("os.exec", "os.spawn", "os.posix_spawn", "os.popen", "os.fork", "os.kill")

INTERNET_NAMES: dict[str, str] = {
    "torch.hub": "downloads models and weights",
    "torch.utils.model_zoo": "downloads weights",
}
# Attribute or function names that mean a download wherever they come from.
INTERNET_ATTRS: dict[str, str] = {
    "load_state_dict_from_url": "downloads weights",
    "download_url_to_file": "downloads files",
    "from_pretrained": "downloads pretrained weights",
    "hf_hub_download": "downloads files",
    "snapshot_download": "downloads files",
}

# Attributes used to climb out of a restricted namespace.
ESCAPE_ATTRS: dict[str, str] = {
    "__subclasses__": "walks the class hierarchy to reach forbidden code",
    "__globals__": "reaches a function's module globals",
    "__builtins__": "reaches the builtins (exec, eval, __import__)",
    "__code__": "rewrites code objects",
    "f_globals": "reaches frame globals",
    "f_builtins": "reaches the builtins",
    "gi_frame": "reaches interpreter frames",
}

# Builtins that matter to the scan (unless the candidate defines its own of that name).
RISKY_BUILTINS: frozenset[str] = frozenset(
    {"eval", "exec", "compile", "__import__", "exit", "quit", "globals", "breakpoint", "open", "getattr"}
)

# Calls that write to a path given as an argument: qualified name -> argument index of the path.
PATH_WRITERS: dict[str, int] = {
    "torch.save": 1,
    "numpy.save": 0,
    "numpy.savez": 0,
    "numpy.savez_compressed": 0,
    "numpy.savetxt": 0,
    "os.remove": 0,
    "os.unlink": 0,
    "os.rmdir": 0,
    "os.removedirs": 0,
    "os.rename": 1,
    "os.renames": 1,
    "os.replace": 1,
    "os.chmod": 0,
    "os.chown": 0,
    "os.truncate": 0,
    "os.mkdir": 0,
    "os.makedirs": 0,
    "os.symlink": 1,
    "os.link": 1,
    "shutil.copy": 1,
    "shutil.copy2": 1,
    "shutil.copyfile": 1,
    "shutil.copytree": 1,
    "shutil.move": 1,
}
PATH_METHODS_WRITE: frozenset[str] = frozenset(
    {"write_text", "write_bytes", "unlink", "rmdir", "mkdir", "touch", "rename", "replace", "chmod", "symlink_to",
     "hardlink_to"}
)
WRITE_MODE_CHARS = set("wax+")
OPEN_FUNCTIONS: frozenset[str] = frozenset(
    {"builtins.open", "io.open", "codecs.open", "gzip.open", "bz2.open", "lzma.open"}
)
# Modules whose attributes must not be read by a computed name (`getattr(os, name)`).
DANGEROUS_BASES: frozenset[str] = frozenset(
    {"os", "sys", "builtins", "shutil", "pickle", "marshal", "dill", "cloudpickle", "asyncio", "torch.hub",
     "torch.ops", "torch.classes", "torch.utils.model_zoo", "io", "pathlib"}
    | set(FORBIDDEN_MODULES)
)

TORCHVISION_PREFIXES: tuple[str, ...] = ("torchvision.",)
FIX_FORBIDDEN = "remove it; a captioning model only needs torch"
FIX_INTERNET = "build the layers from scratch with randomly initialised weights"

METHOD_PURPOSE: dict[str, str] = {
    "__init__": "builds the layers from in_shape (B, C, H, W) and out_shape (vocab_size,)",
    "train_setup": "creates the optimiser and loss from prm['lr'] and prm['momentum']",
    "learn": "runs one epoch over (images, captions) batches and steps the optimiser",
    "forward": "teacher-forces with captions, or decodes free-running from images alone",
}


@dataclass(frozen=True)
class Finding:
    """One problem found in the source: its category, 1-based line and fixer-ready text."""

    category: Category
    line: int | None
    message: str


CATEGORY_ORDER: tuple[Category, ...] = (
    Category.SYNTAX,
    Category.MISSING_SYMBOL,
    Category.BAD_SIGNATURE,
    Category.FORBIDDEN_CALL,
    Category.NEEDS_INTERNET,
)


# --------------------------------------------------------------------------- entry points


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
    try:
        tree = ast.parse(source, filename=filename, type_comments=False)
    except SyntaxError as e:
        text = (e.text or "").strip()
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        shown = f": `{_clip(text, 100)}`" if text else ""
        msg = f"{where}: {e.msg}{shown}. Fix the syntax there (unclosed brackets, indentation, a stray fence)."
        return [Finding(Category.SYNTAX, e.lineno, msg)]
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        return [Finding(Category.SYNTAX, None, f"the file cannot be parsed ({e}); send plain Python source text.")]
    try:
        findings = list(_check_symbols(tree, source)) + list(_SafetyScan(tree, source).run())
    except RecursionError:
        return [Finding(Category.SYNTAX, None, "the code is nested too deeply to analyse; flatten the deeply nested "
                        "expressions (long chains of + or nested calls).")]
    unique: dict[tuple[Category, int | None, str], Finding] = {}
    for f in findings:
        unique.setdefault((f.category, f.line, f.message), f)
    return sorted(unique.values(), key=lambda f: (CATEGORY_ORDER.index(f.category), f.line or 0))


# --------------------------------------------------------------------------- helpers


def _clip(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _snippet(node: ast.AST, source: str, width: int = 80) -> str:
    seg = ast.get_source_segment(source, node) or ""
    return _clip(seg, width) if seg else type(node).__name__


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, including those nested in if/try/with blocks."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If):
            yield from _module_level(stmt.body)
            yield from _module_level(stmt.orelse)
        elif isinstance(stmt, ast.Try) or (hasattr(ast, "TryStar") and isinstance(stmt, getattr(ast, "TryStar"))):
            yield from _module_level(stmt.body)  # type: ignore[attr-defined]
            for h in stmt.handlers:  # type: ignore[attr-defined]
                yield from _module_level(h.body)
            yield from _module_level(stmt.orelse)  # type: ignore[attr-defined]
            yield from _module_level(stmt.finalbody)  # type: ignore[attr-defined]
        elif isinstance(stmt, ast.With):
            yield from _module_level(stmt.body)


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for Name/Attribute chains, else None (no alias resolution)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _signature_text(name: str) -> str:
    params = list(NET_METHODS[name])
    if name == "forward":
        params = [p if p in ("self", "images") else f"{p}=None" for p in params]
    return f"def {name}({', '.join(params)}):"


# --------------------------------------------------------------------------- symbols and signatures


def _check_symbols(tree: ast.Module, source: str) -> Iterator[Finding]:
    stmts = list(_module_level(tree.body))
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
        bases = ", ".join(_snippet(b, source) for b in net.bases) or "nothing"
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
        name = _dotted(base) or ""
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
            last = (_dotted(base) or "").rsplit(".", 1)[-1]
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
    """Why the harness could not call `Net.<name>` as the contract does, or None.

    The harness calls methods positionally (`Net(in_shape, out_shape, prm, device)`,
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
        d = _dotted(dec.func if isinstance(dec, ast.Call) else dec) or ""
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
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        if d is None:
            return f"has a required keyword-only parameter `{a.arg}`; give it a default. {want}"
    if name == "forward":
        for i, pname in ((2, "captions"), (3, "hidden_state")):
            if i >= len(positional):
                if i == 2 and args.vararg is None:
                    return f"has no `captions` parameter: teacher forcing calls `forward(images, captions)`. {want}"
                continue
            default = args.defaults[i - first_default] if i >= first_default else None
            if default is None or not (isinstance(default, ast.Constant) and default.value is None):
                return (f"needs `{positional[i].arg}=None`: scoring calls `forward(images)` alone and must get a "
                        f"free-running decode. {want}")
    return None


# --------------------------------------------------------------------------- safety scan


class _SafetyScan:
    """Finds forbidden calls and downloads, resolving import aliases and simple re-bindings."""

    def __init__(self, tree: ast.Module, source: str) -> None:
        self.tree = tree
        self.source = source
        self.aliases: dict[str, str] = {}  # local name -> fully qualified name
        self.star_modules: list[str] = []
        self.local_defs: set[str] = set()  # names the candidate defines itself (shadowing builtins)
        self.reported_modules: set[str] = set()  # forbidden modules already reported at their import
        self.parents: dict[ast.AST, ast.AST] = {}
        self.findings: list[Finding] = []

    # ---- resolution

    def qualify(self, node: ast.AST) -> str | None:
        """The fully qualified name an expression refers to, as far as we can tell."""
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            if node.id == "__builtins__":
                return "builtins"
            if node.id in RISKY_BUILTINS and node.id not in self.local_defs:
                return f"builtins.{node.id}"
            return None
        if isinstance(node, ast.Attribute):
            base = self.qualify(node.value)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Call):
            func = self.qualify(node.func)
            # getattr(module, "name")
            if func == "builtins.getattr" and len(node.args) >= 2:
                base = self.qualify(node.args[0])
                attr = node.args[1]
                if base and isinstance(attr, ast.Constant) and isinstance(attr.value, str):
                    return f"{base}.{attr.value}"
            # __import__("os") / importlib.import_module("os")
            if func in ("builtins.__import__", "importlib.import_module") and node.args:
                mod = node.args[0]
                if isinstance(mod, ast.Constant) and isinstance(mod.value, str):
                    return mod.value
            # globals() / vars() → the module namespace itself
            return None
        if isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                container = self.qualify(node.value)
                if container in ("builtins", "builtins.__dict__", "builtins.vars"):
                    return f"builtins.{key.value}"
                if container and container.endswith(".__dict__"):
                    return f"{container[: -len('.__dict__')]}.{key.value}"
                if container == "sys.modules":
                    return key.value
                if isinstance(node.value, ast.Call) and self.qualify(node.value.func) == "builtins.globals":
                    return self.qualify(ast.Name(id=key.value, ctx=ast.Load()))
        return None

    def _collect_bindings(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.local_defs.add(node.name)
            elif isinstance(node, ast.arg):
                self.local_defs.add(node.arg)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:
                        root = a.name.split(".", 1)[0]
                        self.aliases[root] = root
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name == "*":
                        self.star_modules.append(node.module)
                    else:
                        self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        # Assignments that re-bind something we can resolve (`o = os`, `f = os.system`), to a fixed point.
        assigns = [n for n in ast.walk(self.tree) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.NamedExpr))]
        for _ in range(4):
            changed = False
            for n in assigns:
                value = n.value
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                if value is None:
                    continue
                q = self.qualify(value)
                for t in targets:
                    if isinstance(t, ast.Name):
                        if q and self.aliases.get(t.id) != q:
                            self.aliases[t.id] = q
                            changed = True
                        elif not q and t.id in RISKY_BUILTINS:
                            self.local_defs.add(t.id)
            if not changed:
                break

    # ---- scan

    def run(self) -> list[Finding]:
        self._collect_bindings()
        nodes = list(ast.walk(self.tree))
        for node in nodes:
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        # Imports first, so uses of an already reported module are not reported again.
        for node in nodes:
            if isinstance(node, ast.Import):
                for a in node.names:
                    self._check_module(a.name, node)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mod = node.module or ""
                for a in node.names:
                    self._check_module(f"{mod}.{a.name}" if a.name != "*" else mod, node)
                    if a.name == "*" and mod.split(".", 1)[0] in ("os", "sys", "shutil", "pickle", "builtins"):
                        self._add(Category.FORBIDDEN_CALL, node,
                                  f"star-imports `{mod}`, which hides calls such as system/exit; "
                                  "import the names you need explicitly")
        for node in nodes:
            if isinstance(node, ast.Call):
                self._check_call(node)
            elif isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)) and isinstance(
                getattr(node, "ctx", None), ast.Load
            ):
                self._check_reference(node)
        return self.findings

    def _add(self, category: Category, node: ast.AST, why: str, fix: str = "") -> None:
        line = getattr(node, "lineno", None)
        text = f"line {line}: `{_snippet(node, self.source)}` {why}"
        if fix:
            text += f"; {fix}"
        self.findings.append(Finding(category, line, text + "."))

    def _check_module(self, qualified: str, node: ast.AST) -> None:
        for mod, why in INTERNET_MODULES.items():
            if qualified == mod or qualified.startswith(mod + "."):
                self._add(Category.NEEDS_INTERNET, node, f"imports {mod}, which {why}", FIX_INTERNET)
                self.reported_modules.add(mod)
                return
        for mod, why in FORBIDDEN_MODULES.items():
            if qualified == mod or qualified.startswith(mod + "."):
                self._add(Category.FORBIDDEN_CALL, node, f"imports {mod}, which {why}", FIX_FORBIDDEN)
                self.reported_modules.add(mod)
                return
        if qualified.rsplit(".", 1)[-1] in INTERNET_ATTRS:
            self._add(Category.NEEDS_INTERNET, node, f"imports {qualified}, which downloads weights", FIX_INTERNET)
            return
        if qualified in FORBIDDEN_NAMES or qualified.startswith(FORBIDDEN_OS_PREFIXES):
            why = FORBIDDEN_NAMES.get(qualified, "spawns or signals processes")
            self._add(Category.FORBIDDEN_CALL, node, f"imports {qualified}, which {why}", FIX_FORBIDDEN)

    def _forbidden_reason(self, q: str) -> tuple[Category, str] | None:
        if q in FORBIDDEN_NAMES:
            return Category.FORBIDDEN_CALL, FORBIDDEN_NAMES[q]
        if q.startswith(FORBIDDEN_OS_PREFIXES):
            return Category.FORBIDDEN_CALL, "spawns or signals processes"
        for mod, why in INTERNET_NAMES.items():
            if q == mod or q.startswith(mod + "."):
                return Category.NEEDS_INTERNET, why
        for mod, why in FORBIDDEN_MODULES.items():
            if mod == "builtins":  # builtins.* resolve every bare builtin; only FORBIDDEN_NAMES among them count
                continue
            if q == mod or q.startswith(mod + "."):
                return Category.FORBIDDEN_CALL, f"uses {mod}, which {why}"
        return None

    def _check_reference(self, node: ast.AST) -> None:
        if isinstance(node, ast.Attribute):
            if node.attr in ESCAPE_ATTRS:
                self._add(Category.FORBIDDEN_CALL, node, ESCAPE_ATTRS[node.attr], FIX_FORBIDDEN)
                return
            if node.attr in INTERNET_ATTRS:
                self._add(Category.NEEDS_INTERNET, node, INTERNET_ATTRS[node.attr], FIX_INTERNET)
                return
        if isinstance(node, ast.Name) and node.id == "__builtins__":
            self._add(Category.FORBIDDEN_CALL, node, ESCAPE_ATTRS["__builtins__"], FIX_FORBIDDEN)
            return
        q = self.qualify(node)
        if q is None:
            if isinstance(node, ast.Name) and node.id in INTERNET_ATTRS and node.id not in self.local_defs:
                self._add(Category.NEEDS_INTERNET, node, INTERNET_ATTRS[node.id], FIX_INTERNET)
            return
        reason = self._forbidden_reason(q)
        if reason is None:
            return
        # A module whose import was already reported: do not repeat it at every use.
        if any(q == m or q.startswith(m + ".") for m in self.reported_modules):
            return
        # Report a chain once, at its outermost forbidden node: `torch.hub.load`, not also `torch.hub`.
        parent = self.parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            outer = self.qualify(parent)
            if outer and self._forbidden_reason(outer):
                return
        fix = FIX_FORBIDDEN if reason[0] is Category.FORBIDDEN_CALL else FIX_INTERNET
        self._add(reason[0], node, reason[1], fix)

    def _check_call(self, node: ast.Call) -> None:
        q = self.qualify(node.func) or ""
        dotted = _dotted(node.func) or ""
        last = dotted.rsplit(".", 1)[-1] if dotted else (node.func.attr if isinstance(node.func, ast.Attribute)
                                                         else "")
        # getattr(os, "sys" + "tem") or getattr(os, name): dynamic attribute access on a module
        if q == "builtins.getattr" and node.args:
            base = self.qualify(node.args[0])
            attr = node.args[1] if len(node.args) > 1 else None
            if base in DANGEROUS_BASES and not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
                self._add(Category.FORBIDDEN_CALL, node, f"reads an attribute of {base} by a computed name",
                          "use the attribute directly")
            elif base and isinstance(attr, ast.Constant):
                reason = self._forbidden_reason(f"{base}.{attr.value}")
                if reason:
                    self._add(reason[0], node, reason[1],
                              FIX_FORBIDDEN if reason[0] is Category.FORBIDDEN_CALL else FIX_INTERNET)
        if q in OPEN_FUNCTIONS or (last == "open" and isinstance(node.func, ast.Attribute)):
            self._check_open(node, q in OPEN_FUNCTIONS)
        if q in PATH_WRITERS or last in PATH_METHODS_WRITE:
            self._check_path_writer(node, q, last)
        self._check_downloads(node, q, dotted)

    def _check_open(self, node: ast.Call, builtin: bool) -> None:
        if builtin:
            path = node.args[0] if node.args else _kw(node, "file")
            mode = node.args[1] if len(node.args) > 1 else _kw(node, "mode")
        else:  # Path(...).open(mode)
            path = node.func.value if isinstance(node.func, ast.Attribute) else None  # type: ignore[union-attr]
            mode = node.args[0] if node.args else _kw(node, "mode")
            if not _is_path_ctor(path, self):
                return
            path = path.args[0] if isinstance(path, ast.Call) and path.args else path
        if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and WRITE_MODE_CHARS & set(mode.value)):
            return
        outside = _outside_path(path, self)
        if outside:
            self._add(Category.FORBIDDEN_CALL, node, f"writes to {outside}, outside the working directory",
                      "write only relative paths inside the working directory, or nothing at all")

    def _check_path_writer(self, node: ast.Call, q: str, last: str) -> None:
        if q in PATH_WRITERS:
            i = PATH_WRITERS[q]
            path = node.args[i] if len(node.args) > i else None
        else:  # Path("/x").write_text(...)
            receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
            if not _is_path_ctor(receiver, self):
                return
            path = receiver
        outside = _outside_path(path, self)
        if outside:
            self._add(Category.FORBIDDEN_CALL, node, f"writes or deletes {outside}, outside the working directory",
                      "touch only relative paths inside the working directory, or nothing at all")

    def _check_downloads(self, node: ast.Call, q: str, dotted: str) -> None:
        is_tv = q.startswith(TORCHVISION_PREFIXES) or (
            not q and isinstance(node.func, ast.Name) and any(m.startswith("torchvision") for m in self.star_modules)
        )
        for kw in node.keywords:
            if kw.arg in ("pretrained", "pretrained_backbone") and _truthy_constant(kw.value):
                self._add(Category.NEEDS_INTERNET, node, f"sets {kw.arg}={_snippet(kw.value, self.source)}, "
                          "which downloads weights", f"pass {kw.arg}=False and {FIX_INTERNET}")
            elif kw.arg in ("weights", "weights_backbone") and not _is_none(kw.value) and (
                is_tv or _mentions_weights_enum(kw.value)
            ):
                self._add(Category.NEEDS_INTERNET, node, f"sets {kw.arg}={_snippet(kw.value, self.source)}, "
                          "which downloads weights", f"pass {kw.arg}=None and {FIX_INTERNET}")
            elif kw.arg == "download" and _truthy_constant(kw.value):
                self._add(Category.NEEDS_INTERNET, node, "sets download=True", "use only the data the harness passes")
        if is_tv and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value is True:
            self._add(Category.NEEDS_INTERNET, node, "passes pretrained=True positionally, which downloads weights",
                      f"pass pretrained=False and {FIX_INTERNET}")
        if isinstance(node.func, ast.Attribute) and node.func.attr == "get_state_dict" and _mentions_weights_enum(
            node.func.value
        ):
            self._add(Category.NEEDS_INTERNET, node, "downloads the weights of a torchvision Weights enum",
                      FIX_INTERNET)


def _kw(node: ast.Call, name: str) -> ast.expr | None:
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _truthy_constant(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and bool(node.value)


def _mentions_weights_enum(node: ast.AST) -> bool:
    """`ResNet18_Weights.DEFAULT`, `"DEFAULT"`, `"IMAGENET1K_V1"` and the like."""
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id.endswith("_Weights"):
            return True
        if isinstance(n, ast.Attribute) and (n.attr.endswith("_Weights") or n.attr in ("DEFAULT",)
                                             or n.attr.startswith("IMAGENET")):
            return True
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(
            r"DEFAULT|IMAGENET\w*|\w+_Weights(\.\w+)?", n.value
        ):
            return True
    return False


def _is_path_ctor(node: ast.AST | None, scan: _SafetyScan) -> bool:
    """`Path(...)` / `pathlib.Path(...)` (possibly joined with `/`)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _is_path_ctor(node.left, scan)
    if isinstance(node, ast.Call):
        q = scan.qualify(node.func) or _dotted(node.func) or ""
        return q.rsplit(".", 1)[-1] in ("Path", "PosixPath", "PurePath")
    return False


_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _bad_path_text(text: str) -> bool:
    parts = re.split(r"[\\/]+", text)
    return text.startswith(("/", "~", "\\")) or bool(_DRIVE.match(text)) or ".." in parts


def _outside_path(node: ast.AST | None, scan: _SafetyScan) -> str | None:
    """A description of a path expression that certainly leaves the working directory, else None."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return repr(node.value) if _bad_path_text(node.value) else None
    if isinstance(node, ast.JoinedStr):
        consts = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
        first = node.values[0] if node.values else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith(("/", "~")):
            return f"an absolute path ({first.value!r}...)"
        if any(".." in re.split(r"[\\/]+", c) for c in consts):
            return "a path with '..'"
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Div, ast.Mod)):
        left = _outside_path(node.left, scan)
        if left:
            return left
        right = node.right
        if isinstance(node.op, ast.Div) and isinstance(right, ast.Constant) and isinstance(right.value, str):
            return repr(right.value) if ".." in re.split(r"[\\/]+", right.value) else None
        return None
    if isinstance(node, ast.Call):
        q = scan.qualify(node.func) or _dotted(node.func) or ""
        last = q.rsplit(".", 1)[-1]
        if last in ("join", "Path", "PosixPath", "PurePath", "expanduser", "abspath", "realpath") and node.args:
            for a in node.args:
                hit = _outside_path(a, scan)
                if hit:
                    return hit
        if last in ("home", "cwd"):
            return None if last == "cwd" else "the home directory"
    return None

