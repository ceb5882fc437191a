"""Pascal Sentence (UIUC, 1000 images x 5 sentences, 20 classes): combined or UIUC's dataset/ + sentence/ layout."""

from __future__ import annotations

from pathlib import Path

from model.corpus import Corpus, Item
from training.datasets.files import IMAGE_SUFFIXES, image_problem, read_text
from training.datasets.report import LoadReport
from training.datasets.splits import stratified_split

SENTENCES_PER_IMAGE = 5
# The common protocol (e.g. DSCMR): 40 train / 5 val / 5 test images per class, i.e. 800/100/100.
PER_CLASS_SPLIT = {"val": 5, "test": 5}


def load_pascal_sentence(
    root: Path, *, seed: int = 0, verify_images: bool = True, per_class: dict[str, int] | None = None
) -> tuple[Corpus, LoadReport]:
    """Load Pascal Sentence from `root` (either root/<class>/{x.jpg,x.txt} or root/dataset/<class>/x.jpg + root/sentence/<class>/x.txt).

    Text = the image's sentences joined; label = the class folder; split = seeded 5 val / 5 test per class, the rest train.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Pascal Sentence folder {root} does not exist")
    if (root / "dataset").is_dir() and (root / "sentence").is_dir():
        image_root, sentence_root = root / "dataset", root / "sentence"
    else:
        image_root = sentence_root = root
    report = LoadReport(dataset="pascal-sentence")
    images, sentences = _scan(image_root, IMAGE_SUFFIXES), _scan(sentence_root, (".txt",))
    classes = sorted({cls for cls, _ in images} | {cls for cls, _ in sentences})
    if not classes:
        raise FileNotFoundError(
            f"no class folders with images in {root}; expected <class>/<image>.jpg (+ <image>.txt) or "
            f"dataset/<class>/<image>.jpg + sentence/<class>/<image>.txt"
        )
    items: list[Item] = []
    for key in sorted(set(images) | set(sentences)):
        cls, stem = key
        item_id = f"{cls}/{stem}"
        image_path, sentence_path = images.get(key), sentences.get(key)
        if image_path is None:
            report.skip("missing image", item_id, f"{sentence_path} has no image next to it")
            continue
        if sentence_path is None:
            report.skip("missing text", item_id, f"no sentence file {stem}.txt for {image_path}")
            continue
        if any(p.stem != p.stem.strip() or p.parent.name != cls for p in (image_path, sentence_path)):
            report.note(
                "stray whitespace in name", item_id, f"{image_path.relative_to(root)} / {sentence_path.relative_to(root)}"
            )
        if verify_images and (problem := image_problem(image_path)):
            report.skip("corrupt image", item_id, f"{image_path}: {problem}")
            continue
        lines = [" ".join(line.split()) for line in read_text(sentence_path, report, item_id).splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            report.skip("empty text", item_id, str(sentence_path))
            continue
        if len(lines) != SENTENCES_PER_IMAGE:
            report.note(f"not {SENTENCES_PER_IMAGE} sentences", item_id, f"{len(lines)} in {sentence_path}")
        items.append(
            Item(
                id=item_id, image_path=str(image_path.resolve()), text=" ".join(lines), labels=(cls,), extra={"sentences": lines}
            )
        )
    corpus = Corpus(items=items, label_names=classes, name="pascal-sentence")
    corpus.splits = stratified_split(items, classes, seed=seed, per_class=per_class or PER_CLASS_SPLIT)
    return corpus, report.finish(len(items))


def _scan(directory: Path, suffixes: tuple[str, ...]) -> dict[tuple[str, str], Path]:
    # Class folder and stem are stripped of stray whitespace so that image and sentence files still pair up.
    found: dict[tuple[str, str], Path] = {}
    for class_dir in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
                found.setdefault((class_dir.name.strip(), path.stem.strip()), path)
    return found
