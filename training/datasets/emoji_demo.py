"""A built-in demo corpus built from Debian packages: Noto Color Emoji images, Unicode/CLDR names and keywords, emoji groups as labels.

The texts are in any CLDR locale that unicode-cldr-core ships annotations for (`locale="zh"`, "ja", "ar", "de", ...):
each emoji's CLDR short name and keywords in that locale (a regional locale such as "de_CH" inherits from "de"), or its
English text where the locale has no name for it. English is the default and keeps its Unicode names.
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw, ImageFont, features
from tqdm import tqdm

from model.corpus import Corpus, Item
from training.datasets.files import image_problem
from training.datasets.report import LoadReport
from training.datasets.splits import stratified_split

# Noto Color Emoji is a CBDT bitmap font: FreeType only renders it at its one strike size.
NOTO_STRIKE_SIZE = 109
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
VARIATION_SELECTOR_16 = "\ufe0f"
DEFAULT_DROP_GROUPS = ("Component",)
_REFERENCE_EMOJI = "\U0001f600"
EmojiLabels = Literal["group", "subgroup", "both", "none"]


@dataclass(frozen=True)
class EmojiSources:
    """Where the three Debian packages put their files (override for another system)."""

    font: Path = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    emoji_test: Path = Path("/usr/share/unicode/emoji/emoji-test.txt")
    annotations: Path = Path("/usr/share/unicode/cldr/common/annotations/en.xml")
    annotations_derived: Path | None = Path("/usr/share/unicode/cldr/common/annotationsDerived/en.xml")
    # The CLDR tree whose annotations/ and annotationsDerived/ hold the other locales' files.
    cldr_dir: Path = Path("/usr/share/unicode/cldr/common")

    def check(self) -> None:
        """Raise FileNotFoundError naming the Debian package to install for each absent file."""
        needed = [
            (self.font, "fonts-noto-color-emoji"),
            (self.emoji_test, "unicode-data"),
            (self.annotations, "unicode-cldr-core"),
        ]
        missing = [(path, package) for path, package in needed if not Path(path).is_file()]
        if missing:
            lines = "; ".join(f"{path} (Debian package {package})" for path, package in missing)
            packages = " ".join(sorted({package for _, package in missing}))
            raise FileNotFoundError(
                f"emoji demo sources missing: {lines}. Install them with "
                f"`apt-get install -y {packages}` or pass EmojiSources(...) with their paths"
            )


@dataclass(frozen=True)
class EmojiEntry:
    """One fully-qualified emoji of emoji-test.txt."""

    emoji: str
    name: str
    group: str
    subgroup: str

    @property
    def item_id(self) -> str:
        """Stable id from the code points, e.g. 'u1f468-200d-1f469'."""
        return "u" + "-".join(f"{ord(ch):x}" for ch in self.emoji)


def read_emoji_test(path: Path, drop_groups: tuple[str, ...] = DEFAULT_DROP_GROUPS) -> list[EmojiEntry]:
    """Fully-qualified emoji of emoji-test.txt in file order, skin-tone variants and `drop_groups` left out."""
    entries: list[EmojiEntry] = []
    group = subgroup = ""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#") and ";" in line and "#" in line:
            codes, rest = line.split(";", 1)
            status, comment = rest.split("#", 1)
            if status.strip() != "fully-qualified" or group in drop_groups:
                continue
            points = [int(code, 16) for code in codes.split()]
            if SKIN_TONES.intersection(points):
                continue
            # comment: "<emoji> E<version> <name>"
            parts = comment.strip().split(" ", 2)
            name = parts[2].strip() if len(parts) == 3 else ""
            entries.append(EmojiEntry("".join(map(chr, points)), name, group, subgroup))
    return entries


def read_cldr_annotations(*paths: Path | None) -> dict[str, tuple[str, list[str]]]:
    """Emoji (without U+FE0F) -> (CLDR short name, keywords), earlier files winning."""
    out: dict[str, tuple[str, list[str]]] = {}
    for path in paths:
        if path is None or not Path(path).is_file():
            continue
        names: dict[str, str] = {}
        keywords: dict[str, list[str]] = {}
        for node in ET.parse(path).getroot().iter("annotation"):
            cp = (node.get("cp") or "").replace(VARIATION_SELECTOR_16, "")
            text = (node.text or "").strip()
            if not cp or not text or text == _INHERITED:
                continue
            if node.get("type") == "tts":
                names[cp] = text
            else:
                keywords[cp] = [k.strip() for k in text.split("|") if k.strip() and k.strip() != _INHERITED]
        for cp in names.keys() | keywords.keys():
            out.setdefault(cp, (names.get(cp, ""), keywords.get(cp, [])))
    return out


# CLDR marks a value a regional locale inherits from its parent with this placeholder.
_INHERITED = "\u2191\u2191\u2191"


def available_locales(sources: EmojiSources) -> list[str]:
    """The CLDR locales with emoji annotations under `sources.cldr_dir` (root, which has no names, left out)."""
    folder = Path(sources.cldr_dir) / "annotations"
    return sorted(p.stem for p in folder.glob("*.xml") if p.stem != "root")


def normalise_locale(locale: str, sources: EmojiSources) -> str:
    """`locale` as CLDR spells it ('zh-hant' -> 'zh_Hant'); ValueError listing the available ones when it has no file."""
    available = available_locales(sources)
    wanted = locale.strip().replace("-", "_").casefold()
    for name in available:
        if name.casefold() == wanted:
            return name
    if not available:
        raise FileNotFoundError(
            f"no CLDR annotations under {Path(sources.cldr_dir) / 'annotations'}: install the Debian package unicode-cldr-core"
        )
    raise ValueError(f"no CLDR emoji annotations for locale {locale!r}; available: {', '.join(available)}")


def locale_annotation_files(locale: str, sources: EmojiSources) -> list[Path]:
    """The annotation files of `locale` and its parents, nearest first ('de_CH': de_CH, then de), derived after each."""
    parts = locale.split("_")
    chain = ["_".join(parts[:n]) for n in range(len(parts), 0, -1)]
    folder = Path(sources.cldr_dir)
    return [folder / sub / f"{name}.xml" for name in chain for sub in ("annotations", "annotationsDerived")]


def is_english(locale: str) -> bool:
    """Whether `locale` is English (en, en_GB, ...): the demo's texts then keep their Unicode names."""
    return locale.split("_")[0].casefold() == "en"


