"""The safety scan of the static validator: imports against the allow-list, dangerous names, escapes.

It resolves import aliases (`import os as o`, `from os import system`), simple re-bindings (`f = os.system`),
`getattr(module, "name")`, `vars(module)[...]`, `module.__dict__[...]`, `sys.modules[...]` and `globals()`,
then checks every import and every reference. It is defence in depth, not a proof: the sandbox is the
containment. Rules and tables are in `validate_rules`; file-path helpers in `validate_paths`.
"""

from __future__ import annotations

import ast

from nncaption.netapi.categories import Category
from nncaption.netapi.validate_paths import (
    Finding,
    check_downloads,
    check_open,
    check_path_writer,
    dotted,
    falsy_constant,
    kw,
    snippet,
)
from nncaption.netapi.validate_rules import (
    ASSIGNABLE_PREFIXES,
    CALL_ONLY_BUILTINS,
    DYNAMIC_ATTR_OK,
    ESCAPE_ATTRS,
    FIX_FORBIDDEN,
    FIX_INTERNET,
    FORBIDDEN_LEAVES,
    FORBIDDEN_MODULES,
    FORBIDDEN_NAMES,
    FORBIDDEN_OS_PREFIXES,
    INTERNET_ATTRS,
    INTERNET_MODULES,
    INTERNET_NAMES,
    NAMESPACE_ATTRS,
    OPEN_FUNCTIONS,
    OPTIONAL_IMPORT_HANDLERS,
    OPTIONAL_IMPORT_ROOTS,
    PATH_METHODS_WRITE,
    PATH_WRITERS,
    PRIVATE_IMPORT_OK,
    RISKY_BUILTINS,
    SMUGGLE_EXCEPTIONS,
    SMUGGLED_MODULES,
    allowed_entry,
    fix_import,
)

Reason = tuple[Category, str]


def _under(q: str, prefix: str) -> bool:
    return q == prefix or q.startswith(prefix + ".")


def _longest(q: str, table: dict[str, str]) -> tuple[str, str] | None:
    hits = [(m, why) for m, why in table.items() if _under(q, m)]
    return max(hits, key=lambda h: len(h[0])) if hits else None


