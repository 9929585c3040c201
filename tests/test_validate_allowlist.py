"""The validator's import allow-list (read from CONTRACT.md), dangerous members of allowed modules, escapes, BOM."""

from __future__ import annotations

from pathlib import Path

import pytest

from nncaption.netapi import reference
from nncaption.netapi.categories import Category
from nncaption.netapi.contract import contract_text
from nncaption.netapi.validate import static_check
from nncaption.netapi.validate_rules import allowed_modules, parse_allowed

CANDIDATES = Path(__file__).parent / "candidates"
GOOD = (CANDIDATES / "good_tiny.py").read_text(encoding="utf-8")


def patched(*, top: str = "", setup: str = "") -> str:
    """The good candidate with extra module-level lines (after the imports) and extra lines in train_setup."""
    src = GOOD.replace("import torch.nn as nn\n", "import torch.nn as nn\n" + top + ("\n" if top else ""), 1)
    if setup:
        body = "".join(f"        {ln}\n" for ln in setup.splitlines())
        src = src.replace("    def train_setup(self, prm):\n", "    def train_setup(self, prm):\n" + body, 1)
    return src


def line_of(source: str, needle: str) -> int:
    for i, line in enumerate(source.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in source")


# --------------------------------------------------------------------------- the allow-list is the contract's


def test_allow_list_is_read_from_the_contract() -> None:
    table = parse_allowed(contract_text())
    assert table == allowed_modules()
    for name in ("torch", "numpy", "math", "typing", "dataclasses", "functools", "collections"):
        assert name in table and table[name].members is None
    assert table["torchvision"].members is not None and "models" in table["torchvision"].members
    assert table["os"].members is not None and "system" not in table["os"].members
    for name in ("subprocess", "posix", "ctypes", "inspect", "gc", "importlib", "nncaption", "pickle"):
        assert name not in table


def test_contract_without_an_allow_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="allowed-imports"):
        parse_allowed("# a contract without the block")


# --------------------------------------------------------------------------- rejected

REJECTED = [
    # (module-level lines, lines in train_setup, the offending text, what the message must say)
    ("import posix", "posix.system('id')", "import posix", "posix"),
    ("import _posixsubprocess", "", "import _posixsubprocess", "spawns processes"),
    ("import _thread", "", "import _thread", "threads"),
    ("import threading", "", "import threading", "threads"),
    ("import gc", "objs = gc.get_objects()", "import gc", "every live object"),
    ("import mmap", "", "import mmap", "mmap"),
    ("", "state = torch.load('model.pt')", "torch.load", "unpickles"),
    ("from torch import load", "", "from torch import load", "unpickles"),
    ("import numpy as np", "a = np.load('x.npy', allow_pickle=True)", "np.load", "allow_pickle"),
    ("import numpy as np", "a = np.load('x.npy', None, True)", "np.load", "allow_pickle"),
    ("import numpy as np", "flag = True\na = np.load('x.npy', allow_pickle=flag)", "np.load", "allow_pickle"),
    ("import numpy.ctypeslib", "", "import numpy.ctypeslib", "native code"),
    ("import nncaption.netapi.run as r", "", "import nncaption", "runner"),
    ("from nncaption.netapi import train", "", "from nncaption", "runner"),
    ("import inspect", "", "import inspect", "frames"),
    ("import ctypes", "", "import ctypes", "native code"),
    ("import importlib", "", "import importlib", "dynamically"),
    ("import builtins", "", "import builtins", "builtins"),
    ("", "torch.ops.load_library('x.so')", "torch.ops.load_library", "native code"),
    ("from torch.utils import cpp_extension", "", "from torch.utils import cpp_extension", "native code"),
    ("import torch._dynamo", "", "import torch._dynamo", "private"),
    ("import torchvision.io", "", "import torchvision.io", "native decoders"),
    ("import yaml", "", "import yaml", "not on the allowed list"),
    ("from . import helpers", "", "from . import helpers", "relative import"),
    ("", "torch.os.system('id')", "torch.os", "through torch"),
    ("import typing", "typing.sys.modules['os']", "typing.sys", "through typing"),
    ("import os", "os.path.os.system('id')", "os.path.os", "through os.path"),
    ("import os", "fd = os.dup2(1, 2)", "os.dup2", "only "),
    ("import os", "print(os)", "print(os)", "as a value"),
    ("", "sys_mod = print.__self__", "print.__self__", "behind a builtin"),
    ("", "name = 'lo' + 'ad'\nf = getattr(torch, name)", "getattr(torch", "computed name"),
    ("import functools", "g = functools.partial(getattr, torch)", "functools.partial", "as a value"),
    ("", "vars(torch)['load']('x')", "vars(torch)", "unpickles"),
    ("import operator", "f = operator.attrgetter('__globals__')", "operator.attrgetter", "by name"),
    ("", "torch.nn.functional.relu = lambda x: x", "torch.nn.functional.relu =", "library module"),
    ("", "setattr(torch, 'manual_seed', print)", "setattr(torch", "library module"),
    ("", "open('helpers.py', 'w').write('import os')", "open('helpers.py'", "module file"),
    ("", "g = (lambda: 0).__globals__", "__globals__", "globals"),
    ("", "f = getattr(self, '__globals__')", "getattr(self", "globals"),
    ("import sys", "sys.settrace(None)", "sys.settrace", "hooks"),
    ("import types", "c = types.CodeType", "types.CodeType", "code objects"),
    ("import numpy as np", "a = np.lib.format.read_array(f, allow_pickle=True)", "read_array", "allow_pickle"),
    ("import operator", "f = operator.attrgetter('load')(torch)", "operator.attrgetter", "by name"),
    ("", "f = torch.__dict__.get('lo' + 'ad')", "torch.__dict__", "namespace"),
    ("", "f = vars(torch).get('load')", "vars(torch)", "namespace"),
    ("", "torch._ops.ops.load_library('x.so')", "torch._ops", "operator loading"),
    ("", "a = torch.cuda.memory.CUDAPluggableAllocator('x.so', 'a', 'f')", "CUDAPluggableAllocator", "native"),
]


