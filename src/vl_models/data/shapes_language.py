"""Shapes text: captions, one-word hard negatives, VQA questions, referring expressions and NLVR2
statements, each checked against the scene it describes."""

from __future__ import annotations

import itertools
import random

from .shapes_scene import (
    COLORS,
    OPPOSITE,
    PLURALS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    matches,
    relation_possible,
    true_relations,
)

ATTRIBUTES = ("size", "color", "shape")  # the order words take in a noun phrase
VALUES = {"size": SIZES, "color": tuple(COLORS), "shape": SHAPES}
QUESTION_TYPES = ("color", "shape", "count", "existence", "relation")
SHAPES_ANSWERS = ("no", "yes", "0", "1", "2", "3", "4", *COLORS, *SHAPES)
_SUBSETS = [subset for n in range(len(ATTRIBUTES) + 1) for subset in itertools.combinations(ATTRIBUTES, n)]


def noun_phrase(description: dict[str, str], article: str) -> str:
    """{"color": "red"} -> "the red object"; a description without a shape uses the noun "object"."""
    words = [description[key] for key in ("size", "color") if key in description]
    words.append(description.get("shape", "object"))
    if article == "a" and words[0][0] in "aeiou":
        article = "an"
    return " ".join([article, *words])


def unique_descriptions(scene: Scene, index: int, exclude: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Every subset of the object's attributes (minus ``exclude``) that no other object matches."""
    obj = scene.objects[index]
    others = [other for j, other in enumerate(scene.objects) if j != index]
    out = []
    for subset in _SUBSETS:
        if any(key in exclude for key in subset):
            continue
        description = {key: getattr(obj, key) for key in subset}
        if not any(matches(other, description) for other in others):
            out.append(description)
    return out


def _random_partial(rng: random.Random, obj: ShapeObject | None = None) -> dict[str, str]:
    """A non-empty partial description: of ``obj`` if given, otherwise of random values."""
    keys = [key for key in ATTRIBUTES if rng.random() < 0.5] or [rng.choice(ATTRIBUTES)]
    if obj is not None:
        return {key: getattr(obj, key) for key in keys}
    return {key: rng.choice(VALUES[key]) for key in keys}


# ---- captions and hard negatives -------------------------------------------------------------

def caption_words(a: dict[str, str], relation: str | None = None, b: dict[str, str] | None = None) -> list[str]:
    words = ["a", a["size"], a["color"], a["shape"]]
    if relation is not None:
        words += [*relation.split(), "a", b["size"], b["color"], b["shape"]]
    return words


def caption_possible(scene: Scene, a: dict[str, str], relation: str | None, b: dict[str, str] | None) -> bool:
    """Could the caption be read as true of the scene (weak relation test)?"""
    for i, obj in enumerate(scene.objects):
        if not matches(obj, a):
            continue
        if relation is None:
            return True
        for j, other in enumerate(scene.objects):
            if i != j and matches(other, b) and relation_possible(obj, other, relation):
                return True
    return False


def make_captions(scene: Scene, rng: random.Random, max_captions: int = 3) -> list[tuple]:
    """Up to ``max_captions`` distinct true captions as (a, relation, b) tuples; the first is primary."""
    triples = true_relations(scene)
    rng.shuffle(triples)
    out = []
    for i, relation, j in triples[:max_captions]:
        out.append((scene.objects[i].attributes(), relation, scene.objects[j].attributes()))
    if not out:  # a single object (or no clear relation): describe one object
        out.append((rng.choice(scene.objects).attributes(), None, None))
    return out


def make_hard_negatives(scene: Scene, caption: tuple, rng: random.Random) -> list[tuple[str, dict]]:
    """One false variant per kind (color, shape, size, relation) where one exists. Each differs from
    the caption in exactly one word; returns (text, {"kind", "position", "original", "replacement"})."""
    a, relation, b = caption
    original = caption_words(a, relation, b)
    out = []
    for kind in ("color", "shape", "size", "relation"):
        if kind == "relation":
            if relation is None:
                continue
            options = [("relation", OPPOSITE[relation])]
        else:
            sides = ["a", "b"] if relation else ["a"]
            rng.shuffle(sides)
            values = list(VALUES[kind])
            rng.shuffle(values)
            options = [(side, v) for side in sides for v in values]
        for side, value in options:
            new_a, new_rel, new_b = dict(a), relation, dict(b) if b else None
            if side == "relation":
                new_rel = value
            elif side == "a":
                new_a[kind] = value
            else:
                new_b[kind] = value
            if new_a == a and new_b == b and new_rel == relation or new_a == new_b:
                continue  # unchanged, or "a red circle left of a red circle"
            if caption_possible(scene, new_a, new_rel, new_b):
                continue
            words = caption_words(new_a, new_rel, new_b)
            position = next(k for k, (x, y) in enumerate(zip(original, words)) if x != y)
            change = {
                "kind": kind, "position": position, "original": original[position], "replacement": words[position]
            }
            out.append((" ".join(words), change))
            break
    return out


# ---- VQA -------------------------------------------------------------------------------------

def _ask_attribute(scene: Scene, rng: random.Random, attribute: str) -> tuple[str, str] | None:
    candidates = [(i, d) for i in range(len(scene.objects)) for d in unique_descriptions(scene, i, (attribute,))]
    if not candidates:
        return None
    i, description = rng.choice(candidates)
    return f"what {attribute} is {noun_phrase(description, 'the')}?", getattr(scene.objects[i], attribute)


def _ask_count(scene: Scene, rng: random.Random) -> tuple[str, str]:
    targets = [({}, "objects")]
    targets += [({"color": c}, f"{c} objects") for c in COLORS]
    targets += [({"size": s}, f"{s} objects") for s in SIZES]
    targets += [({"shape": s}, PLURALS[s]) for s in SHAPES]
    description, words = rng.choice(targets)
    count = sum(matches(obj, description) for obj in scene.objects)
    return f"how many {words} are there?", str(count)


def _ask_existence(scene: Scene, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return f"is there {noun_phrase(_random_partial(rng, rng.choice(scene.objects)), 'a')}?", "yes"
    for _ in range(50):
        description = _random_partial(rng)
        if not any(matches(obj, description) for obj in scene.objects):
            return f"is there {noun_phrase(description, 'a')}?", "no"
    return f"is there {noun_phrase(_random_partial(rng, rng.choice(scene.objects)), 'a')}?", "yes"


def _ask_relation(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    triples = true_relations(scene)
    if not triples:
        return None
    i, relation, j = rng.choice(triples)
    subject = noun_phrase(rng.choice(unique_descriptions(scene, i)), "the")
    reference = noun_phrase(rng.choice(unique_descriptions(scene, j)), "the")
    if rng.random() < 0.5:
        return f"is {subject} {relation} {reference}?", "yes"
    return f"is {subject} {OPPOSITE[relation]} {reference}?", "no"  # the opposite is not even weakly true


def make_question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    """(question_type, question, answer) with the answer in ``SHAPES_ANSWERS``; the type is uniform
    over the types the scene allows (a lone object has no relation question)."""
    order = list(QUESTION_TYPES)
    rng.shuffle(order)
    for question_type in order:
        if question_type in ("color", "shape"):
            result = _ask_attribute(scene, rng, question_type)
        elif question_type == "count":
            result = _ask_count(scene, rng)
        elif question_type == "existence":
            result = _ask_existence(scene, rng)
        else:
            result = _ask_relation(scene, rng)
        if result is not None:
            return question_type, *result
    raise AssertionError("count questions are always possible")


# ---- grounding and NLVR2 ---------------------------------------------------------------------

def make_referring_expression(scene: Scene, rng: random.Random) -> tuple[str, int]:
    """("the small red circle", object index): a random attribute subset naming exactly one object."""
    index = rng.randrange(len(scene.objects))
    return noun_phrase(rng.choice(unique_descriptions(scene, index)), "the"), index


def _statement(left: Scene, right: Scene, rng: random.Random) -> tuple[str, bool]:
    template = rng.choice(("left", "right", "both", "one", "neither", "compare"))
    if template == "compare":
        n_left, n_right = len(left.objects), len(right.objects)
        word, truth = rng.choice(
            [("more objects than", n_left > n_right), ("fewer objects than", n_left < n_right),
             ("the same number of objects as", n_left == n_right)]
        )
        return f"the left image has {word} the right image", truth
    source = rng.choice(left.objects + right.objects) if rng.random() < 0.5 else None
    description = _random_partial(rng, source)
    phrase = noun_phrase(description, "a")
    in_left = any(matches(obj, description) for obj in left.objects)
    in_right = any(matches(obj, description) for obj in right.objects)
    if template in ("left", "right"):
        return f"the {template} image contains {phrase}", in_left if template == "left" else in_right
    if template == "both":
        return f"both images contain {phrase}", in_left and in_right
    if template == "one":
        return f"exactly one image contains {phrase}", in_left != in_right
    return f"neither image contains {phrase}", not (in_left or in_right)


def make_statement(left: Scene, right: Scene, rng: random.Random) -> tuple[str, bool]:
    """A statement about an image pair; true and false are equally likely."""
    want = rng.random() < 0.5
    for _ in range(50):
        text, truth = _statement(left, right, rng)
        if truth == want:
            return text, truth
    return text, truth


__all__ = [
    "QUESTION_TYPES",
    "RELATIONS",
    "SHAPES_ANSWERS",
    "caption_possible",
    "caption_words",
    "make_captions",
    "make_hard_negatives",
    "make_question",
    "make_referring_expression",
    "make_statement",
    "noun_phrase",
    "unique_descriptions",
]