class SafetyScan:
    """Finds forbidden imports, calls and downloads in one parsed candidate."""

    def __init__(self, tree: ast.Module, source: str) -> None:
        self.tree = tree
        self.source = source
        self.aliases: dict[str, str] = {}  # local name -> fully qualified name
        self.star_modules: list[str] = []
        self.local_defs: set[str] = set()  # names the candidate defines itself (shadowing builtins)
        self.reported_modules: set[str] = set()  # modules already reported at their import
        self.optional_modules: set[str] = set()  # LEMUR's optional `ab.*` imports inside try/except ImportError
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
            if func == "builtins.getattr" and len(node.args) >= 2:  # getattr(module, "name")
                base = self.qualify(node.args[0])
                attr = node.args[1]
                if base and isinstance(attr, ast.Constant) and isinstance(attr.value, str):
                    return f"{base}.{attr.value}"
            if func == "builtins.vars" and len(node.args) == 1:  # vars(module) -> its namespace
                base = self.qualify(node.args[0])
                return f"{base}.__dict__" if base else None
            if func in ("builtins.__import__", "importlib.import_module") and node.args:
                mod = node.args[0]
                if isinstance(mod, ast.Constant) and isinstance(mod.value, str):
                    return mod.value
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
                    self.aliases[a.asname or a.name.split(".", 1)[0]] = a.name if a.asname else a.name.split(".")[0]
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
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                if n.value is None:
                    continue
                q = self.qualify(n.value)
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
        """Every safety finding, imports first."""
        self._collect_bindings()
        nodes = list(ast.walk(self.tree))
        for node in nodes:
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        for node in nodes:
            if isinstance(node, ast.Import):
                for a in node.names:
                    self._check_import(a.name, None, node)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    self.add(Category.FORBIDDEN_CALL, node, "is a relative import; a candidate is one file",
                              fix_import())
                    continue
                for a in node.names:
                    self._check_import(node.module or "", None if a.name == "*" else a.name, node)
        for node in nodes:
            if isinstance(node, ast.Call):
                self._check_call(node)
            elif isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
                ctx = getattr(node, "ctx", None)
                if isinstance(ctx, ast.Load):
                    self._check_reference(node)
                elif isinstance(ctx, (ast.Store, ast.Del)) and isinstance(node, ast.Attribute):
                    self._check_store(node)
        return self.findings

    def add(self, category: Category, node: ast.AST, why: str, fix: str = "") -> None:
        line = getattr(node, "lineno", None)
        text = f"line {line}: `{snippet(node, self.source)}` {why}"
        if fix:
            text += f"; {fix}"
        self.findings.append(Finding(category, line, text + "."))

    def _report(self, node: ast.AST, reason: Reason) -> None:
        if reason[0] is Category.NEEDS_INTERNET:
            fix = FIX_INTERNET
        elif "are allowed" in reason[1]:
            fix = "use only those members"
        elif reason[1].startswith("imports ") or "not on the allowed list" in reason[1]:
            fix = fix_import()
        else:
            fix = FIX_FORBIDDEN
        self.add(reason[0], node, reason[1], fix)

    def _optional_import(self, node: ast.AST, module: str) -> bool:
        """LEMUR's `try: from ab.nn... import X / except ImportError:` (absent in the sandbox, harmless)."""
        if module.split(".", 1)[0] not in OPTIONAL_IMPORT_ROOTS:
            return False
        child, parent = node, self.parents.get(node)
        while parent is not None:
            if isinstance(parent, ast.Try) and child in parent.body:
                for h in parent.handlers:
                    names = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                    if h.type is None or any((dotted(n) or "") in OPTIONAL_IMPORT_HANDLERS for n in names if n):
                        return True
            child, parent = parent, self.parents.get(parent)
        return False

    def _check_import(self, module: str, member: str | None, node: ast.AST) -> None:
        if self._optional_import(node, module):
            self.optional_modules.add(module)
            return
        q = f"{module}.{member}" if member else module
        module_reason = self._module_reason(module, importing=True)
        reason = module_reason
        if reason is None and any(p.startswith("_") and p != "__future__" for p in module.split(".")) and not any(
            _under(module, ok) for ok in PRIVATE_IMPORT_OK
        ):
            reason = Category.FORBIDDEN_CALL, f"imports the private module {module}"
        if reason is None and member:
            reason = self._name_reason(q) or self._module_reason(q, importing=True)
        if reason is None and member and member in INTERNET_ATTRS:
            reason = Category.NEEDS_INTERNET, f"imports {q}, which downloads weights"
        if reason is not None:
            self._report(node, reason)
            self.reported_modules.add(module if module_reason else q)

    # ---- reasons

    def _module_reason(self, module: str, *, importing: bool) -> Reason | None:
        """Why importing (or using) `module` is refused: dangerous, a download, or not on the allow-list."""
        verb = "imports" if importing else "uses"
        hit = _longest(module, INTERNET_MODULES)
        if hit:
            return Category.NEEDS_INTERNET, f"{verb} {hit[0]}, which {hit[1]}"
        hit = _longest(module, FORBIDDEN_MODULES)
        if hit:
            return Category.FORBIDDEN_CALL, f"{verb} {hit[0]}, which {hit[1]}"
        smuggled = self._smuggled(module)
        if smuggled:
            return smuggled
        entry = allowed_entry(module)
        if entry is None:
            root = module.split(".", 1)[0]
            return Category.FORBIDDEN_CALL, f"{verb} {root}, which is not on the allowed list"
        allowed, used = entry
        if allowed.members is not None and used is not None and used not in allowed.members:
            return Category.FORBIDDEN_CALL, (f"{verb} {allowed.name}.{used}; only {', '.join(sorted(allowed.members))}"
                                             f" of {allowed.name} are allowed")
        return None

    def _smuggled(self, q: str) -> Reason | None:
        parts = q.split(".")
        for i, p in enumerate(parts[1:], start=1):
            if p.lstrip("_") in SMUGGLED_MODULES and ".".join(parts[: i + 1]) not in SMUGGLE_EXCEPTIONS:
                return Category.FORBIDDEN_CALL, f"reaches the module {p} through {'.'.join(parts[:i])}"
        return None

    def _name_reason(self, q: str) -> Reason | None:
        """Why the qualified name `q` (a module member) is refused, or None."""
        if q in FORBIDDEN_NAMES:
            return Category.FORBIDDEN_CALL, FORBIDDEN_NAMES[q]
        if q.startswith(FORBIDDEN_OS_PREFIXES):
            return Category.FORBIDDEN_CALL, "spawns or signals processes"
        for mod, why in INTERNET_NAMES.items():
            if _under(q, mod):
                return Category.NEEDS_INTERNET, why
        return None

    def _reference_reason(self, q: str) -> Reason | None:
        if q.startswith("builtins."):  # bare builtins resolve here; only the dangerous ones count
            return self._name_reason(q)
        if any(_under(q, m) for m in self.optional_modules):
            return None
        reason = self._name_reason(q) or self._module_reason(q, importing=False)
        if reason is None and any(p in NAMESPACE_ATTRS for p in q.split(".")[1:]):
            reason = Category.FORBIDDEN_CALL, "reads a module's namespace by name, behind the validator's back"
        return reason

    # ---- checks

    def _check_reference(self, node: ast.AST) -> None:
        if isinstance(node, ast.Attribute):
            if node.attr in ESCAPE_ATTRS:
                self.add(Category.FORBIDDEN_CALL, node, ESCAPE_ATTRS[node.attr], FIX_FORBIDDEN)
                return
            if node.attr in INTERNET_ATTRS:
                self.add(Category.NEEDS_INTERNET, node, INTERNET_ATTRS[node.attr], FIX_INTERNET)
                return
        if isinstance(node, ast.Name) and node.id == "__builtins__":
            self.add(Category.FORBIDDEN_CALL, node, ESCAPE_ATTRS["__builtins__"], FIX_FORBIDDEN)
            return
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in (
            ESCAPE_ATTRS
        ):
            self.add(Category.FORBIDDEN_CALL, node, ESCAPE_ATTRS[str(node.slice.value)], FIX_FORBIDDEN)
            return
        q = self.qualify(node)
        if q is None:
            if isinstance(node, ast.Name) and node.id in INTERNET_ATTRS and node.id not in self.local_defs:
                self.add(Category.NEEDS_INTERNET, node, INTERNET_ATTRS[node.id], FIX_INTERNET)
            return
        parent = self.parents.get(node)
        if q in CALL_ONLY_BUILTINS and not (isinstance(parent, ast.Call) and parent.func is node):
            self.add(Category.FORBIDDEN_CALL, node, f"passes {q.removeprefix('builtins.')} around as a value",
                      "call it directly with constant arguments")
            return
        reason = self._reference_reason(q)
        if reason is None:
            self._check_module_value(node, q, parent)
            return
        if any(_under(q, m) for m in self.reported_modules):  # reported at its import already
            return
        # Report a chain once, at its outermost forbidden node: `torch.hub.load`, not also `torch.hub`.
        if isinstance(parent, ast.Attribute) and parent.value is node:
            outer = self.qualify(parent)
            if outer and self._reference_reason(outer):
                return
        self._report(node, reason)

    def _check_module_value(self, node: ast.AST, q: str, parent: ast.AST | None) -> None:
        """A partly allowed module (`os`, `sys`) passed around as a value hides which members it reaches."""
        entry = allowed_entry(q)
        if entry is None or entry[0].members is None or entry[1] is not None:
            return
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return
        if isinstance(parent, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and parent.value is node:
            return  # an alias: its uses are resolved and checked
        if isinstance(parent, ast.Call) and parent.args and parent.args[0] is node and self.qualify(
            parent.func
        ) in ("builtins.getattr", "builtins.vars"):
            return  # checked by _check_call
        self.add(Category.FORBIDDEN_CALL, node, f"uses the {q} module as a value",
                  f"use its allowed members directly ({', '.join(sorted(entry[0].members))})")

    def _check_store(self, node: ast.Attribute) -> None:
        base = self.qualify(node.value)
        if base and not base.startswith("builtins.") and not any(_under(base, p) for p in ASSIGNABLE_PREFIXES):
            self.add(Category.FORBIDDEN_CALL, node, f"replaces {base}.{node.attr}, an attribute of a library module",
                      "keep your own state on the model (self.x = ...) instead")

    def _check_call(self, node: ast.Call) -> None:
        q = self.qualify(node.func) or ""
        name = dotted(node.func) or ""
        last = name.rsplit(".", 1)[-1] if name else (node.func.attr if isinstance(node.func, ast.Attribute) else "")
        if q in ("builtins.getattr", "builtins.setattr", "builtins.delattr") and node.args:
            self._check_dynamic_attr(node, q)
        flag = kw(node, "allow_pickle")
        if q == "numpy.load" and flag is None and len(node.args) > 2:
            flag = node.args[2]
        if flag is not None and not falsy_constant(flag):  # numpy.load, numpy.lib.format.read_array, ...
            self.add(Category.FORBIDDEN_CALL, node, "loads with allow_pickle, which unpickles (arbitrary code "
                     "execution)", "save arrays with numpy.save and load them without allow_pickle")
        if q in ("operator.attrgetter", "operator.methodcaller"):
            args = node.args[:1] if q == "operator.methodcaller" else node.args
            if not all(isinstance(a, ast.Constant) and isinstance(a.value, str) and not any(
                    part.startswith("_") or part in FORBIDDEN_LEAVES for part in a.value.split(".")) for a in args):
                self.add(Category.FORBIDDEN_CALL, node, f"reads attributes by name through {q}",
                          "use the attribute directly")
        if q in OPEN_FUNCTIONS or (last == "open" and isinstance(node.func, ast.Attribute)):
            check_open(self, node, q in OPEN_FUNCTIONS)
        if q in PATH_WRITERS or last in PATH_METHODS_WRITE:
            check_path_writer(self, node, q)
        check_downloads(self, node, q)

    def _check_dynamic_attr(self, node: ast.Call, q: str) -> None:
        base = self.qualify(node.args[0])
        attr = node.args[1] if len(node.args) > 1 else None
        name = attr.value if isinstance(attr, ast.Constant) and isinstance(attr.value, str) else None
        if name in ESCAPE_ATTRS:
            self.add(Category.FORBIDDEN_CALL, node, ESCAPE_ATTRS[str(name)], FIX_FORBIDDEN)
            return
        if not base or base.startswith("builtins."):
            return
        if q != "builtins.getattr":
            if not any(_under(base, p) for p in ASSIGNABLE_PREFIXES):
                self.add(Category.FORBIDDEN_CALL, node, f"replaces attributes of the library module {base}",
                          "keep your own state on the model (self.x = ...) instead")
            return
        if name is None:
            if not any(_under(base, p) for p in DYNAMIC_ATTR_OK):
                self.add(Category.FORBIDDEN_CALL, node, f"reads an attribute of {base} by a computed name",
                          "use the attribute directly")
            return
        reason = self._reference_reason(f"{base}.{name}")
        if reason:
            self._report(node, reason)
