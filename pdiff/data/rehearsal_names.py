"""Class names and WordNet-style ids of the rehearsal world (:mod:`pdiff.data.rehearsal`).

ImageNet's 1,000 names are open_clip's (``IMAGENET_CLASSNAMES``, CLIP's cleaned names), shared by
its four variants. The real wnids are not available offline, so the ids are synthetic but
well-formed (``n`` + 8 digits), increasing in label order as the real ones are, and the same for
ImageNet and its variants. ImageNet-A and -R keep 200 classes each, a fixed choice: every fifth
class from label 0 (A) and from label 2 (R); the real 200-class subsets' wnid lists are not
available offline either.

The other datasets' names are composed from the short word lists below (written for this module,
not taken from any dataset) with the shape, token length and spelling conventions of the real
ones: "2009 Honda Meridian Crew Cab" for Stanford Cars, "737-800"-like codes for FGVC Aircraft,
underscores in Food-101, UCF101 and Oxford Pets, "outdoor bus_station" in SUN397. Only EuroSAT's
10 class folders are the real ones (plain category words). Names do not depend on the world's
seed: only the images do.
"""

from __future__ import annotations

import itertools
import random
import re

import open_clip

#: Fixed seed of the name draws (names are part of the layout, not of the images).
NAMES_SEED = 2410

IMAGENET_A_OFFSET, IMAGENET_R_OFFSET, SUBSET_STEP = 0, 2, 5

EUROSAT_FOLDERS = [
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
    "PermanentCrop", "Residential", "River", "SeaLake",
]

_CAR_MAKES = ["Acura", "Audi", "BMW", "Buick", "Chevrolet", "Dodge", "Ford", "Honda", "Hyundai",
              "Nissan", "Toyota", "Volvo"]
_CAR_MODELS = ["Arcadia", "Brava", "Corvan", "Kestrel", "Meridian", "Solano", "Tempest", "Vantor",
               "K5", "S4", "X3", "GT"]
_CAR_BODIES = ["Sedan", "Coupe", "Convertible", "Hatchback", "SUV", "Wagon", "Minivan", "Crew Cab",
               "Extended Cab", "Regular Cab", "Cargo Van", "Hatchback Coupe"]
_PLANE_PREFIXES = ["ATR", "BAE", "CRJ", "DC", "DHC", "ERJ", "Il", "MD", "Tu", "Yak"]
_PLANE_WORDS = ["Cessna", "Dornier", "Embraer", "Falcon", "Fokker", "Global", "Hawk", "Saab"]
_PET_ORIGINS = ["alpine", "american", "baltic", "bengal", "british", "english", "german",
                "highland", "japanese", "nordic", "russian", "scottish", "siberian", "welsh"]
_CAT_KINDS = ["bobtail", "curl", "longhair", "mau", "rex", "shorthair"]
_DOG_KINDS = ["bulldog", "collie", "hound", "pinscher", "pug", "retriever", "setter", "shepherd",
              "spaniel", "terrier"]
_FLOWER_ADJS = ["alpine", "desert", "giant", "globe", "pink", "purple", "spear", "sword", "tiger",
                "white", "wild", "yellow"]
_FLOWER_PREFIXES = ["hard-leaved", "bearded", "spotted", "common"]
_FLOWERS = ["aster", "bellflower", "crocus", "daisy", "iris", "lily", "mallow", "orchid", "poppy",
            "primrose", "rose", "thistle"]
_FOOD_FIRST = ["apple", "beef", "cheese", "chicken", "chocolate", "crab", "egg", "garlic",
               "lobster", "pork", "shrimp", "tuna"]
_FOOD_SECOND = ["bread", "cake", "curry", "dumplings", "pie", "risotto", "roll", "salad", "soup",
                "tacos", "tartare", "waffles"]
_PLACE_MODIFIERS = ["art", "boat", "bus", "car", "church", "coffee", "dining", "fire", "ice",
                    "music", "office", "parking", "shoe", "train", "water", "wine"]
_PLACES = ["bridge", "cabin", "deck", "field", "gallery", "garage", "hall", "house", "lot",
           "market", "room", "shop", "station", "store", "tower", "yard"]
_ACTION_VERBS = ["Apply", "Blow", "Brush", "Climb", "Jump", "Play", "Pull", "Push", "Ride",
                 "Swing", "Throw", "Walk"]
_ACTION_OBJECTS = ["Ball", "Bike", "Boat", "Cart", "Dog", "Drums", "Eye_Makeup", "Guitar",
                   "Horse", "Hula_Hoop", "Rope", "Teeth"]
# Syllables of pseudo-words: one-word names (DTD's textures, Caltech's objects) whose BPE token
# counts (2-3) are those of rarer real words.
_ONSETS = ["b", "cr", "fl", "gr", "l", "m", "p", "sc", "st", "sw", "tw", "w"]
_NUCLEI = ["a", "ai", "e", "ea", "i", "o", "u"]
_TEXTURE_CODAS = ["bbled", "ck", "lled", "mped", "ndy", "rled", "shy", "ted", "ved", "zzy"]
_OBJECT_CODAS = ["ck", "ll", "mp", "nd", "ndle", "nk", "r", "ss", "t", "x"]


def imagenet_classnames() -> list[str]:
    """ImageNet's 1,000 class names in label order (open_clip's copy of CLIP's names)."""
    return list(open_clip.IMAGENET_CLASSNAMES)


def imagenet_wnids() -> list[str]:
    """Synthetic, increasing ``n`` + 8-digit ids, one per ImageNet label."""
    rng = random.Random(NAMES_SEED)
    wnids, number = [], 1_000_000
    for _ in range(1000):
        number += rng.randint(1, 28_000)
        wnids.append(f"n{number:08d}")
    return wnids


