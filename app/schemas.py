"""Request and response bodies of the API (with the examples the OpenAPI docs show)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)

Target = Literal["image", "text", "both"]
MAX_K = 100
MAX_LABELS = 64
# A text or label must hold a character that is not whitespace. Whitespace is Python's (str.isspace, what str.strip()
# removes), spelled out because regex dialects disagree: JSON schema's \s (ECMA-262) misses U+001C-U+001F and U+0085
# and adds U+FEFF, so a schema-valid "\u001d" would be refused. Pydantic checks labels by this pattern, check_text
# texts by str.strip(); the JSON schema shows the same pattern for both.
NOT_BLANK = r"[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

# Request models are strict: JSON's true, "5" and 2.0 are not a k, 0 is not a bool. Multipart form fields, which are
# strings by nature, are parsed by FormInt instead of being coerced.
STRICT = ConfigDict(extra="forbid", strict=True)

LabelName = Annotated[StrictStr, StringConstraints(min_length=1, pattern=NOT_BLANK)]
_K = Field(10, ge=1, le=MAX_K, description="how many results (1-100)")
_LABELS = Field(
    None,
    min_length=1,
    max_length=MAX_LABELS,
    description="keep only results carrying at least one of these labels (exact names from GET /labels)",
)


def _form_int(value: Any) -> Any:
    """A form field's decimal digits as an int (anything else is left for strict validation to refuse)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value.strip()):
        return int(value)
    return value


FormInt = Annotated[StrictInt, BeforeValidator(_form_int)]


class TextSearchRequest(BaseModel):
    """A sentence to search with."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "examples": [
                {"text": "a smiling face with sunglasses", "k": 10, "target": "image"},
                {"text": "red fruit", "k": 5, "target": "both", "labels": ["Food & Drink"]},
            ]
        },
    )

    text: StrictStr = Field(
        description="the query (not blank; at most DSCMR_MAX_TEXT_CHARS characters)",
        examples=["a cat"],
        json_schema_extra={"pattern": NOT_BLANK},
    )
    k: StrictInt = _K
    target: Target = Field("image", description="what to find: images, texts or both")
    labels: list[LabelName] | None = _LABELS
    caption_weight: StrictFloat | None = Field(
        None,
        ge=0,
        le=1,
        description="targets 'image' and 'text' on an index with caption vectors: how much each result's score takes "
        "from the match between the query and the result's own text (0: the cross-modal score alone); unset: "
        "the service's setting (DSCMR_CAPTION_WEIGHT, else the index version's own); see GET /readyz",
    )


class ImageSearchForm(BaseModel):
    """The options of an image search as multipart form fields (k as decimal digits)."""

    model_config = STRICT

    k: FormInt = _K
    target: Target = Field("text", description="what to find: texts, images or both")
    labels: list[LabelName] | None = _LABELS


class ImageSearchJSON(BaseModel):
    """An image search with the picture inline, base64-encoded (a data: URL is accepted too)."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "examples": [
                {
                    "image_base64": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC",
                    "k": 10,
                    "target": "text",
                },
            ]
        },
    )

    image_base64: StrictStr = Field(description="the image file's bytes, base64-encoded (standard alphabet; data: URL allowed)")
    k: StrictInt = _K
    target: Target = Field("text", description="what to find: texts, images or both")
    labels: list[LabelName] | None = _LABELS


class SearchResult(BaseModel):
    """One hit."""

    id: str = Field(description="corpus item id (GET /items/{id})")
    score: float = Field(
        description="cosine similarity in the common space, -1..1; comparable within one modality only "
        "(a query's own modality scores higher), see relevance. With caption match (caption_weight > 0 in the "
        "response): (1 - w) x that cosine + w x the cosine between the query and the result's own text"
    )
    relevance: float | None = Field(
        None,
        description="calibrated probability (0..1) that the result shares a label with the "
        "query, fitted per search direction on the model's validation split; one "
        "scale for images and texts (target 'both' is ranked by it); null for a "
        "model saved without a calibration, and for caption-matched results (it calibrates the cross-modal score only)",
    )
    modality: Literal["image", "text"] = Field(description="which side of the item matched")
    labels: list[str]
    text: str | None = Field(None, description="the item's text (text results)")
    image_url: str | None = Field(None, description="the item's image (image results)")
    thumbnail_url: str | None = Field(None, description="a small version of the image (image results)")
    caption: str | None = Field(
        None, description="what to show under the picture: the item's name, else its text (image results)"
    )