@pytest.mark.parametrize("top, setup, needle, mention", REJECTED, ids=[r[2] for r in REJECTED])
def test_rejected_as_forbidden_call(top: str, setup: str, needle: str, mention: str) -> None:
    src = patched(top=top, setup=setup)
    v = static_check(src)
    assert not v.ok and v.category is Category.FORBIDDEN_CALL, v.message
    assert v.line == line_of(src, needle), (v.line, v.message)
    assert mention in v.message, v.message
    assert "What to change:" in v.message


def test_message_names_the_module_and_the_allowed_list() -> None:
    v = static_check(patched(top="import posix", setup="posix.system('id')"))
    assert "imports posix" in v.message and "a candidate may import only: torch" in v.message
    assert "numpy" in v.message and "math" in v.message
    assert v.message.count("line ") == 1  # the use of an already reported module is not repeated


def test_torchvision_datasets_need_internet() -> None:
    v = static_check(patched(top="import torchvision.datasets"))
    assert v.category is Category.NEEDS_INTERNET, v.message


# --------------------------------------------------------------------------- accepted


ACCEPTED = [
    ("from collections import OrderedDict\nfrom functools import partial\nimport dataclasses\nimport typing",
     "d = OrderedDict()\nf = partial(max, 1)"),
    ("import numpy as np", "a = np.load('x.npy')\nb = np.load('y.npy', allow_pickle=False)"),
    ("", "torch.backends.cudnn.benchmark = True"),
    ("", "name = 'AdamW'\nopt_cls = getattr(torch.optim, name)"),
    ("import math\nimport random\nimport copy\nimport itertools", "x = math.sqrt(random.random())"),
    ("import os.path as osp\nimport sys", "p = osp.join('a', 'b')\nbig = sys.maxsize"),
    ("from torchvision.models import resnet18\nimport torchvision.ops", "m = resnet18(weights=None)"),
    ("import tempfile\nfrom pathlib import Path", "d = tempfile.mkdtemp()\nPath('log.txt').write_text('x')"),
    ("import operator", "f = operator.attrgetter('weight')"),
    ("from torchvision.models._utils import IntermediateLayerGetter\n"
     "from torchvision.ops.misc import Conv2dNormActivation", ""),
]


