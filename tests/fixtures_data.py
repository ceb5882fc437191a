"""Small data sets the tests generate in the layouts of the real data in ../shared/data, and where that real data is.

A fresh clone has no ../shared/data, so every code path that reads it also runs on one of these generated copies: an
imagenet-sample-wordnet folder (Pillow-drawn photos + WordNet-style metadata.json), a Wikipedia raw_features folder
(raw_features.mat written by scipy + the .list files) and the scikit-learn sample photos in the imagenet-sample layout.
The tests on the real data stay as extra coverage and skip, saying so, where it is absent.
`DSCMR_TEST_SHARED_DATA=/nonexistent pytest` runs the suite as a fresh clone would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DSCMR_TEST_SHARED_DATA", REPO.parent / "shared" / "data"))
IMAGENET_SAMPLE = SHARED_DATA / "imagenet-sample-wordnet"
WIKI_FEATURES = SHARED_DATA / "wiki-rasiwasia-features" / "raw_features"


_ABSENT = "real data absent: {} (../shared/data is not in a clone; the generated twin of this test runs)"
# Marks for the tests on the real data (also as `pytest.param("real", marks=...)`): a skip names the test, not this file.
needs_real_imagenet = pytest.mark.skipif(
    not (IMAGENET_SAMPLE / "metadata.json").is_file(), reason=_ABSENT.format(IMAGENET_SAMPLE)
)
needs_real_wiki = pytest.mark.skipif(not (WIKI_FEATURES / "raw_features.mat").is_file(), reason=_ABSENT.format(WIKI_FEATURES))


# ------------------------------------------------------------------------------------------ imagenet-sample-wordnet
@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset as imagenet-sample-wordnet's metadata.json describes it."""

    wnid: str
    words: tuple[str, ...]
    gloss: str
    hypernym: str