def localized_text(entry: EmojiEntry, annotations: dict[str, tuple[str, list[str]]]) -> str | None:
    """'<CLDR name>. <keyword>, <keyword>, ...' in the annotations' locale; None when it has no name for the emoji."""
    name, keywords = annotations.get(entry.emoji.replace(VARIATION_SELECTOR_16, ""), ("", []))
    if not name:
        return None
    extra = [k for k in keywords if k.casefold() != name.casefold()]
    return f"{name}. {', '.join(extra)}" if extra else name


def emoji_text(entry: EmojiEntry, annotations: dict[str, tuple[str, list[str]]]) -> str:
    """'<name> (<Unicode name if different>). <keyword>, <keyword>, ...'."""
    key = entry.emoji.replace(VARIATION_SELECTOR_16, "")
    cldr_name, keywords = annotations.get(key, ("", []))
    name = entry.name or cldr_name
    text = name
    if len(key) == 1:
        unicode_name = unicodedata.name(key, "").lower()
        if unicode_name and unicode_name != name.lower():
            text += f" ({unicode_name})"
    extra = [k for k in keywords if k.lower() != name.lower()]
    return f"{text}. {', '.join(extra)}" if extra else text


def build_emoji_corpus(
    out_dir: Path,
    *,
    limit: int | None = None,
    per_group: int | None = None,
    image_size: int = 128,
    seed: int = 0,
    drop_groups: tuple[str, ...] = DEFAULT_DROP_GROUPS,
    sources: EmojiSources | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    labels: EmojiLabels = "group",
    progress: bool = True,
    locale: str = "en",
) -> tuple[Corpus, LoadReport]:
    """Render the emoji into out_dir/images/<id>.png (kept if already there) and return the corpus with a stratified 80/10/10 split.

    `limit` (total) and `per_group` pick evenly spread emoji, balanced across the groups. `labels`: each item's Unicode
    group (9 classes), its subgroup (about 100: face-smiling, animal-mammal, food-fruit ...) or both (multi-label, the
    group first), or none (a corpus without labels, as a user's captioned pictures: the group stays in `extra` only). The
    split is stratified by the group either way, so the four settings share one split. `locale`: the
    CLDR locale of the texts (see the module docstring); an item the locale has no name for keeps its English text.
    """
    if labels not in ("group", "subgroup", "both", "none"):
        raise ValueError(f"labels must be 'group', 'subgroup', 'both' or 'none', got {labels!r}")
    sources = sources or EmojiSources()
    sources.check()
    entries = _select(read_emoji_test(sources.emoji_test, drop_groups), limit, per_group)
    annotations = read_cldr_annotations(sources.annotations, sources.annotations_derived)
    locale = "en" if locale == "en" else normalise_locale(locale, sources)
    translated = not is_english(locale)
    local = read_cldr_annotations(*locale_annotation_files(locale, sources)) if translated else {}
    if locale != "en" and not translated:
        # A regional English keeps the English text form, with its own spellings before en.xml's.
        annotations = read_cldr_annotations(
            *locale_annotation_files(locale, sources), sources.annotations, sources.annotations_derived
        )
    renderer = _Renderer(sources.font)
    images_dir = Path(out_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    report = LoadReport(dataset="emoji-demo")
    items: list[Item] = []
    for entry in tqdm(entries, desc="rendering emoji", unit="emoji", leave=False, disable=not progress):
        label = f"{entry.item_id} {entry.emoji} {entry.name}"
        path = images_dir / f"{entry.item_id}.png"
        if not _reusable(path, image_size):
            problem = renderer.render_to(entry.emoji, path, image_size, background)
            if problem:
                report.skip(problem, label)
                continue
        text, language, name = emoji_text(entry, annotations), "en" if translated else locale, entry.name
        if entry.emoji.replace(VARIATION_SELECTOR_16, "") not in annotations:
            report.note("no CLDR keywords", label)
        if translated:
            own = localized_text(entry, local)
            if own is None:
                report.note(f"no {locale} name, English text", label)
            else:
                text, language, name = own, locale, local[entry.emoji.replace(VARIATION_SELECTOR_16, "")][0]
        items.append(
            Item(
                id=entry.item_id,
                image_path=str(path.resolve()),
                text=text,
                labels=(entry.group,),
                extra={
                    "emoji": entry.emoji,
                    # the service shows it as the picture's caption: in the texts' language, the English one beside it
                    "name": name,
                    **({"name_en": entry.name} if name != entry.name else {}),
                    "group": entry.group,
                    "subgroup": entry.subgroup,
                    **({"text_language": language} if locale != "en" else {}),
                },
            )
        )
    groups = list(dict.fromkeys(it.labels[0] for it in items))
    splits = stratified_split(items, groups, seed=seed)
    if labels == "subgroup":
        items = [dataclasses.replace(it, labels=(it.extra["subgroup"],)) for it in items]
        groups = list(dict.fromkeys(it.extra["subgroup"] for it in items))
    elif labels == "both":
        # A subgroup is a class only where the train split holds one of its items (a class nothing trains cannot be
        # learned); the items of the others keep their group alone.
        in_train = {it.extra["subgroup"] for it in items if it.id in set(splits["train"])}
        subgroups = [g for g in dict.fromkeys(it.extra["subgroup"] for it in items) if g in in_train]
        items = [
            dataclasses.replace(
                it, labels=(it.extra["group"],) + ((it.extra["subgroup"],) if it.extra["subgroup"] in in_train else ())
            )
            for it in items
        ]
        groups = groups + subgroups
    elif labels == "none":
        items = [dataclasses.replace(it, labels=()) for it in items]
        groups = []
    corpus = Corpus(items=items, label_names=groups, name="emoji-demo", multilabel=labels == "both", language=locale)
    corpus.splits = splits
    if locale != "en":
        own = sum(1 for it in items if it.extra["text_language"] == locale)
        report.counts.update({f"texts in {locale}": own, "texts in English (fallback)": len(items) - own})
    return corpus, report.finish(len(items))


def _select(entries: list[EmojiEntry], limit: int | None, per_group: int | None) -> list[EmojiEntry]:
    by_group: dict[str, list[EmojiEntry]] = {}
    for entry in entries:
        by_group.setdefault(entry.group, []).append(entry)
    quota = {g: len(v) if per_group is None else min(per_group, len(v)) for g, v in by_group.items()}
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        # Fill the groups evenly (water-filling) so small groups are taken whole and large ones share the rest.
        remaining, open_groups, share = limit, sorted(quota, key=quota.__getitem__), {}
        while open_groups:
            fair = remaining // len(open_groups)
            g = open_groups[0]
            if quota[g] <= fair:
                share[g] = quota[g]
                remaining -= quota[g]
                open_groups.pop(0)
                continue
            extra = remaining - fair * len(open_groups)
            for i, g in enumerate(sorted(open_groups, key=list(by_group).index)):
                share[g] = fair + (1 if i < extra else 0)
            break
        quota = {g: share.get(g, 0) for g in quota}
    chosen: set[str] = set()
    for g, members in by_group.items():
        k, n = quota[g], len(members)
        # Evenly spaced picks cover every subgroup rather than only the first ones.
        if k:
            chosen.update(members[(i * n) // k].emoji for i in range(k))
    return [e for e in entries if e.emoji in chosen]


def _reusable(path: Path, size: int) -> bool:
    # A rerun keeps earlier renderings, unless they are damaged or of another size.
    if not path.is_file() or image_problem(path) is not None:
        return False
    with Image.open(path) as im:
        return im.size == (size, size)


class _Renderer:
    def __init__(self, font_path: Path) -> None:
        layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
        try:
            self.font = ImageFont.truetype(str(font_path), NOTO_STRIKE_SIZE, layout_engine=layout)
        except OSError as exc:
            raise OSError(
                f"cannot load the emoji font {font_path} at size {NOTO_STRIKE_SIZE}: {exc} "
                f"(expected Noto Color Emoji from the Debian package fonts-noto-color-emoji)"
            ) from exc
        self.advance = self.font.getlength(_REFERENCE_EMOJI)
        self.has_raqm = layout == ImageFont.Layout.RAQM

    def render_to(self, emoji: str, path: Path, size: int, background: tuple[int, int, int]) -> str | None:
        """Write the emoji as a size x size RGB PNG; return a skip reason instead when the font cannot draw it."""
        width = self.font.getlength(emoji)
        if width > 1.5 * self.advance:
            # Without a shaping engine (libraqm) or for a sequence the font lacks, it falls apart into several glyphs.
            return "not a single glyph in this font" + ("" if self.has_raqm else " (Pillow lacks libraqm)")
        canvas = Image.new("RGBA", (int(width) + 2 * NOTO_STRIKE_SIZE // 4, NOTO_STRIKE_SIZE * 3 // 2), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((NOTO_STRIKE_SIZE // 8, 0), emoji, font=self.font, embedded_color=True)
        box = canvas.getchannel("A").getbbox()
        if box is None:
            return "no glyph in font"
        glyph = canvas.crop(box)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), background + (255,))
        square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        out = square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        tmp = path.with_name(path.name + ".tmp")
        out.save(tmp, format="PNG")
        os.replace(tmp, path)
        return None
