"""The scenes of the synthetic dataset and the language that describes them.

A scene is one or two groups of coloured shapes on a plain background (`sample_scene`); `make_captions` writes
five different captions of it with synonyms, word orders and levels of detail, and `describe` gives the one
canonical caption (the oracle of tests and benchmarks). Drawing scenes and writing files: `synthetic.py`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from nncaption.netapi.data.tokenizer import tokenize

MAX_CAPTION_WORDS = 16  # fits max_len=20 with SOS/EOS and margin
CAPTIONS_PER_IMAGE = 5

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15), "gray": (128, 128, 128), "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.06, "large": 0.09}  # radius as a fraction of the image side
REGIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "middle")
REGION_PAIRS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))

# Words used in captions (synonyms give variety; the oracle uses the first of each).
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {  # (singular, plural)
    "circle": (("circle", "circles"), ("disk", "disks")),
    "square": (("square", "squares"), ("box", "boxes")),
    "triangle": (("triangle", "triangles"),),
}
COUNT_WORDS: dict[int, tuple[str, ...]] = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
REGION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side", "to the left"),
    "right": ("on the right", "on the right side", "to the right"),
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
    "middle": ("in the middle", "in the center"),
}
SCENE_WORDS: tuple[str, ...] = ("a picture of", "an image of", "a photo of")
BACKGROUND_PHRASES: tuple[str, ...] = ("on a {bg} background", "against a {bg} background", "on {bg}")


@dataclass(frozen=True)
class Group:
    """`count` shapes of one colour, shape and size in one region."""

    count: int
    colour: str
    shape: str
    size: str
    region: str


@dataclass(frozen=True)
class Scene:
    background: str
    groups: tuple[Group, ...]

    @property
    def n_objects(self) -> int:
        return sum(g.count for g in self.groups)

    def to_dict(self) -> dict:
        return {"background": self.background, "groups": [asdict(g) for g in self.groups]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(d["background"], tuple(Group(**g) for g in d["groups"]))


def sample_scene(rng: random.Random) -> Scene:
    """One or two groups; two groups sit in opposite regions and differ in colour or shape."""
    background = rng.choice(list(BACKGROUNDS))
    colours = [c for c in COLOURS if not (background == "white" and c == "yellow")]  # keep contrast
    if rng.random() < 0.4:
        regions: tuple[str, ...] = (rng.choice(REGIONS),)
    else:
        regions = rng.choice(REGION_PAIRS)
        if rng.random() < 0.5:
            regions = regions[::-1]
    groups: list[Group] = []
    for region in regions:
        while True:
            g = Group(rng.randint(1, 3), rng.choice(colours), rng.choice(SHAPES), rng.choice(list(SIZES)), region)
            if all((g.colour, g.shape) != (o.colour, o.shape) for o in groups):
                break
        groups.append(g)
    return Scene(background, tuple(groups))


# ---------------------------------------------------------------- captions


def _article(words: str) -> str:
    """'a orange circle' -> 'an orange circle'."""
    if words.startswith("a ") and words[2:3] in "aeiou":
        return "an " + words[2:]
    return words


def _noun_phrase(g: Group, rng: random.Random, *, with_size: bool, plain: bool = False) -> str:
    count = COUNT_WORDS[g.count][0] if plain else rng.choice(COUNT_WORDS[g.count])
    singular, plural = SHAPE_WORDS[g.shape][0] if plain else rng.choice(SHAPE_WORDS[g.shape])
    noun = singular if g.count == 1 else plural
    size = (SIZE_WORDS[g.size][0] if plain else rng.choice(SIZE_WORDS[g.size])) + " " if with_size else ""
    if not plain and rng.random() < 0.2:  # "two squares that are red"
        verb = "is" if g.count == 1 else "are"
        return _article(f"{count} {size}{noun} that {verb} {g.colour}")
    return _article(f"{count} {size}{g.colour} {noun}")


def _where(g: Group, rng: random.Random, plain: bool = False) -> str:
    return REGION_WORDS[g.region][0] if plain else rng.choice(REGION_WORDS[g.region])


def describe(scene: Scene) -> str:
    """The canonical, fully detailed caption (no synonyms): the oracle in tests and benchmarks."""
    return " and ".join(
        f"{_noun_phrase(g, random.Random(0), with_size=False, plain=True)} {_where(g, random.Random(0), plain=True)}"
        for g in scene.groups
    )


def _caption(scene: Scene, template: int, rng: random.Random) -> str:
    gs = list(scene.groups)
    with_size = rng.random() < 0.35

    def nps() -> list[str]:
        return [_noun_phrase(g, rng, with_size=with_size) for g in gs]

    if template == 0:  # two red circles on the left and a blue square on the right
        return " and ".join(f"{n} {_where(g, rng)}" for n, g in zip(nps(), gs, strict=True))
    if template == 1:  # a blue square on the right and two red circles on the left (other order)
        return " and ".join(f"{n} {_where(g, rng)}" for n, g in reversed(list(zip(nps(), gs, strict=True))))
    if template == 2:  # there are two red circles on the left and ...
        verb = "is" if gs[0].count == 1 else "are"
        return f"there {verb} " + " and ".join(f"{n} {_where(g, rng)}" for n, g in zip(nps(), gs, strict=True))
    if template == 3:  # on the left there are two red circles and on the right there is ...
        return " and ".join(f"{_where(g, rng)} there {'is' if g.count == 1 else 'are'} {n}"
                            for n, g in zip(nps(), gs, strict=True))
    if template == 4:  # a picture of two red circles and a blue square
        return f"{rng.choice(SCENE_WORDS)} " + " and ".join(nps())
    if template == 5:  # two red circles and a blue square against a black background
        return " and ".join(nps()) + " " + rng.choice(BACKGROUND_PHRASES).format(bg=scene.background)
    if template == 6:  # three shapes / a picture with three objects (low detail: counts only)
        n = scene.n_objects
        count = rng.choice(("a", "one")) if n == 1 else NUMBER_WORDS[n]
        noun = rng.choice(("shape", "object")) + ("" if n == 1 else "s")
        return rng.choice(("{c} {n}", "{c} colored {n}", "a picture with {c} {n}", "an image showing {c} {n}")).format(
            c=count, n=noun)
    if template == 7:  # two red circles on the left with a blue square on the right
        parts = [f"{n} {_where(g, rng)}" for n, g in zip(nps(), gs, strict=True)]
        if len(parts) == 1:
            return f"{parts[0]} of the {rng.choice(('image', 'picture'))}"
        return f"{parts[0]} with {parts[1]}"
    # 8: red and blue shapes (colours only, low detail)
    colours = " and ".join(dict.fromkeys(g.colour for g in gs))
    noun = "shape" if scene.n_objects == 1 else "shapes"
    return _article(f"{'a ' if scene.n_objects == 1 else ''}{colours} {noun}")


N_TEMPLATES = 9


def make_captions(scene: Scene, rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`n` distinct captions of at most MAX_CAPTION_WORDS words, from different templates where possible."""
    out: list[str] = []
    templates = list(range(N_TEMPLATES))
    rng.shuffle(templates)
    attempts = 0
    while len(out) < n and attempts < 200:
        t = templates[attempts % N_TEMPLATES]
        attempts += 1
        cap = _caption(scene, t, rng)
        if cap not in out and len(tokenize(cap)) <= MAX_CAPTION_WORDS:
            out.append(cap)
    while len(out) < n:  # pathological scene: pad with the shortest form (never happens in practice)
        out.append(_caption(scene, 6, rng))
    return out
