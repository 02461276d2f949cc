"""Token sequences (function/data/text.py, make_dataset --modality text): the generator's determinism and layout,
foreground tokens that are exactly the class words, background words without class information, the reader's
checks and the padded torch dataset."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from kdq.function.cli import UserError
from kdq.function.data.text import TextDataset, load_vocab, read_text_split, write_text_dataset
from tests.helpers import one_error_line, run_script

# the first four classes and their first three class words, as docs/data.md lists them
CLASS_WORDS = {"00_animal": {"cat", "dog", "horse"}, "01_vehicle": {"car", "bus", "truck"},
               "02_food": {"bread", "soup", "apple"}, "03_weather": {"rain", "snow", "wind"}}
DISTRACTORS = {"big", "small", "old", "new", "red", "green", "today", "yesterday", "near", "far", "very", "quite"}
SMALL = {"teacher": 3, "train": 2, "val": 1}


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """600 sentences per class in the teacher split: enough to compare word frequencies between classes."""
    root = tmp_path_factory.mktemp("text") / "d"
    write_text_dataset(root, seed=5, per_class={"teacher": 600, "train": 1, "val": 1}, show_progress=False)
    return root


def test_same_seed_same_bytes_other_seed_other_sentences(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_text_dataset(tmp_path / name, seed=seed, per_class=SMALL, show_progress=False)
    a, b, c = (digests(tmp_path / n) for n in "abc")
    assert a == b
    assert sorted(a) == ["dataset.json", "teacher.jsonl", "train.jsonl", "val.jsonl", "vocab.txt"]
    assert a["train.jsonl"] != c["train.jsonl"] and a["vocab.txt"] == c["vocab.txt"]


def test_a_sentence_depends_only_on_seed_split_and_index(tmp_path):
    """Sentence k of class 0 is the same whatever the number of sentences per class (its stream is its own)."""
    write_text_dataset(tmp_path / "few", seed=0, per_class={"train": 2}, show_progress=False)
    write_text_dataset(tmp_path / "more", seed=0, per_class={"train": 5}, show_progress=False)
    few = (tmp_path / "few" / "train.jsonl").read_text().splitlines()
    more = (tmp_path / "more" / "train.jsonl").read_text().splitlines()
    assert few[:2] == more[:2] and few[2] != more[2]  # index 2 is class 1's first sentence in "few"


def test_layout_manifest_and_vocab(tmp_path):
    root = tmp_path / "d"
    write_text_dataset(root, seed=0, per_class=SMALL, show_progress=False)
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["modality"] == "text" and manifest["classes"] == list(CLASS_WORDS)
    assert manifest["max_length"] == 16 and manifest["splits"] == {"teacher": 12, "train": 8, "val": 4}
    vocab = (root / "vocab.txt").read_text().splitlines()
    assert vocab[:2] == ["<pad>", "<unk>"] and len(vocab) == 2 + 4 * 3 + 20 + 12 and len(set(vocab)) == len(vocab)
    assert load_vocab(root) == vocab
    first = json.loads((root / "train.jsonl").read_text().splitlines()[0])
    assert sorted(first) == ["foreground", "id", "label", "tokens"] and first["id"] == "train_000000"
    assert set(first["foreground"]) <= {0, 1}


def test_foreground_tokens_are_exactly_the_class_words(large):
    records = read_text_split(large, "teacher")
    assert len(records) == 2400
    all_class_words = set().union(*CLASS_WORDS.values())
    names = list(CLASS_WORDS)
    first_positions, last_positions = 0, 0
    for r in records:
        assert 6 <= len(r.tokens) <= 16
        fg = [t for t, f in zip(r.tokens, r.foreground) if f]
        bg = [t for t, f in zip(r.tokens, r.foreground) if not f]
        assert 1 <= len(fg) <= 3
        assert set(fg) <= CLASS_WORDS[names[r.label]]
        assert not set(bg) & all_class_words
        first_positions += r.foreground[0]
        last_positions += r.foreground[-1]
    assert first_positions > 20 and last_positions > 20  # class words at random places, the ends included
    assert {len(r.tokens) for r in records} == set(range(6, 17))  # every length of [min_length, max_length]


def test_class_word_counts_classify_perfectly_and_distractors_carry_no_class(large):
    records = read_text_split(large, "teacher")
    names = list(CLASS_WORDS)
    for r in records:
        counts = [sum(t in CLASS_WORDS[c] for t in r.tokens) for c in names]
        assert max(range(4), key=counts.__getitem__) == r.label and sorted(counts)[-2] == 0
    per_class = {c: Counter() for c in range(4)}
    background = Counter()
    for r in records:
        per_class[r.label].update(t for t, f in zip(r.tokens, r.foreground) if not f)
        background[r.label] += sum(not f for f in r.foreground)
    for word in DISTRACTORS:
        rates = [per_class[c][word] / background[c] for c in range(4)]
        assert all(abs(rate - 0.3 / 12) < 0.3 * 0.3 / 12 for rate in rates), (word, rates)
    shares = [sum(per_class[c][w] for w in DISTRACTORS) / background[c] for c in range(4)]
    assert all(abs(s - 0.3) < 0.03 for s in shares), shares


def test_text_dataset_pads_and_maps_unknown_words(tmp_path):
    root = tmp_path / "own"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"modality": "text", "classes": ["neg", "pos"], "max_length": 5}))
    (root / "vocab.txt").write_text("<pad>\n<unk>\ngood\nfilm\n")
    (root / "train.jsonl").write_text(
        json.dumps({"id": "a", "tokens": ["good", "film"], "label": "pos", "foreground": [1, 0]}) + "\n\n"
        + json.dumps({"id": "b", "tokens": ["bad", "film", "film"], "label": "neg", "foreground": [True, 0, 0]}) + "\n")
    ds = TextDataset(root, "train")
    assert len(ds) == 2 and ds.names == ["a", "b"] and ds.classes == ["neg", "pos"]
    ids, label, fg, valid = ds[1]
    assert ids.dtype == torch.long and fg.dtype == torch.bool and valid.dtype == torch.bool
    assert ids.tolist() == [1, 3, 3, 0, 0] and label == 0
    assert fg.tolist() == [True, False, False, False, False] and valid.tolist() == [True, True, True, False, False]
    ids, label, fg, valid = TextDataset(root, "train", vocab=["<pad>", "<unk>", "film", "good"])[0]
    assert ids.tolist() == [3, 2, 0, 0, 0] and label == 1


def test_text_dataset_of_the_generated_data(tmp_path):
    root = tmp_path / "d"
    write_text_dataset(root, seed=0, per_class=SMALL, show_progress=False)
    ds = TextDataset(root, "val")
    vocab = load_vocab(root)
    records = read_text_split(root, "val")
    for i, r in enumerate(records):
        ids, label, fg, valid = ds[i]
        assert ids.shape == (16,) and label == r.label
        assert [vocab[j] for j in ids[valid].tolist()] == list(r.tokens)
        assert fg[valid].tolist() == list(r.foreground) and not fg[~valid].any() and (ids[~valid] == 0).all()


def _own_dataset(root: Path, lines: list[str], manifest: dict | None = None) -> Path:
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(manifest or {"modality": "text", "classes": ["x", "y"],
                                                               "max_length": 4}))
    (root / "vocab.txt").write_text("<pad>\n<unk>\nw\n")
    (root / "train.jsonl").write_text("".join(f"{line}\n" for line in lines))
    return root


GOOD = json.dumps({"id": "r0", "tokens": ["w", "v"], "label": "x", "foreground": [1, 0]})


def _line(**changes) -> str:
    record = {"id": "r1", "tokens": ["w"], "label": "y", "foreground": [1], **changes}
    return json.dumps(record)


@pytest.mark.parametrize("bad, message", [
    (_line(tokens=[], foreground=[]), "train.jsonl:2: empty sentence"),
    (_line(foreground=[1, 0]), "train.jsonl:2: \"foreground\" must be a list of one flag per token (1), got 2 flags"),
    (_line(foreground=[2]), "train.jsonl:2: foreground flags must be 0 or 1, got 2"),
    (_line(foreground=[0.5]), "foreground flags must be 0 or 1, got 0.5"),
    (_line(label="z"), "train.jsonl:2: unknown label 'z' (classes of dataset.json: x, y)"),
    ("{\"id\": \"r1\", \"tokens\": [", "train.jsonl:2: not JSON"),
    (_line(tokens=list("wwwww"), foreground=[0] * 5), "train.jsonl:2: 5 tokens, longer than max_length 4"),
    (_line(id="r0"), "train.jsonl:2: id 'r0' already used on line 1"),
    (_line(tokens=["<pad>"]), "reserved for padding"),
    ("[1, 2]", "train.jsonl:2: a record must be a JSON object"),
    (json.dumps({"id": "r1", "tokens": ["w"]}), "lacks 'label', 'foreground'"),
])
def test_reader_refuses_a_bad_record_in_one_line(tmp_path, bad, message):
    root = _own_dataset(tmp_path / "d", [GOOD, bad])
    for read in (lambda: read_text_split(root, "train"), lambda: TextDataset(root, "train")):
        with pytest.raises(UserError) as err:
            read()
        assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda r: (r / "train.jsonl").unlink(), "train.jsonl not found (splits here: none)"),
    (lambda r: (r / "dataset.json").write_text('{"modality": "points", "classes": ["x"]}'),
     "describes modality 'points', not 'text'"),
    (lambda r: (r / "dataset.json").write_text('{"modality": "text", "classes": ["x", "x"], "max_length": 4}'),
     "\"classes\" must be a non-empty list of distinct class names"),
    (lambda r: (r / "dataset.json").write_text('{"modality": "text", "classes": ["x"], "max_length": 0}'),
     "\"max_length\" must be a positive integer, got 0"),
    (lambda r: (r / "train.jsonl").write_text("\n"), "train.jsonl holds no records"),
    (lambda r: (r / "train.jsonl").write_bytes(b"\xff\n"), "train.jsonl is not UTF-8 text"),
])
def test_reader_refuses_a_bad_split_or_manifest(tmp_path, change, message):
    root = _own_dataset(tmp_path / "d", [GOOD])
    change(root)
    with pytest.raises(UserError) as err:
        read_text_split(root, "train")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("vocab, message", [
    ("<unk>\n<pad>\nw\n", "must be '<pad>' and '<unk>'"),
    ("<pad>\n<unk>\nw\nw\n", "token 'w' on line 4 repeats line 3"),
    ("<pad>\n<unk>\n\nw\n", "token id 2 (line 3) is empty"),
])
def test_load_vocab_refuses_a_bad_vocabulary(tmp_path, vocab, message):
    root = _own_dataset(tmp_path / "d", [GOOD])
    (root / "vocab.txt").write_text(vocab)
    for read in (lambda: load_vocab(root), lambda: TextDataset(root, "train")):
        with pytest.raises(UserError) as err:
            read()
        assert message in str(err.value) and "\n" not in str(err.value)


def test_make_dataset_text_writes_the_layout_with_the_same_bytes(tmp_path, capsys):
    flags = ["--modality", "text", "--num-classes", "3", "--teacher-per-class", "4", "--train-per-class", "2",
             "--val-per-class", "2", "--min-length", "3", "--max-length", "5", "--class-words", "2", "--no-progress"]
    assert run_script("make_dataset", "--out", tmp_path / "a", *flags) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"wrote {tmp_path / 'a'}: text, 3 classes")
    assert run_script("make_dataset", "--out", tmp_path / "b", *flags) == 0
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert manifest["max_length"] == 5 and manifest["splits"] == {"teacher": 12, "train": 6, "val": 6}
    assert manifest["class_words"]["02_food"] == ["bread", "soup"]
    assert len((tmp_path / "a" / "vocab.txt").read_text().splitlines()) == 2 + 3 * 2 + 20 + 12
    assert all(3 <= len(r.tokens) <= 5 for r in read_text_split(tmp_path / "a", "teacher"))


@pytest.mark.parametrize("flags, message", [
    (["--image-size", "32"], "--image-size: not an option of --modality text"),
    (["--background-cue", "--points", "64"], "--background-cue, --points: not an option of --modality text"),
    (["--min-length", "8", "--max-length", "4"], "--max-length must be at least --min-length (8), got 4"),
    (["--num-classes", "9"], "--num-classes must be in 2..8 for --modality text, got 9"),
    (["--class-words", "5"], "--class-words must be in 1..4, got 5"),
    (["--max-length", "0"], "argument --max-length"),
])
def test_make_dataset_text_refuses_bad_flags_in_one_line(tmp_path, capsys, flags, message):
    try:
        code = run_script("make_dataset", "--out", tmp_path / "d", "--modality", "text", *flags)
    except SystemExit as exc:  # argparse's own check of a flag's type
        code = exc.code
    assert code == 2 and message in one_error_line(capsys)
    assert not (tmp_path / "d").exists()


def test_make_dataset_overwrites_a_text_dataset_it_wrote(tmp_path, capsys):
    argv = ["--out", tmp_path / "d", "--modality", "text", "--teacher-per-class", "1", "--train-per-class", "1",
            "--val-per-class", "1", "--no-progress"]
    assert run_script("make_dataset", *argv) == 0
    before = digests(tmp_path / "d")
    capsys.readouterr()
    assert run_script("make_dataset", *argv) == 2  # without --overwrite: refused, nothing changed
    assert "--overwrite" in one_error_line(capsys) and digests(tmp_path / "d") == before
    assert run_script("make_dataset", *argv, "--seed", "1", "--overwrite") == 0
    assert digests(tmp_path / "d") != before