class SearchResponse(BaseModel):
    """Results with the model and index version that produced them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {
                            "id": "u1f60e",
                            "score": 0.71,
                            "modality": "image",
                            "labels": ["Smileys & Emotion"],
                            "text": None,
                            "image_url": "/media/u1f60e",
                            "thumbnail_url": "/media/u1f60e?size=160",
                        }
                    ],
                    "model_hash": "1e465cf46d409e73f5b9645d2e098d6985bd55f19807cd8876e90637ab283920",
                    "index_version": "v20261129T065642823218Z-3f010c",
                    "took_ms": 4.2,
                    "k": 10,
                    "target": "image",
                    "unknown_words": [],
                }
            ]
        }
    )

    results: list[SearchResult]
    model_hash: str = Field(description="content hash of the model that encoded the query")
    index_version: str = Field(description="index version that was searched")
    took_ms: float = Field(description="time spent in the service for this request")
    unknown_words: list[str] | None = Field(
        None,
        description="text searches: the query's words that reach the model as unknown, in order, once each; "
        "punctuation is never listed; null for a sentence-embedding model (MiniLM, multilingual USE), which has no "
        "word list. "
        "With a word-vector model: the tokens its vocabulary lacks (words; for Chinese, jieba's words, and for "
        "other scripts written without spaces, characters and character pairs); a Chinese compound the "
        "vocabulary lacks (篮球比赛) is first split into the known words it is made of (篮球, 比赛), so only "
        "characters no known word covers are listed, adjacent ones together. Each listed token reaches the "
        "model as the one unknown-word token, so a query made only of them finds nothing in particular (see "
        "query_problem). With a tf-idf model: the words none of whose longest character n-grams (or the word "
        "itself, compounds split as above) the model knows; with tf-idf + multilingual USE: those of them the USE "
        "has no known piece of either",
    )
    query_problem: Literal["no_known_words", "degenerate_vector"] | None = Field(
        None,
        description="text searches: why the query cannot be ranked by, in which case `results` is empty instead of "
        "a list of arbitrary items: 'no_known_words' (the model knows none of its words, see "
        "unknown_words; for MiniLM: every word piece of the query is unknown to it, as Chinese is; for the "
        "multilingual USE: every piece, as for emoji only) or "
        "'degenerate_vector' (no feature map of the model's sentence CNN responds to it: a "
        "feature that many texts share, so every item would score the same); null when the query was searched",
    )
    k: int
    target: Target
    caption_weight: float | None = Field(
        None,
        description="text searches with target 'image' or 'text': the weight the caption match had in each score "
        "(see SearchResult.score); null when the scores are the cross-modal ones alone",
    )
    stages_ms: dict[str, float] = Field(default_factory=dict, description="time per stage: queue, decode, encode, search")


class ItemResponse(BaseModel):
    """A corpus item as the served index holds it."""

    id: str
    labels: list[str]
    text: str | None = None
    image_url: str | None = None
    thumbnail_url: str | None = None
    modalities: list[Literal["image", "text"]] = Field(description="which sides of the item are searchable")
    extra: dict[str, Any] = Field(default_factory=dict, description="the corpus's extra fields for the item")
    model_hash: str
    index_version: str


class LabelInfo(BaseModel):
    """One label and how many searchable images / texts carry it."""

    name: str
    images: int
    texts: int


class LabelsResponse(BaseModel):
    """The labels the served index knows (usable as a search filter)."""

    labels: list[LabelInfo]
    model_hash: str
    index_version: str


class HealthResponse(BaseModel):
    """Liveness."""

    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    """Readiness: whether a model and index are loaded, and which."""

    ready: bool
    model_hash: str | None = None
    index_version: str | None = None
    counts: dict[str, int] = Field(default_factory=dict, description="searchable vectors per modality")
    loaded_at: float | None = Field(None, description="unix time the served version was loaded")
    detail: str | None = Field(
        None,
        description="why the service is not ready, or the last reload problem (no server paths; "
        "the full reason with the admin X-API-Key header, and in the server log)",
    )
    worker_pid: int | None = Field(
        None,
        description="process id of the server process that answered (one of DSCMR_WORKERS; each loads and reloads on its own)",
    )
    caption_weight: float | None = Field(
        None,
        description="the weight of the caption match in text searches that leave caption_weight unset; null when the "
        "served index version has no caption vectors",
    )


class ReloadRequest(BaseModel):
    """Options of an admin reload."""

    model_config = STRICT

    force: StrictBool = Field(False, description="reload even when CURRENT still names the served version")


class ReloadResponse(BaseModel):
    """What a reload did."""

    status: Literal["loaded", "unchanged"]
    index_version: str | None
    model_hash: str | None
    previous_version: str | None
    model_reloaded: bool
    took_ms: float