# Four synsets for each of 12 of the real data's 22 coarse classes, with paraphrased WordNet glosses. Like the real
# glosses they carry Latin names GloVe 6B lacks (struthio, burchelli, amphibius, ananassa, comosus).
SYNSETS: dict[str, list[Synset]] = {
    "fish": [
        Synset(
            "n01440764",
            ("tench", "Tinca tinca"),
            "freshwater dace-like game fish of Europe and western Asia noted for surviving out of water",
            "cyprinid",
        ),
        Synset(
            "n01443537",
            ("goldfish", "Carassius auratus"),
            "small golden or orange-red freshwater fish of eastern Asia kept in ponds and aquariums",
            "cyprinid",
        ),
        Synset(
            "n01484850",
            ("great white shark", "Carcharodon carcharias"),
            "large aggressive shark of warm seas that attacks swimmers",
            "mackerel shark",
        ),
        Synset(
            "n01491361",
            ("tiger shark", "Galeocerdo cuvieri"),
            "large dangerous shark with a striped body found in warm coastal waters",
            "requiem shark",
        ),
    ],
    "bird": [
        Synset("n01514668", ("cock",), "adult male chicken with a red comb that crows at dawn", "chicken"),
        Synset("n01518878", ("ostrich", "Struthio camelus"), "fast flightless bird of Africa, the largest living bird", "ratite"),
        Synset(
            "n01531178",
            ("goldfinch", "Carduelis carduelis"),
            "small European finch with a crimson face and yellow wing patches",
            "finch",
        ),
        Synset(
            "n01608432", ("kite",), "small hawk with long narrow wings and a forked tail that glides over open country", "hawk"
        ),
    ],
    "dog": [
        Synset("n02099601", ("golden retriever",), "an English breed of retriever with a thick golden coat", "retriever"),
        Synset("n02088364", ("beagle",), "a small short-legged smooth-coated hound used for hunting hares", "hound"),
        Synset(
            "n02110958", ("pug", "pug-dog"), "a small compact smooth-coated dog of Asiatic origin with a wrinkled face", "toy dog"
        ),
        Synset("n02109961", ("Eskimo dog", "husky"), "a breed of heavy-coated Arctic sled dog", "working dog"),
    ],
    "feline": [
        Synset("n02123045", ("tabby", "tabby cat"), "a cat with a grey or tawny coat marked with dark stripes", "domestic cat"),
        Synset("n02129604", ("tiger", "Panthera tigris"), "large Asian wild cat with a tawny coat and black stripes", "big cat"),
        Synset(
            "n02129165",
            ("lion", "Panthera leo"),
            "large gregarious predatory cat of Africa and India with a tawny coat",
            "big cat",
        ),
        Synset(
            "n02128925",
            ("jaguar", "Panthera onca"),
            "large spotted wild cat of the rainforests of Central and South America",
            "big cat",
        ),
    ],
    "mammal_other": [
        Synset(
            "n02391049",
            ("zebra", "Equus burchelli"),
            "African wild horse with black and white stripes over its whole body",
            "equine",
        ),
        Synset(
            "n02504458",
            ("African elephant", "Loxodonta africana"),
            "very large elephant of Africa with enormous flapping ears",
            "elephant",
        ),
        Synset(
            "n02398521",
            ("hippopotamus", "Hippopotamus amphibius"),
            "massive thick-skinned herbivore living in and near African rivers",
            "even-toed ungulate",
        ),
        Synset(
            "n02364673", ("guinea pig", "Cavia cobaya"), "stout-bodied nearly tailless domesticated cavy kept as a pet", "cavy"
        ),
    ],
    "insect": [
        Synset(
            "n02165456", ("ladybug", "ladybird beetle"), "small round red beetle with black spots that feeds on aphids", "beetle"
        ),
        Synset(
            "n02206856", ("bee",), "four-winged insect that collects pollen and nectar and makes honey", "hymenopterous insect"
        ),
        Synset(
            "n02219486",
            ("ant", "emmet", "pismire"),
            "social insect living in organised colonies with workers and a queen",
            "hymenopterous insect",
        ),
        Synset(
            "n02279972",
            ("monarch butterfly", "Danaus plexippus"),
            "large orange and black migratory butterfly of North America",
            "butterfly",
        ),
    ],
    "vehicle": [
        Synset(
            "n03345487",
            ("fire engine", "fire truck"),
            "a red truck that carries firefighters, ladders and hoses to a fire",
            "truck",
        ),
        Synset("n04146614", ("school bus",), "a yellow bus that carries children to and from school", "bus"),
        Synset(
            "n04465501", ("tractor",), "a powerful slow farm vehicle that pulls ploughs and trailers", "self-propelled vehicle"
        ),
        Synset(
            "n03792782",
            ("mountain bike", "all-terrain bike"),
            "a bicycle with sturdy frame and thick tyres for riding off roads",
            "bicycle",
        ),
    ],
    "musical_instrument": [
        Synset("n02676566", ("acoustic guitar",), "a guitar with a hollow wooden body that is not amplified", "guitar"),
        Synset(
            "n04536866",
            ("violin", "fiddle"),
            "bowed stringed instrument held under the chin, the highest of its family",
            "bowed instrument",
        ),
        Synset("n03452741", ("grand piano", "grand"), "a piano with the strings on a horizontal harp-shaped frame", "piano"),
        Synset("n03838899", ("oboe", "hautboy"), "a slender double-reed woodwind instrument with a penetrating tone", "woodwind"),
    ],
    "food": [
        Synset("n07873807", ("pizza", "pizza pie"), "flat bread baked with a topping of tomato sauce and cheese", "dish"),
        Synset("n07753592", ("banana",), "elongated crescent-shaped yellow fruit with soft sweet flesh", "edible fruit"),
        Synset(
            "n07745940",
            ("strawberry", "Fragaria ananassa"),
            "sweet fleshy red fruit of a low plant, eaten fresh or in jam",
            "berry",
        ),
        Synset(
            "n07753275",
            ("pineapple", "Ananas comosus"),
            "large sweet fleshy tropical fruit with a tuft of stiff leaves",
            "edible fruit",
        ),
    ],
    "furniture": [
        Synset(
            "n04099969", ("rocking chair", "rocker"), "a chair mounted on curved runners so that it rocks back and forth", "chair"
        ),
        Synset("n03388549", ("four-poster",), "a bed with a tall post at each corner that may support a canopy", "bed"),
        Synset("n04550184", ("wardrobe", "closet", "press"), "a tall upright cabinet in which clothes are hung", "cabinet"),
        Synset("n03201208", ("dining table", "board"), "a table at which meals are served", "table"),
    ],
    "structure": [
        Synset("n03877845", ("palace",), "a large and stately residence of a ruler or archbishop", "residence"),
        Synset("n04366367", ("suspension bridge",), "a bridge whose deck hangs from cables slung between towers", "bridge"),
        Synset(
            "n02814860",
            ("beacon", "lighthouse", "pharos"),
            "a tower with a bright light that warns or guides ships at sea",
            "tower",
        ),
        Synset(
            "n03028079",
            ("church", "church building"),
            "a place of Christian worship with a nave and often a steeple",
            "place of worship",
        ),
    ],
    "clothing": [
        Synset("n02963159", ("cardigan",), "knitted jacket fastened up the front with buttons or a zipper", "sweater"),
        Synset("n03594734", ("jean", "blue jean", "denim"), "work trousers of hard-wearing blue cotton", "trousers"),
        Synset("n04259630", ("sombrero",), "a felt or straw hat with a very wide brim, worn in Mexico", "hat"),
        Synset("n03045698", ("cloak",), "a loose outer garment without sleeves that hangs from the shoulders", "overgarment"),
    ],
}
COARSE_CLASSES = list(SYNSETS)
# Coarse groups an item also belongs to (the real data's coarse_multilabels are hierarchical in the same way).
ALSO = {"dog": ["mammal_other"], "feline": ["mammal_other"]}
# (background, foreground, second colour) per class: each class looks alike and unlike the others.
PALETTE = [
    ((30, 60, 140), (240, 150, 40), (250, 250, 250)),
    ((150, 200, 240), (200, 30, 30), (40, 40, 40)),
    ((70, 130, 40), (200, 160, 90), (90, 60, 30)),
    ((230, 200, 120), (200, 110, 20), (20, 20, 20)),
    ((120, 110, 100), (230, 230, 230), (10, 10, 10)),
    ((40, 150, 60), (220, 20, 30), (0, 0, 0)),
    ((200, 200, 210), (230, 40, 20), (250, 210, 0)),
    ((90, 50, 30), (210, 170, 110), (250, 240, 220)),
    ((250, 240, 200), (230, 190, 40), (180, 40, 40)),
    ((170, 120, 80), (110, 60, 30), (240, 230, 200)),
    ((120, 170, 230), (220, 220, 210), (80, 80, 90)),
    ((60, 60, 120), (30, 90, 200), (200, 60, 160)),
]


