"""Result records with non-ASCII text (emoji, accents, CJK) read back exactly: byte and character lengths differ there."""
import numpy as np

from index.metadata import EntryRecord, MetadataStore
from index.records import RecordReader, export_records


def test_non_ascii_records_round_trip(tmp_path):
    store = MetadataStore.create(tmp_path / "metadata.sqlite")
    rows = [EntryRecord(0, "u1f600", "image", "/c/😀.png", None, ("Smileys & Emotion",), {"emoji": "😀"}),
            EntryRecord(1, "café", "text", None, "grinning face — 笑顔", ("Smileys & Emotion",), {"emoji": "😀"}),
            EntryRecord(2, "plain", "text", None, "plain ascii", ("Objects",), {})]
    store.insert(rows)
    assert export_records(store, tmp_path) == 3
    reader = RecordReader(tmp_path)
    got = reader.fetch(np.array([1, 0, 2]))
    assert got[0] == ["café", "text", None, "grinning face — 笑顔", ["Smileys & Emotion"], {"emoji": "😀"}]
    assert got[1][0] == "u1f600" and got[1][2] == "/c/😀.png" and got[2][3] == "plain ascii"
    reader.close()
    store.close()