def imagenet_subset(offset: int) -> list[int]:
    """The 200 ImageNet labels kept by ImageNet-A (offset 0) or -R (offset 2)."""
    return list(range(offset, 1000, SUBSET_STEP))


def _draw(candidates: list[str], n: int, salt: str) -> list[str]:
    """``n`` distinct candidates, a fixed draw per dataset (``salt``), sorted as CoOp's labels."""
    unique = sorted(set(candidates))
    if len(unique) < n:  # pragma: no cover - the word lists are sized for the real counts
        raise ValueError(f"{salt}: {len(unique)} candidate names for {n} classes")
    return sorted(random.Random(f"{NAMES_SEED}-{salt}").sample(unique, n))


def _product(fmt: str, *lists: list[str]) -> list[str]:
    return [fmt.format(*words) for words in itertools.product(*lists)]


def car_names() -> list[str]:
    years = [str(y) for y in range(1991, 2013)]
    return _draw(_product("{} {} {} {}", years, _CAR_MAKES, _CAR_MODELS, _CAR_BODIES), 196,
                 "cars")


def aircraft_names() -> list[str]:
    digits, nonzero = [str(d) for d in range(10)], [str(d) for d in range(1, 10)]
    codes = _product("7{}7-{}00", digits, nonzero)  # 737-800
    codes += _product("A3{}{}", digits, digits)  # A321
    codes += _product("{}-{}0", _PLANE_PREFIXES, nonzero)  # MD-80
    codes += _product("{} {}00", _PLANE_WORDS, [str(d) for d in range(1, 30)])  # Falcon 2000
    return _draw(codes, 100, "aircraft")


def pet_names() -> tuple[list[str], set[str]]:
    """37 breeds as CoOp stores them (lower case, underscores) and the 12 cats among them,
    whose file names are capitalised in the real dataset."""
    cats = _draw(_product("{}_{}", _PET_ORIGINS, _CAT_KINDS), 12, "cats")
    dogs = _draw(_product("{}_{}", _PET_ORIGINS, _DOG_KINDS), 25, "dogs")
    return sorted(cats + dogs), set(cats)


def flower_names() -> list[str]:
    plain = _product("{} {}", _FLOWER_ADJS, _FLOWERS)
    longer = _product("{} {} {}", _FLOWER_PREFIXES, _FLOWER_ADJS[:4], _FLOWERS[:6])
    return sorted(_draw(plain, 86, "flowers") + _draw(longer, 16, "flowers+"))


def food_names() -> list[str]:
    return _draw(_product("{}_{}", _FOOD_FIRST, _FOOD_SECOND), 101, "food")


def sun_names() -> list[str]:
    """397 scene names as CoOp stores them: "abbey", "outdoor apartment_building"."""
    bases = _PLACES + _product("{}_{}", _PLACE_MODIFIERS, _PLACES)
    return _draw(bases + _product("{} {}", ["indoor", "outdoor"], bases), 397, "sun")


def sun_folder(name: str) -> str:
    """SUN397's folder of a class: ``b/bus_station/outdoor`` for "outdoor bus_station"."""
    qualifier, _, base = name.rpartition(" ")
    return f"{base[0]}/{base}" + (f"/{qualifier}" if qualifier else "")


def _pseudo_words(codas: list[str], n: int, salt: str) -> list[str]:
    return _draw(_product("{}{}{}", _ONSETS, _NUCLEI, codas), n, salt)


def dtd_names() -> list[str]:
    return _pseudo_words(_TEXTURE_CODAS, 47, "dtd")


def caltech_names() -> list[str]:
    """100 objects: one-word names and a few two-word ones joined by "_" (like "yin_yang")."""
    single = _pseudo_words(_OBJECT_CODAS, 88, "caltech")
    double = _product("{}_{}", _pseudo_words(_OBJECT_CODAS, 4, "caltech-a"),
                      _pseudo_words(_TEXTURE_CODAS, 4, "caltech-b"))
    return sorted(single + _draw(double, 12, "caltech-pairs"))


def ucf_names() -> list[str]:
    return _draw(_product("{}_{}", _ACTION_VERBS, _ACTION_OBJECTS), 101, "ucf")


def eurosat_names() -> list[str]:
    """EuroSAT's folder names split into words ("SeaLake" -> "Sea Lake")."""
    return [re.sub(r"(?<=[a-z])(?=[A-Z])", " ", f) for f in EUROSAT_FOLDERS]


def benchmark_classnames() -> dict[str, list[str]]:
    """Every benchmark dataset's class names in the rehearsal world, in label order: ImageNet's
    real ones (ImageNet-A and -R: the fixed 200-class choices), the others generated."""
    imagenet = imagenet_classnames()
    subset = {name: [imagenet[i] for i in imagenet_subset(offset)]
              for name, offset in (("ImageNetA", IMAGENET_A_OFFSET),
                                   ("ImageNetR", IMAGENET_R_OFFSET))}
    return {
        "ImageNet": imagenet, "ImageNetV2": imagenet, "ImageNetSketch": imagenet, **subset,
        "Caltech101": caltech_names(), "OxfordPets": pet_names()[0],
        "StanfordCars": car_names(), "OxfordFlowers": flower_names(),
        "Food101": food_names(), "FGVCAircraft": aircraft_names(), "SUN397": sun_names(),
        "DescribableTextures": dtd_names(), "EuroSAT": eurosat_names(), "UCF101": ucf_names(),
    }
