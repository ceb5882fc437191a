"""The Wikipedia cross-modal benchmark (Rasiwasia et al., ACM MM 2010) in the layout of UCSD SVCL's wikipedia_dataset.tgz."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from tqdm import tqdm

from model.corpus import Corpus, Item
from training.datasets.files import identical_files, image_problem, index_files, read_text, stray_whitespace
from training.datasets.report import LoadReport
from training.datasets.splits import carve_validation

CATEGORIES_FILE = "categories.list"
LIST_FILES = {"train": "trainset_txt_img_cat.list", "test": "testset_txt_img_cat.list"}
_TAG = re.compile(r"<[^>]*>")
_TEXT_ELEMENT = re.compile(r"<text\b[^>]*>(.*?)(?:</text\s*>|\Z)", re.DOTALL | re.IGNORECASE)


def find_wikipedia_root(root: Path) -> Path:
    """`root` or its wikipedia_dataset/ subfolder, whichever holds categories.list."""
    for candidate in (root, root / "wikipedia_dataset"):
        if (candidate / CATEGORIES_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"{root} is not the Wikipedia dataset: no {CATEGORIES_FILE} in it or in {root / 'wikipedia_dataset'}. "
        f"Extract wikipedia_dataset.tgz (training.datasets.download.download_wikipedia) and pass its folder"
    )


def load_wikipedia(
    root: Path, *, val_fraction: float = 0.1, seed: int = 0, verify_images: bool = True
) -> tuple[Corpus, LoadReport]:
    """Load the raw Wikipedia benchmark: official train/test lists, val carved from train (stratified, seeded)."""
    root = find_wikipedia_root(Path(root))
    report = LoadReport(dataset="wikipedia")
    categories = [
        line.strip() for line in read_text(root / CATEGORIES_FILE, report, CATEGORIES_FILE).splitlines() if line.strip()
    ]
    if not categories:
        raise ValueError(f"{root / CATEGORIES_FILE} is empty; it must list the category names, one a line")
    rows: list[tuple[str, str, list[str]]] = []
    for split, list_name in LIST_FILES.items():
        list_path = root / list_name
        if not list_path.is_file():
            raise FileNotFoundError(f"{list_path} is missing; the Wikipedia dataset needs both {list(LIST_FILES.values())}")
        for line_no, line in enumerate(read_text(list_path, report, list_name).splitlines(), 1):
            if line.strip():
                rows.append((split, f"{list_name}:{line_no}", line))
    images = index_files(root / "images")
    texts = index_files(root / "texts", (".xml", ".txt"))
    items: list[Item] = []
    official: dict[str, str] = {}
    for split, where, line in tqdm(rows, desc="loading wikipedia", unit="pair", leave=False):
        raw_fields = line.split("\t") if line.count("\t") == 2 else line.split()
        if len(raw_fields) != 3:
            report.skip("bad row", where, f"expected '<txt_id>\\t<img_id>\\t<category 1..{len(categories)}>', got {line!r}")
            continue
        txt_id, img_id, cat = (f.strip() for f in raw_fields)
        if (txt_id, img_id, cat) != tuple(raw_fields):
            report.note("stray whitespace in name", where, repr(line))
        item = f"{where} ({txt_id})"
        if not cat.isdigit() or not 1 <= int(cat) <= len(categories):
            report.skip("bad label", item, f"category {cat!r} is not in 1..{len(categories)}")
            continue
        category = categories[int(cat) - 1]
        if txt_id in official:
            report.skip("duplicate id", item, f"text {txt_id} is listed more than once")
            continue
        image_path = _pick(images.get(img_id, []), category)
        if image_path is None:
            report.skip("missing image", item, f"no image {img_id}.* under {root / 'images'}")
            continue
        if stray_whitespace(image_path):
            report.note(
                "image file name with stray whitespace",
                item,
                f"list names {img_id!r}, matched file {image_path.name!r} in {image_path.parent}",
            )
        if verify_images and (problem := image_problem(image_path)):
            report.skip("corrupt image", item, f"{image_path}: {problem}")
            continue
        text_path = _pick(texts.get(txt_id, []), None)
        if text_path is None:
            report.skip("missing text", item, f"no {txt_id}.xml or {txt_id}.txt under {root / 'texts'}")
            continue
        text = (
            article_text(read_text(text_path, report, item), report, item)
            if text_path.suffix.lower() == ".xml"
            else read_text(text_path, report, item).strip()
        )
        if stray_whitespace(text_path):
            report.note("text file name with stray whitespace", item, f"list names {txt_id!r}, matched file {text_path.name!r}")
        if not text:
            report.skip("empty text", item, str(text_path))
            continue
        official[txt_id] = split
        items.append(
            Item(
                id=txt_id,
                image_path=str(image_path.resolve()),
                text=text,
                labels=(category,),
                extra={"img_id": img_id, "official_split": split},
            )
        )
    corpus = Corpus(items=items, label_names=categories, name="wikipedia")
    train = [it.id for it in items if official[it.id] == "train"]
    train_labels = {it.id: it.labels[0] for it in items}
    if val_fraction > 0 and train:
        train, val = carve_validation(train, train_labels, val_fraction, seed)
    else:
        val = []
    corpus.splits = {"train": train, "val": val, "test": [it.id for it in items if official[it.id] == "test"]}
    # Byte-identical images are reported, not removed: the official lists define the benchmark.
    report.duplicate_images(identical_files({it.id: Path(it.image_path) for it in items}), official)
    return corpus, report.finish(len(items))


def article_text(document: str, report: LoadReport, item: str) -> str:
    """The text of a <text> element of an article's XML; malformed XML (common here) falls back to stripping tags."""
    try:
        tree = ET.fromstring(document.strip())
        node = tree if tree.tag == "text" else tree.find(".//text")
        if node is not None:
            return _squash("".join(node.itertext()))
        report.note("no <text> element", item, "used the whole document")
        return _squash("".join(tree.itertext()))
    except ET.ParseError as exc:
        report.note("malformed XML", item, f"{exc}; stripped the tags instead")
    match = _TEXT_ELEMENT.search(document)
    body = match.group(1) if match else document
    return _squash(html.unescape(_TAG.sub(" ", body)))


def _squash(text: str) -> str:
    # Keep paragraph breaks, drop the indentation and runs of blank lines the XML layout adds.
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(line for line in lines if line).strip()


def _pick(paths: list[Path], category: str | None) -> Path | None:
    if not paths:
        return None
    if category is not None:
        for path in paths:
            if path.parent.name.strip() == category:
                return path
    return paths[0]
