"""The static validator's rules: the import allow-list and the dangerous names inside allowed modules.

The allow-list itself lives in `CONTRACT.md` (the fenced block tagged `allowed-imports`), so the text the
LLM reads and the rule the validator applies can never drift apart. Each line is either a module name
(the module and all its submodules are allowed, minus the dangerous members below) or `module: a, b, c`
(only those members of the module may be used).

The tables below are the deny-list *inside* allowed modules (defence in depth: the sandbox is the real
containment) plus reasons for well-known forbidden modules, so a message can say why, not only "not allowed".
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from nncaption.netapi.contract import contract_text

ALLOWED_BLOCK = re.compile(r"```allowed-imports\n(.*?)```", re.S)


@dataclass(frozen=True)
class AllowedModule:
    """One line of the allow-list: a module, and the only members allowed (None: every member)."""

    name: str
    members: frozenset[str] | None = None


@functools.lru_cache(maxsize=1)
def allowed_modules() -> dict[str, AllowedModule]:
    """The allow-list parsed from CONTRACT.md (read once, on first use)."""
    return parse_allowed(contract_text())


def parse_allowed(text: str) -> dict[str, AllowedModule]:
    """Parse the `allowed-imports` block of the contract; ValueError when it is missing or empty."""
    match = ALLOWED_BLOCK.search(text)
    if not match:
        raise ValueError("CONTRACT.md has no ```allowed-imports block")
    out: dict[str, AllowedModule] = {}
    for raw in match.group(1).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        members = frozenset(m.strip() for m in rest.split(",") if m.strip()) if rest.strip() else None
        out[name.strip()] = AllowedModule(name.strip(), members)
    if not out:
        raise ValueError("the ```allowed-imports block of CONTRACT.md is empty")
    return out


def allowed_summary() -> str:
    """The allow-list in one line, for messages: `torch, torchvision (models, ops), numpy, ...`."""
    parts = []
    for m in allowed_modules().values():
        if m.name == "__future__":
            continue
        parts.append(f"{m.name} ({', '.join(sorted(m.members))})" if m.members else m.name)
    return ", ".join(parts)


def allowed_entry(qualified: str) -> tuple[AllowedModule, str | None] | None:
    """The allow-list line covering `qualified` and the member it uses (None for the module itself)."""
    table = allowed_modules()
    parts = qualified.split(".")
    for i in range(len(parts), 0, -1):
        entry = table.get(".".join(parts[:i]))
        if entry is not None:
            return entry, (parts[i] if i < len(parts) else None)
    return None


# Reasons for well-known forbidden modules (the allow-list rejects them anyway; these make the message precise).
FORBIDDEN_MODULES: dict[str, str] = {
    "subprocess": "spawns processes",
    "_posixsubprocess": "spawns processes",
    "multiprocessing": "spawns processes",
    "torch.multiprocessing": "spawns processes",
    "concurrent": "spawns processes or threads",
    "pty": "spawns processes",
    "posix": "reaches the operating system directly (system, fork, exec)",
    "nt": "reaches the operating system directly",
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
    "telnetlib": "opens network connections",
    "xmlrpc": "opens network connections",
    "webbrowser": "opens network connections",
    "asyncio": "spawns processes and opens connections",
    "torch.distributed": "opens network connections",
    "ctypes": "runs native code",
    "cffi": "runs native code",
    "numpy.ctypeslib": "runs native code",
    "numpy.f2py": "compiles and loads native code",
    "numpy.distutils": "compiles native code",
    "numpy.testing": "compiles extension modules and spawns processes",
    "torch.utils.cpp_extension": "compiles and loads native code",
    "torch.utils.collect_env": "spawns processes",
    "torch.utils.tensorboard": "writes event files and starts servers",
    "torch.package": "unpickles packaged code (arbitrary code execution)",
    "torch.serialization": "unpickles files (arbitrary code execution)",
    "torch.library": "defines or overrides native operators process-wide",
    "torch._C": "reaches torch's native internals",
    "torch._ops": "reaches torch's operator loading internals",
    "torch._classes": "reaches torch's native class loading",
    "torchvision.io": "reads and writes files with native decoders",
    "torchvision.extension": "loads native code",
    "signal": "installs signal handlers / signals processes",
    "_thread": "starts threads behind the runner's back",
    "threading": "starts threads behind the runner's back",
    "gc": "reaches every live object, including the runner's",
    "mmap": "maps files and memory directly",
    "inspect": "reaches interpreter frames and other modules' internals",
    "importlib": "imports code dynamically",
    "pkgutil": "imports code dynamically",
    "zipimport": "imports code dynamically",
    "runpy": "runs code dynamically",
    "code": "runs code dynamically",
    "codeop": "compiles code dynamically",
    "builtins": "reaches the builtins (exec, eval, __import__)",
    "marshal": "deserialises code objects",
    "pickle": "pickles and unpickles (arbitrary code execution)",
    "shutil": "copies, moves and deletes files and trees",
    "nncaption": "reaches the runner that scores the candidate",
    "logging.config": "evaluates configuration and listens on a socket",
    "logging.handlers": "sends logs over the network or to arbitrary files",
}

# Optional imports of LEMUR's own package inside `try: ... except ImportError/Exception:` stay accepted (the
# LEMUR captioning models read special-token ids from it when present); nothing else is optional.
OPTIONAL_IMPORT_ROOTS: tuple[str, ...] = ("ab",)
OPTIONAL_IMPORT_HANDLERS: frozenset[str] = frozenset({"ImportError", "ModuleNotFoundError", "Exception",
                                                      "BaseException"})

# Importing these means downloading weights or data.
INTERNET_MODULES: dict[str, str] = {
    "torch.hub": "downloads models and weights",
    "torch.utils.model_zoo": "downloads weights",
    "torchvision.datasets": "downloads datasets",
    "huggingface_hub": "downloads models and weights",
    "transformers": "downloads models and weights",
    "timm": "downloads pretrained weights",
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
    "sys.settrace": "hooks into the interpreter",
    "sys.setprofile": "hooks into the interpreter",
    "builtins.exit": "exits the process",
    "builtins.quit": "exits the process",
    "builtins.eval": "executes dynamic code",
    "builtins.exec": "executes dynamic code",
    "builtins.compile": "compiles dynamic code",
    "builtins.__import__": "imports modules dynamically",
    "builtins.globals": "reaches module globals dynamically",
    "builtins.locals": "reaches local namespaces dynamically",
    "builtins.breakpoint": "stops for a debugger and hangs",
    "torch.load": "unpickles a file (arbitrary code execution)",
    "torch.jit.load": "loads serialized code",
    "torch.ops.load_library": "loads native code",
    "torch.classes.load_library": "loads native code",
    "numpy.DataSource": "downloads files",
    "types.CodeType": "builds code objects",
    "types.FunctionType": "builds functions from code objects",
    "logging.FileHandler": "writes logs to arbitrary files",
    "torch.cuda.CUDAPluggableAllocator": "loads native code",
    "torch.cuda.memory.CUDAPluggableAllocator": "loads native code",
}
# os.<prefix>* (execv, execvp, spawnl, posix_spawn ...)
FORBIDDEN_OS_PREFIXES: tuple[str, ...] = ("os.exec", "os.spawn", "os.posix_spawn", "os.popen", "os.fork", "os.kill")

INTERNET_NAMES: dict[str, str] = {
    "torch.hub": "downloads models and weights",
    "torch.utils.model_zoo": "downloads weights",
    "torchvision.datasets": "downloads datasets",
    "numpy.DataSource": "downloads files",
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
    "__import__": "imports modules dynamically",
    "__loader__": "imports modules through the loader",
    "__spec__": "reaches the import machinery",
    "__self__": "reaches the object (or module) behind a builtin",
    "__getattribute__": "reads attributes behind the validator's back",
    "__code__": "rewrites code objects",
    "f_globals": "reaches frame globals",
    "f_locals": "reaches frame locals",
    "f_back": "walks interpreter frames",
    "f_builtins": "reaches the builtins",
    "tb_frame": "reaches interpreter frames",
    "gi_frame": "reaches interpreter frames",
    "cr_frame": "reaches interpreter frames",
    "ag_frame": "reaches interpreter frames",
}

# Namespace attributes that read a module's members by a string the scan cannot follow (`torch.__dict__.get(n)`).
NAMESPACE_ATTRS: frozenset[str] = frozenset({"__dict__", "__getattr__", "__getattribute__"})

# Module names that must not be reached as an attribute of an allowed module (`torch.os.system`, `typing.sys`).
SMUGGLED_MODULES: frozenset[str] = frozenset(
    {"os", "sys", "subprocess", "builtins", "importlib", "posix", "nt", "ctypes", "socket", "shutil", "pickle",
     "marshal", "gc", "inspect", "threading", "multiprocessing", "runpy", "pty", "mmap", "asyncio", "urllib",
     "http", "sysconfig", "site", "imp", "zipimport", "pkgutil", "posixsubprocess", "thread"}
)
# Members that look like smuggled modules but are real, harmless parts of an allowed module.
SMUGGLE_EXCEPTIONS: frozenset[str] = frozenset({"torch.signal"})

# Attribute names `operator.attrgetter`/`methodcaller` must not be given (they would reach the names above).
FORBIDDEN_LEAVES: frozenset[str] = frozenset(
    {q.rsplit(".", 1)[-1] for q in FORBIDDEN_NAMES} | {"hub", "modules", "load", "load_library"} | SMUGGLED_MODULES
)

# Builtins that matter to the scan (unless the candidate defines its own of that name).
RISKY_BUILTINS: frozenset[str] = frozenset(
    {"eval", "exec", "compile", "__import__", "exit", "quit", "globals", "locals", "vars", "breakpoint", "open",
     "getattr", "setattr", "delattr"}
)
# Builtins that must only be called directly, never passed around (`partial(getattr, torch)`).
CALL_ONLY_BUILTINS: frozenset[str] = frozenset(
    {"builtins.eval", "builtins.exec", "builtins.compile", "builtins.__import__", "builtins.globals",
     "builtins.locals", "builtins.vars", "builtins.getattr", "builtins.setattr", "builtins.delattr",
     "numpy.load", "operator.attrgetter", "operator.methodcaller"}
)
# Modules whose attributes may be chosen by a computed name (`getattr(nn, name)` picks a layer or optimiser).
DYNAMIC_ATTR_OK: tuple[str, ...] = ("torch.nn", "torch.optim", "torchvision.models", "torchvision.ops",
                                    "torchvision.transforms")
# Private submodules that are plain Python layers and helpers (`torchvision.models._utils.IntermediateLayerGetter`).
PRIVATE_IMPORT_OK: tuple[str, ...] = ("torchvision.models", "torchvision.ops", "torchvision.transforms")
# Library attributes that may be assigned (`torch.backends.cudnn.benchmark = True`).
ASSIGNABLE_PREFIXES: tuple[str, ...] = ("torch.backends",)

# Calls that write to a path given as an argument: qualified name -> argument index of the path.
PATH_WRITERS: dict[str, int] = {
    "torch.save": 1,
    "numpy.save": 0,
    "numpy.savez": 0,
    "numpy.savez_compressed": 0,
    "numpy.savetxt": 0,
    "torchvision.utils.save_image": 1,
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
    {"builtins.open", "io.open", "io.FileIO", "codecs.open", "gzip.open", "bz2.open", "lzma.open"}
)

TORCHVISION_PREFIXES: tuple[str, ...] = ("torchvision.",)
FIX_FORBIDDEN = "remove it; a captioning model only needs torch"
FIX_INTERNET = "build the layers from scratch with randomly initialised weights"


def fix_import() -> str:
    """What to change for an import outside the allow-list."""
    return f"remove it; a candidate may import only: {allowed_summary()}"