def synthetic_photo(class_index: int, variant: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A noisy picture whose colours and motif name its class; `variant` moves and scales the motif."""
    background, foreground, second = PALETTE[class_index % len(PALETTE)]
    rng = np.random.default_rng(1000 * class_index + variant)
    w, h = size
    ramp = np.linspace(0.7, 1.15, h)[:, None, None] * np.array(background)[None, None, :]
    canvas = Image.fromarray(np.clip(np.broadcast_to(ramp, (h, w, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    cx, cy = w * (0.35 + 0.3 * rng.random()), h * (0.35 + 0.3 * rng.random())
    r = min(w, h) * (0.22 + 0.12 * rng.random())
    box = (cx - r, cy - r, cx + r, cy + r)
    motif = class_index % 6
    if motif == 0:
        draw.ellipse(box, fill=foreground, outline=second, width=max(1, int(r / 6)))
    elif motif == 1:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=foreground)
        draw.ellipse((cx - r / 3, cy, cx + r / 3, cy + r * 2 / 3), fill=second)
    elif motif == 2:
        for k in range(6):
            draw.rectangle((box[0], box[1] + k * r / 3, box[2], box[1] + k * r / 3 + r / 6), fill=foreground if k % 2 else second)
    elif motif == 3:
        draw.rectangle(box, fill=foreground)
        draw.line((box[0], box[1], box[2], box[3]), fill=second, width=max(1, int(r / 5)))
    elif motif == 4:
        for k in range(4):
            inset = k * r / 4
            draw.ellipse(
                (box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset), fill=foreground if k % 2 == 0 else second
            )
    else:
        step = max(2, int(r / 3))
        for i, x in enumerate(range(int(box[0]), int(box[2]), step)):
            for j, y in enumerate(range(int(box[1]), int(box[3]), step)):
                draw.rectangle((x, y, x + step - 1, y + step - 1), fill=foreground if (i + j) % 2 else second)
    if class_index >= 6:  # the second six classes repeat the motifs; a frame keeps them apart from the first six
        draw.rectangle((0, 0, w - 1, h - 1), outline=second, width=max(2, min(w, h) // 12))
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0.0, 6.0, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_imagenet_sample(
    root: Path, per_class: int = 4, image_size: tuple[int, int] = (160, 120), grayscale_every: int = 0, large: int = 0
) -> Path:
    """An imagenet-sample-wordnet folder (images/<wnid>_<name>.JPEG + metadata.json in the real format) under `root`.

    Items come class by class, `per_class` each (ids beyond a class's four synsets get a numbered wnid and text).
    Every `grayscale_every`-th photo is saved as a one-channel JPEG (the real sample has 23); the first `large` photos
    are 1280x960 so that draft-mode JPEG decoding has something to reduce.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for c, coarse in enumerate(COARSE_CLASSES):
        for k in range(per_class):
            base = SYNSETS[coarse][k % len(SYNSETS[coarse])]
            wnid = base.wnid if k < len(SYNSETS[coarse]) else f"n9{c:03d}{k:04d}"
            words = list(base.words) if k < len(SYNSETS[coarse]) else [f"{base.words[0]} number {k}"]
            name = words[0].replace(" ", "_")
            file = f"images/{wnid}_{name}.JPEG"
            n = len(items)
            photo = synthetic_photo(c, k, (1280, 960) if n < large else image_size)
            if grayscale_every and n % grayscale_every == grayscale_every - 1:
                photo = photo.convert("L")
            photo.save(root / file, "JPEG", quality=90)
            items.append(
                {
                    "file": file,
                    "imagenet_index": n,
                    "wnid": wnid,
                    "synset_words": words,
                    "gloss": base.gloss,
                    "gloss_examples": [],
                    "direct_hypernyms": [base.hypernym],
                    "coarse_label": coarse,
                    "coarse_label_id": c,
                    "coarse_multilabels": [coarse, *ALSO.get(coarse, [])],
                }
            )
    meta = {
        "coarse_classes": COARSE_CLASSES,
        "coarse_definition": "generated for the tests: 12 of the real sample's coarse groups, 4 WordNet synsets each",
        "items": items,
    }
    (root / "metadata.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    (root / "coarse_classes.txt").write_text("\n".join(COARSE_CLASSES) + "\n", encoding="utf-8")
    return root


# ILSVRC-2012 indices (sorted-wnid order) of what the scikit-learn sample photos show.
SKLEARN_PHOTOS = {"china.jpg": ("n03877845", "palace", 698), "flower.jpg": ("n11939491", "daisy", 985)}


def write_sklearn_photos_sample(root: Path) -> Path:
    """The two real photos scikit-learn ships (the Summer Palace, a daisy) as an imagenet-sample-wordnet folder."""
    from sklearn.datasets import load_sample_image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for photo, (wnid, name, index) in SKLEARN_PHOTOS.items():
        file = f"images/{wnid}_{name}.JPEG"
        Image.fromarray(load_sample_image(photo)).save(root / file, "JPEG", quality=95)
        items.append(
            {
                "file": file,
                "imagenet_index": index,
                "wnid": wnid,
                "synset_words": [name],
                "gloss": name,
                "gloss_examples": [],
                "direct_hypernyms": [],
                "coarse_label": "misc",
                "coarse_label_id": 0,
                "coarse_multilabels": ["misc"],
            }
        )
    (root / "metadata.json").write_text(json.dumps({"coarse_classes": ["misc"], "items": items}), encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------- wiki-rasiwasia-features
WIKI_CATEGORIES = ["art", "biology", "geography", "history", "literature", "media", "music", "royalty", "sport", "warfare"]


@dataclass
class WikiFeaturesFixture:
    """A generated raw_features folder and the arrays written into it."""

    root: Path
    image: dict[str, np.ndarray]  # "tr" / "te" -> (n, 128) float64
    text: dict[str, np.ndarray]  # "tr" / "te" -> (n, 10) float64
    classes: dict[str, np.ndarray]  # "tr" / "te" -> (n,) category numbers 1..10, as in the .list files
    ids: dict[str, list[str]]  # "tr" / "te" -> "<txt_id>|<img_id>" in row order


def write_wiki_features(
    root: Path,
    train_per_class: tuple[int, ...] = (14, 27, 24, 25, 20, 18, 19, 14, 21, 35),
    test_per_class: tuple[int, ...] = (3, 9, 10, 9, 7, 6, 5, 4, 7, 10),
    seed: int = 0,
) -> WikiFeaturesFixture:
    """A Wikipedia raw_features folder in the real layout: raw_features.mat (I_tr, I_te: 128-bin SIFT bag of visual
    words; T_tr, T_te: 10-topic LDA proportions; float64 rows summing to 1), trainset_/testset_txt_img_cat.list
    ("<txt_id>\\t<img_id>\\t<category 1..10>", row order = matrix rows) and categories.list. Default sizes are a tenth of
    the real per-class counts, the classes shuffled in row order as in the real lists."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = WikiFeaturesFixture(root, {}, {}, {}, {})
    lists = {"tr": "trainset_txt_img_cat.list", "te": "testset_txt_img_cat.list"}
    for part, per_class in (("tr", train_per_class), ("te", test_per_class)):
        classes = rng.permutation(np.repeat(np.arange(1, 11), per_class))
        image = rng.dirichlet(np.ones(128), len(classes))
        image[np.arange(len(classes)), (classes - 1) * 12] += 0.5  # a class signal, so the features are learnable
        text = rng.dirichlet(np.full(10, 0.3), len(classes))
        text[np.arange(len(classes)), classes - 1] += 1.0
        out.image[part] = image / image.sum(1, keepdims=True)
        out.text[part] = text / text.sum(1, keepdims=True)
        out.classes[part] = classes
        # Real ids: "<32 hex>-<section>" for the text, 32 hex for the image.
        rows = [(f"{rng.bytes(16).hex()}-{rng.integers(1, 20)}", rng.bytes(16).hex(), int(c)) for c in classes]
        out.ids[part] = [f"{t}|{i}" for t, i, _ in rows]
        (root / lists[part]).write_text("".join(f"{t}\t{i}\t{c}\n" for t, i, c in rows), encoding="utf-8")
    savemat(
        root / "raw_features.mat",
        {"I_tr": out.image["tr"], "I_te": out.image["te"], "T_tr": out.text["tr"], "T_te": out.text["te"]},
    )
    (root / "categories.list").write_text("\n".join(WIKI_CATEGORIES) + "\n", encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------ a topic text corpus
def topic_corpus(
    n: int,
    classes: int = 10,
    seed: int = 0,
    noise: float = 1.0,
    img_dim: int = 256,
    vocab: int = 3000,
    topic_share: float = 0.2,
    short_share: float = 0.05,
):
    """(texts, labels 0..classes-1, image features n x img_dim float32): n pairs in `classes` classes, item i in class
    i % classes. Each text draws its words from a Zipf-distributed common vocabulary (w0, w1, ...) and, with probability
    `topic_share` per word, from its class's 60 topic words (c3t17, ...); a `short_share` of the texts are 1-3 words long,
    the rest 8-39. Each image feature is its class's random prototype plus Gaussian noise of scale `noise`. On this corpus
    a sentence CNN trained with DSCMR loses feature maps for good (bench/sentence_cnn_maps.py)."""
    rng = np.random.default_rng(seed)
    common = [f"w{i}" for i in range(vocab)]
    zipf = 1 / np.arange(1, vocab + 1)
    zipf /= zipf.sum()
    topics = [[f"c{c}t{j}" for j in range(60)] for c in range(classes)]
    prototypes = rng.standard_normal((classes, img_dim))
    texts, labels, images = [], [], []
    for i in range(n):
        c = i % classes
        length = int(rng.integers(1, 4) if rng.random() < short_share else rng.integers(8, 40))
        words = [
            topics[c][rng.integers(60)] if rng.random() < topic_share else common[rng.choice(vocab, p=zipf)]
            for _ in range(length)
        ]
        texts.append(" ".join(words))
        labels.append(c)
        images.append(prototypes[c] + noise * rng.standard_normal(img_dim))
    return texts, np.asarray(labels), np.asarray(images, dtype=np.float32)


# ------------------------------------------------------------------------------------- caption manifest (BYO corpus)
def write_caption_manifest(
    root: Path,
    per_class: int = 4,
    *,
    labels: str = "none",
    fmt: str = "jsonl",
    image_size: tuple[int, int] = (64, 48),
    classes: int | None = None,
) -> Path:
    """A bring-your-own manifest of Pillow-drawn photos with WordNet-style captions under `root`; returns the manifest path.

    Items come class by class (the coarse classes of SYNSETS, `classes` of them), `per_class` each; every caption is
    distinct. `labels`: "none" (no labels column), "empty" (the column is there and empty), "all" (each item's coarse
    class) or "mixed" (every second item labelled). `fmt`: "jsonl" or "csv".
    """
    import csv

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for c, coarse in enumerate(COARSE_CLASSES[: classes or len(COARSE_CLASSES)]):
        for k in range(per_class):
            base = SYNSETS[coarse][k % len(SYNSETS[coarse])]
            text = f"{base.words[0]}: {base.gloss}" + (f" (photo {k})" if k >= len(SYNSETS[coarse]) else "")
            file = f"images/{coarse}_{k}.png"
            synthetic_photo(c, k, image_size).save(root / file)
            row = {"image": file, "text": text}
            if labels == "empty":
                row["labels"] = [] if fmt == "jsonl" else ""
            elif labels == "all" or (labels == "mixed" and len(rows) % 2 == 0):
                row["labels"] = [coarse] if fmt == "jsonl" else coarse
            elif labels == "mixed":
                row["labels"] = [] if fmt == "jsonl" else ""
            rows.append(row)
    if fmt == "jsonl":
        path = root / "manifest.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path = root / "manifest.csv"
        columns = ["image", "text"] + (["labels"] if labels != "none" else [])
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return path