@pytest.mark.parametrize("top, setup", ACCEPTED, ids=[a[0].split("\n")[0] or a[1][:20] for a in ACCEPTED])
def test_allowed_code_is_accepted(top: str, setup: str) -> None:
    v = static_check(patched(top=top, setup=setup))
    assert v.ok, v.message


LEMUR_STYLE = '''import math
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tv
from torch import Tensor

try:
    from ab.nn.loader.coco_.Caption import GLOBAL_CAPTION_VOCAB
except Exception:
    GLOBAL_CAPTION_VOCAB = {}


def supported_hyperparameters():
    return {"lr", "momentum", "dropout"}


class Net(nn.Module):
    def __init__(self, in_shape: tuple, out_shape: tuple, prm: dict, device: torch.device, *_, **__) -> None:
        super().__init__()
        self.device = device
        self.vocab_size = int(out_shape[0])
        self.sos = int(GLOBAL_CAPTION_VOCAB.get("<SOS>", 1))
        self.cnn = tv.resnet18(weights=None)
        self.cnn.fc = nn.Linear(512, 256)
        self.embed = nn.Embedding(self.vocab_size, 256)
        self.rnn = nn.GRU(256, 256, batch_first=True)
        self.fc = nn.Linear(256, self.vocab_size)
        self.scale = math.sqrt(256)

    @staticmethod
    def supported_hyperparameters():
        return {"lr", "momentum"}

    def train_setup(self, prm: dict) -> None:
        self.to(self.device)
        self.criterion = nn.CrossEntropyLoss(ignore_index=0)
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=prm["lr"], betas=(prm.get("momentum", 0.9), 0.999))

    def learn(self, data_roll) -> None:
        self.train()
        for images, captions in data_roll:
            captions = captions[:, 0, :] if captions.dim() == 3 else captions
            logits, _ = self.forward(images, captions[:, :-1])
            loss = self.criterion(logits.reshape(-1, self.vocab_size), captions[:, 1:].reshape(-1))
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters(), 3.0)
            self.optimizer.step()

    def forward(self, images: Tensor, captions: Optional[Tensor] = None,
                hidden_state: Optional[Any] = None) -> Tuple[Tensor, Any]:
        h = torch.tanh(self.cnn(images)).unsqueeze(0)
        if captions is None:
            captions = torch.full((images.size(0), 1), self.sos, dtype=torch.long, device=images.device)
        out, h = self.rnn(F.dropout(self.embed(captions), 0.1, self.training), h)
        return self.fc(out), h
'''


def test_lemur_style_captioning_model_is_accepted() -> None:
    """Typing, torch.nn.functional, torchvision models without weights and LEMUR's optional loader import."""
    v = static_check(LEMUR_STYLE, "C5C-STYLE.py")
    assert v.ok, v.message


def test_optional_import_only_inside_try_and_only_lemurs_package() -> None:
    bare = LEMUR_STYLE.replace("try:\n    from ab.nn", "if True:\n    from ab.nn").replace(
        "except Exception:\n    GLOBAL_CAPTION_VOCAB = {}\n", "")
    assert static_check(bare).category is Category.FORBIDDEN_CALL
    other = LEMUR_STYLE.replace("from ab.nn.loader.coco_.Caption import", "from posix import")
    assert static_check(other).category is Category.FORBIDDEN_CALL


def test_reference_models_still_pass() -> None:
    for name in reference.NAMES:
        assert static_check(reference.source(name)).ok


# --------------------------------------------------------------------------- byte-order mark


def test_utf8_bom_is_accepted_like_python_does(tmp_path: Path) -> None:
    path = tmp_path / "bom.py"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode("utf-8"))
    source = path.read_text(encoding="utf-8")
    assert source.startswith("\ufeff")
    compile(path.read_bytes(), str(path), "exec")  # Python itself accepts it
    v = static_check(source, "bom.py")
    assert v.ok, v.message
    bad = static_check("\ufeff" + GOOD.replace("import torch\n", "import torch\nimport posix\n", 1))
    assert bad.category is Category.FORBIDDEN_CALL and bad.line == line_of(GOOD, "import torch") + 1
