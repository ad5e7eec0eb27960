"""The shipped sample set: no split leaks into another (voices, papers, source images, files)."""

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from omnivec.datasets import load_task

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SETS = ["digits", "spoken_digits", "spoken_mix", "shapes", "moving_digits", "acl_highlights", "acl_summaries"]


def manifest(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / name / "manifest.jsonl").read_text().splitlines()]


def splits_by(rows: list[dict], keys) -> dict[str, set[str]]:
    """{key: the splits of the rows that have it}; `keys(row)` lists a row's keys."""
    out = defaultdict(set)
    for row in rows:
        for key in keys(row):
            out[key].add(row["split"])
    return out


def leaks(rows: list[dict], keys) -> list[str]:
    return sorted(k for k, splits in splits_by(rows, keys).items() if len(splits) > 1)


@pytest.mark.parametrize("name", SETS)
def test_no_sample_in_two_splits(name):
    def content(row):  # the file's bytes, or the text itself
        return [row["text"] if "text" in row else hashlib.sha1((SAMPLE / name / row["path"]).read_bytes()).hexdigest()]

    rows = manifest(name)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert leaks(rows, content) == []


def test_spoken_digits_split_by_voice():
    rows = manifest("spoken_digits")
    voices = splits_by(rows, lambda r: [r["voice"]])
    assert leaks(rows, lambda r: [r["voice"]]) == []
    assert sorted(sum(s == {split} for s in voices.values()) for split in ("train", "val", "test")) == [2, 2, 12]
    for split in ("val", "test"):  # every word once per held-out voice
        words = Counter(r["label"] for r in rows if r["split"] == split)
        assert len(words) == 10 and set(words.values()) == {2}


def test_spoken_mix_voices_follow_spoken_digits():
    voice_split = {r["voice"]: r["split"] for r in manifest("spoken_digits")}
    for row in manifest("spoken_mix"):
        assert {voice_split[v] for v in row["voices"]} == {row["split"]}, row["path"]


def test_moving_digits_source_images_in_one_split_of_both_sets():
    rows = manifest("moving_digits")
    assert leaks(rows, lambda r: [r["source"]]) == []
    assert len({r["source"] for r in rows}) == len(rows)  # one clip per image
    digit_split = {f"digits/{r['path']}": r["split"] for r in manifest("digits")}
    assert all(digit_split[r["source"]] == r["split"] for r in rows)


def test_acl_papers_in_one_split_across_both_sets():
    rows = manifest("acl_highlights") + manifest("acl_summaries")
    assert leaks(rows, lambda r: [r["paper"]]) == []
    assert len({r["paper"] for r in rows}) == 250


def test_reader_ignores_the_provenance_columns():
    task = load_task(SAMPLE / "spoken_mix")
    assert task.target == "labels" and "voices" not in task.rows[0]
