"""Static validation: categories, lines and fixer-ready messages, without importing candidates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nncaption.netapi import reference
from nncaption.netapi.categories import Category
from nncaption.netapi.validate import find_problems, static_check

CANDIDATES = Path(__file__).parent / "candidates"
GOOD = (CANDIDATES / "good_tiny.py").read_text(encoding="utf-8")


def line_of(source: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    for i, line in enumerate(source.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in source")


def patched(*, top: str = "", setup: str = "") -> str:
    """The good candidate with extra module-level lines (after the imports) and extra lines in train_setup."""
    src = GOOD.replace("import torch.nn as nn\n", "import torch.nn as nn\n" + top + ("\n" if top else ""), 1)
    if setup:
        body = "".join(f"        {ln}\n" for ln in setup.splitlines())
        src = src.replace("    def train_setup(self, prm):\n", "    def train_setup(self, prm):\n" + body, 1)
    return src


def assert_rejected(source: str, category: Category, needle: str, *mentions: str) -> None:
    """Rejected with `category`, at the line containing `needle`, and the message names that line."""
    v = static_check(source)
    assert not v.ok and v.stage == "static", v
    assert v.category is category, v.message
    expected_line = line_of(source, needle)
    assert v.line == expected_line, (v.line, expected_line, v.message)
    assert f"line {expected_line}" in v.message
    assert "What to change:" in v.message
    for m in mentions:
        assert m in v.message, (m, v.message)


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("name", reference.NAMES)
def test_reference_models_pass(name: str) -> None:
    v = static_check(reference.source(name), f"{name}.py")
    assert v.ok and v.category is None and v.stage == "static", v.message


@pytest.mark.parametrize("name", ["good_tiny.py", "good_ids.py", "good_logits.py"])
def test_good_candidates_pass(name: str) -> None:
    assert static_check((CANDIDATES / name).read_text(encoding="utf-8"), name).ok


@pytest.mark.parametrize(
    "top, setup",
    [
        ("import os\nimport math\nimport numpy as np", "p = os.path.join('a', 'b')\n"
         "x = os.environ.get('HOME')\nn = os.cpu_count()"),
        ("", "act = getattr(nn, 'ReLU')()\nname = 'GELU'\nact2 = getattr(nn, name)()"),
        ("", "with open('train_log.txt', 'w') as f:\n    f.write('x')\nopen('/etc/hostname').read()"),
        ("import re", "pattern = re.compile('[a-z]+')\nself.eval()\nself.train()"),
        ("import torchvision", "backbone = torchvision.models.resnet18(weights=None)"),
        ("import json", "blob = json.dumps({'a': 1})"),
        ("", "torch.save(self.state_dict(), 'checkpoint.pt')"),
        ("from torch.nn import Module", ""),
    ],
    ids=["os-path-env-threading", "getattr-on-nn", "relative-writes-and-reads", "re-compile-and-eval-method",
         "torchvision-no-weights", "json-dumps", "torch-save-relative", "import-module"],
)
def test_harmless_code_is_not_flagged(top: str, setup: str) -> None:
    v = static_check(patched(top=top, setup=setup))
    assert v.ok, v.message


def test_extra_parameters_with_defaults_and_inherited_methods_pass() -> None:
    src = GOOD.replace(
        "def forward(self, images, captions=None, hidden_state=None):",
        "def forward(self, images, captions=None, hidden_state=None, max_len=20, *args, **kwargs):",
    ).replace("class Net(nn.Module):", "class Base(nn.Module):\n    def learn(self, train_data):\n"
              "        return 0.0\n\n\nclass Net(Base):")
    src = src.replace("    def learn(self, train_data):\n        self.train()", "    def fit(self, train_data):\n"
                      "        self.train()")
    v = static_check(src)
    assert v.ok, v.message


# --------------------------------------------------------------------------- syntax and symbols


def test_syntax_error_names_line_and_text() -> None:
    src = (CANDIDATES / "bad_syntax.py").read_text(encoding="utf-8")
    v = static_check(src, "bad_syntax.py")
    assert v.category is Category.SYNTAX and not v.ok
    assert v.line == line_of(src, "self.encoder = nn.Sequential(")
    assert f"line {v.line}" in v.message and "never closed" in v.message and "nn.Sequential(" in v.message


def test_missing_method_names_it_and_gives_the_signature() -> None:
    src = (CANDIDATES / "bad_missing_learn.py").read_text(encoding="utf-8")
    assert_rejected(src, Category.MISSING_SYMBOL, "class Net(nn.Module):", "`learn`",
                    "def learn(self, train_data):")


def test_missing_hyperparameters_function() -> None:
    src = GOOD.replace("def supported_hyperparameters():\n    return {'lr', 'momentum', 'dropout'}\n", "")
    v = static_check(src)
    assert v.category is Category.MISSING_SYMBOL
    assert "supported_hyperparameters" in v.message and "def supported_hyperparameters():" in v.message


def test_missing_net_class_and_nested_net() -> None:
    v = static_check("def supported_hyperparameters():\n    return {'lr'}\n")
    assert v.category is Category.MISSING_SYMBOL and "class Net(nn.Module)" in v.message
    nested = GOOD.replace("class Net(nn.Module):", "def make():\n  class Net(nn.Module):\n    pass\n\n\nclass Other("
                          "nn.Module):")
    v = static_check(nested)
    assert v.category is Category.MISSING_SYMBOL and "nested" in v.message and v.line == line_of(nested, "  class Net")


def test_net_must_derive_from_module() -> None:
    src = GOOD.replace("class Net(nn.Module):", "class Net:")
    assert_rejected(src, Category.MISSING_SYMBOL, "class Net:", "class Net(nn.Module):")


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize(
    "old, new, mention",
    [
        ("def forward(self, images, captions=None, hidden_state=None):",
         "def forward(self, images, captions, hidden_state=None):", "captions=None"),
        ("def forward(self, images, captions=None, hidden_state=None):",
         "def forward(self, images):", "`captions`"),
        ("def forward(self, images, captions=None, hidden_state=None):",
         "def forward(self, images, captions=None, hidden_state=0):", "hidden_state=None"),
        ("def forward(self, images, captions=None, hidden_state=None):",
         "def forward(self, images, captions=0, hidden_state=None):", "captions=None"),
        ("def __init__(self, in_shape, out_shape, prm, device):",
         "def __init__(self, in_shape, out_shape, prm):", "(self, in_shape, out_shape, prm, device)"),
        ("def learn(self, train_data):", "def learn(self, train_data, epochs):", "`epochs`"),
        ("def learn(self, train_data):", "async def learn(self, train_data):", "async"),
        ("def train_setup(self, prm):", "def train_setup(self, prm, *, scheduler):", "`scheduler`"),
    ],
    ids=["forward-captions-required", "forward-no-captions", "forward-hidden-default-not-none",
         "forward-default-not-none", "init-no-device", "learn-extra-required", "learn-async", "setup-kwonly-required"],
)
def test_bad_signatures(old: str, new: str, mention: str) -> None:
    src = GOOD.replace(old, new)
    assert src != GOOD
    assert_rejected(src, Category.BAD_SIGNATURE, new, "Use exactly `def", mention)


@pytest.mark.parametrize(
    "old, new",
    [
        ("def forward(self, images, captions=None, hidden_state=None):", "def forward(self, images, captions=None):"),
        ("def forward(self, images, captions=None, hidden_state=None):",
         "def forward(self, x, captions=None, hidden_state=None):"),
        ("def __init__(self, in_shape, out_shape, prm, device):",
         "def __init__(self, in_shape, out_shape, prm, device, *_, **__):"),
        ("def learn(self, train_data):", "def learn(self, data_roll):"),
    ],
    ids=["forward-no-hidden-state", "forward-renamed", "init-star-args", "learn-renamed"],
)
def test_lemur_signature_variants_accepted(old: str, new: str) -> None:
    """LEMUR models call methods positionally: renamed parameters, `*_, **__` and no hidden_state all bind."""
    src = GOOD.replace(old, new)
    assert src != GOOD
    v = static_check(src)
    assert v.ok, v.message


@pytest.mark.parametrize(
    "body, mention",
    [
        ("    return ['lr', 'momentum']", "a list"),
        ("    return {}", "dict"),
        ("    print('lr')", "returns nothing"),
    ],
)
def test_hyperparameters_must_return_a_set(body: str, mention: str) -> None:
    src = GOOD.replace("    return {'lr', 'momentum', 'dropout'}", body)
    v = static_check(src)
    assert v.category is Category.BAD_SIGNATURE and mention in v.message, v.message
    assert "{'lr', 'momentum', 'dropout'}" in v.message


def test_hyperparameters_must_be_a_function() -> None:
    src = GOOD.replace("def supported_hyperparameters():\n    return {'lr', 'momentum', 'dropout'}",
                       "supported_hyperparameters = {'lr', 'momentum'}")
    assert_rejected(src, Category.BAD_SIGNATURE, "supported_hyperparameters =", "not defined as a function")


# --------------------------------------------------------------------------- forbidden calls


FORBIDDEN = [
    # (module-level lines, lines in train_setup, the offending text, what the message must say)
    ("import subprocess", "", "import subprocess", "spawns processes"),
    ("import os", "os.system('ls')", "os.system", "spawns a shell"),
    ("import os as o", "o.system('ls')", "o.system", "spawns a shell"),
    ("from os import system", "", "from os import system", "spawns a shell"),
    ("from os import system as run_it", "", "from os import system", "spawns a shell"),
    ("import os", "getattr(os, 'system')('ls')", "getattr(os", "spawns a shell"),
    ("import os", "getattr(os, 'sys' + 'tem')('ls')", "getattr(os", "computed name"),
    ("import os", "o = os\no.popen('ls')", "o.popen", "spawns a shell"),
    ("import os", "run = os.system\nrun('ls')", "run = os.system", "spawns a shell"),
    ("import os", "os.execv('/bin/sh', ['sh'])", "os.execv", "processes"),
    ("import os", "os.spawnl(0, '/bin/sh')", "os.spawnl", "processes"),
    ("import os", "os.fork()", "os.fork", "forks"),
    ("import os", "os.kill(1, 9)", "os.kill", "signals"),
    ("import os", "os.__dict__['system']('ls')", "os.__dict__", "spawns a shell"),
    ("", "__builtins__['exec']('x = 1')", "__builtins__", "builtins"),
    ("", "globals()['torch']", "globals()", "globals"),
    ("", "eval('1 + 1')", "eval(", "dynamic code"),
    ("", "exec('x = 1')", "exec(", "dynamic code"),
    ("", "compile('1', 'f', 'eval')", "compile(", "compiles"),
    ("", "__import__('os').system('ls')", "__import__", "imports modules dynamically"),
    ("import importlib", "", "import importlib", "imports code dynamically"),
    ("import sys", "sys.modules['os'].system('ls')", "sys.modules", "behind the validator"),
    ("", "().__class__.__bases__[0].__subclasses__()", "__subclasses__", "class hierarchy"),
    ("import socket", "", "import socket", "network"),
    ("import requests", "", "import requests", "HTTP"),
    ("import urllib.request", "", "import urllib.request", "HTTP"),
    ("from http import client", "", "from http import client", "HTTP"),
    ("import httpx", "", "import httpx", "HTTP"),
    ("import ctypes", "", "import ctypes", "native code"),
    ("import signal", "", "import signal", "signal"),
    ("import multiprocessing", "", "import multiprocessing", "spawns processes"),
    ("import torch.multiprocessing as tmp", "", "import torch.multiprocessing", "spawns processes"),
    ("import shutil", "shutil.rmtree('runs')", "import shutil", "deletes files and trees"),
    ("", "exit()", "exit()", "exits the process"),
    ("", "quit()", "quit()", "exits the process"),
    ("import sys", "sys.exit(0)", "sys.exit", "exits the process"),
    ("import os", "os._exit(0)", "os._exit", "exits the process"),
    ("import os", "os.abort()", "os.abort", "aborts"),
    ("", "open('/etc/motd', 'w').write('x')", "open('/etc/motd'", "outside the working directory"),
    ("", "open('../escape.txt', mode='a')", "open('../escape", "outside the working directory"),
    ("", "open(f'/tmp/{1}.txt', 'wb')", "open(f'/tmp", "outside the working directory"),
    ("from pathlib import Path", "Path('/etc/x').write_text('x')", "Path('/etc/x')", "outside the working"),
    ("", "torch.save(self.state_dict(), '/tmp/model.pt')", "torch.save", "outside the working directory"),
    ("import pickle", "pickle.loads(b'')", "import pickle", "unpickles"),
    ("import marshal", "", "import marshal", "code objects"),
]


@pytest.mark.parametrize("top, setup, needle, mention", FORBIDDEN, ids=[f[2] + "|" + f[3] for f in FORBIDDEN])
def test_forbidden_calls(top: str, setup: str, needle: str, mention: str) -> None:
    src = patched(top=top, setup=setup)
    assert_rejected(src, Category.FORBIDDEN_CALL, needle, mention)
    v = static_check(src)
    # says what to change, and quotes the offending code
    assert re.search(r"remove it|write only relative|touch only relative|use the attribute directly|import the names",
                     v.message), v.message


def test_forbidden_candidate_file() -> None:
    src = (CANDIDATES / "bad_forbidden_subprocess.py").read_text(encoding="utf-8")
    assert_rejected(src, Category.FORBIDDEN_CALL, "import subprocess", "subprocess", "remove it")


# --------------------------------------------------------------------------- needs internet


INTERNET = [
    ("", "m = torch.hub.load('pytorch/vision', 'resnet18')", "torch.hub.load", "downloads"),
    ("from torch.hub import load_state_dict_from_url", "", "from torch.hub", "torch.hub"),
    ("from torchvision.models.utils import load_state_dict_from_url", "", "load_state_dict_from_url", "weights"),
    ("import torch.utils.model_zoo", "", "model_zoo", "downloads weights"),
    ("import torchvision", "m = torchvision.models.resnet18(pretrained=True)", "pretrained=True", "pretrained=False"),
    ("from torchvision.models import resnet18, ResNet18_Weights",
     "m = resnet18(weights=ResNet18_Weights.DEFAULT)", "weights=ResNet18", "weights=None"),
    ("import torchvision.models as tvm", "m = tvm.get_model('resnet18', weights='DEFAULT')", "weights='DEFAULT'",
     "weights=None"),
    ("", "m = SomeHub.from_pretrained('bert-base')", "from_pretrained", "pretrained"),
]


@pytest.mark.parametrize("top, setup, needle, mention", INTERNET, ids=[i[2] for i in INTERNET])
def test_needs_internet(top: str, setup: str, needle: str, mention: str) -> None:
    assert_rejected(patched(top=top, setup=setup), Category.NEEDS_INTERNET, needle, mention)


def test_pretrained_candidate_file() -> None:
    src = (CANDIDATES / "bad_pretrained.py").read_text(encoding="utf-8")
    assert_rejected(src, Category.NEEDS_INTERNET, "weights='IMAGENET1K_V1'", "weights=None", "from scratch")


# --------------------------------------------------------------------------- several problems


def test_all_problems_listed_most_basic_category_first() -> None:
    src = patched(top="import socket", setup="eval('1')").replace(
        "def learn(self, train_data):", "def learn(self, train_data, n):")
    v = static_check(src)
    assert v.category is Category.BAD_SIGNATURE
    assert v.message.startswith("3 problem(s)")
    for needle in ("learn", "socket", "eval"):
        assert f"line {line_of(src, needle if needle != 'learn' else 'def learn(')}" in v.message
    cats = [f.category for f in find_problems(src)]
    assert cats == [Category.BAD_SIGNATURE, Category.FORBIDDEN_CALL, Category.FORBIDDEN_CALL]


def test_verdict_round_trips_through_json() -> None:
    from nncaption.netapi.categories import Verdict

    v = static_check(patched(top="import ctypes"))
    d = v.to_dict()
    assert set(d) == {"ok", "stage", "category", "message", "line"} and d["category"] == "forbidden-call"
    assert Verdict.from_dict(d) == v
