"""Token sequences: the embedded text dataset (seeded sentences with exact foreground tokens) and its reader.

A class is defined by its **class words** alone: a sentence of class ``c`` holds 1 to 3 words of ``c``'s own small
set (its foreground tokens) at random positions.  Every other position is a **filler** word (function words shared
by all classes) or, with probability ``distractor_rate``, a **distractor** word (content-like words drawn with the
same probability in every class): the background, which carries no class information.  The length of a sentence
is drawn uniformly in ``[min_length, max_length]``.

Every sentence comes from its own random stream ``numpy.random.default_rng([seed, split id, index])`` (the split
ids of :data:`kdq.function.data.synthetic.SPLIT_IDS`): the files are byte-identical for a seed.

Layout (docs/data.md, "Token sequences")::

    ROOT/dataset.json    {"modality": "text", "generator": "kdq.synthetic_text", "seed": 0, "classes": [...],
                          "max_length": 16, "splits": {"teacher": 1200, ...}, ...}
    ROOT/vocab.txt       one token per line; line i (from 0) is token id i; id 0 is "<pad>", id 1 is "<unk>"
    ROOT/<split>.jsonl   one JSON object per line: {"id": "train_000001", "tokens": ["the", "cat", ...],
                          "label": "<class>", "foreground": [0, 1, ...]}  (one 0/1 flag per token, 1 = foreground)

Only ``modality``, ``classes`` and ``max_length`` of dataset.json are read back (your own data needs no more).
:func:`read_text_split` returns the validated records of a split, :class:`TextDataset` serves them as padded
tensors.  Nothing here imports torch at import time (``kdq-data --help`` stays light): :class:`TextDataset`
imports it when it is built.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kdq.function.cli import UserError
from kdq.function.data.files import UnreadableFile
from kdq.function.data.synthetic import SPLIT_IDS
from kdq.function.io.atomic import atomic_dir, write_json
from kdq.function.io.rundir import DATASET_JSON, TEXT_GENERATOR
from kdq.function.progress import progress

MODALITY = "text"
VOCAB_TXT = "vocab.txt"
SPLIT_SUFFIX = ".jsonl"
PAD, UNK = "<pad>", "<unk>"  # token ids 0 and 1
PAD_ID, UNK_ID = 0, 1
# the generator's defaults (make_dataset --modality text shows and uses these)
DEFAULT_CLASSES = 4
DEFAULT_PER_CLASS = {"teacher": 300, "train": 60, "val": 60}
DEFAULT_MIN_LENGTH, DEFAULT_MAX_LENGTH = 6, 16
DEFAULT_CLASS_WORDS = 3

# (theme, its class words): a class is one theme; `class_words` of them are used (at most 4)
THEMES = (("animal", ("cat", "dog", "horse", "goat")),
          ("vehicle", ("car", "bus", "truck", "tram")),
          ("food", ("bread", "soup", "apple", "rice")),
          ("weather", ("rain", "snow", "wind", "storm")),
          ("music", ("drum", "piano", "song", "violin")),
          ("tool", ("hammer", "saw", "drill", "wrench")),
          ("plant", ("tree", "fern", "moss", "tulip")),
          ("sport", ("tennis", "soccer", "golf", "rugby")))
FILLER_WORDS = ("the", "a", "an", "of", "to", "in", "on", "and", "is", "was",
                "it", "that", "with", "for", "at", "by", "this", "from", "there", "we")
DISTRACTOR_WORDS = ("big", "small", "old", "new", "red", "green",
                    "today", "yesterday", "near", "far", "very", "quite")


@dataclass(frozen=True)
class TextStyle:
    """Knobs of the generator: class words per sentence (inclusive range) and the share of background positions
    that hold a distractor word instead of a filler word."""
    class_words_per_sentence: tuple[int, int] = (1, 3)
    distractor_rate: float = 0.3


@dataclass(frozen=True)
class TextRecord:
    """One sentence of a split: ``label`` is the class index (into dataset.json's ``classes``), ``foreground`` one
    flag per token."""
    id: str
    tokens: tuple[str, ...]
    label: int
    foreground: tuple[bool, ...]


# ---- the generator ------------------------------------------------------------------------------------------
def max_classes() -> int:
    return len(THEMES)


def max_class_words() -> int:
    return min(len(words) for _, words in THEMES)


def class_names(num_classes: int) -> list[str]:
    """``00_animal``, ``01_vehicle``, ...: the first ``num_classes`` themes."""
    if not 2 <= num_classes <= max_classes():
        raise ValueError(f"num_classes must be in [2, {max_classes()}], got {num_classes}")
    return [f"{c:02d}_{THEMES[c][0]}" for c in range(num_classes)]


def class_word_table(num_classes: int, class_words: int) -> list[tuple[str, ...]]:
    """The class words of each of the ``num_classes`` classes (``class_words`` each)."""
    if not 1 <= class_words <= max_class_words():
        raise ValueError(f"class_words must be in [1, {max_class_words()}], got {class_words}")
    class_names(num_classes)  # the range check of num_classes
    return [THEMES[c][1][:class_words] for c in range(num_classes)]


def vocabulary(num_classes: int, class_words: int) -> list[str]:
    """The tokens by id: ``<pad>``, ``<unk>``, the class words class by class, the filler and the distractor words."""
    words = [w for ws in class_word_table(num_classes, class_words) for w in ws]
    return [PAD, UNK, *words, *FILLER_WORDS, *DISTRACTOR_WORDS]


def sentence_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def generate_sentence(rng: np.random.Generator, words: Sequence[str], min_length: int, max_length: int,
                      style: TextStyle = TextStyle()) -> tuple[list[str], list[bool]]:
    """One sentence of the class whose class words are ``words``: its tokens and their foreground flags
    (True exactly at the class words)."""
    length = int(rng.integers(min_length, max_length + 1))
    lo, hi = style.class_words_per_sentence
    n_class = int(rng.integers(lo, min(hi, length) + 1))
    positions = rng.choice(length, size=n_class, replace=False)
    chosen = rng.integers(len(words), size=n_class)
    distractor = rng.random(length) < style.distractor_rate
    filler = rng.integers(len(FILLER_WORDS), size=length)
    other = rng.integers(len(DISTRACTOR_WORDS), size=length)
    tokens = [DISTRACTOR_WORDS[other[i]] if distractor[i] else FILLER_WORDS[filler[i]] for i in range(length)]
    foreground = [False] * length
    for pos, w in zip(positions, chosen):
        tokens[pos], foreground[pos] = words[w], True
    return tokens, foreground


def check_lengths(min_length: int, max_length: int) -> None:
    """The generator's length range: 1 <= min_length <= max_length (a ValueError naming the bad bound)."""
    if min_length < 1:
        raise ValueError(f"min_length must be at least 1, got {min_length}")
    if max_length < min_length:
        raise ValueError(f"max_length must be at least min_length ({min_length}), got {max_length}")


def split_sentences(label: int, n: int, split: str) -> list[tuple[int, str]]:
    """(index in the split, record id) of the ``n`` sentences of class ``label`` in ``split``."""
    return [(label * n + k, f"{split}_{label * n + k:06d}") for k in range(n)]


def dataset_files(manifest: dict) -> list[str]:
    """The files besides dataset.json that :func:`write_text_dataset` wrote for the dataset.json ``manifest``
    (vocab.txt and one ``<split>.jsonl`` per split); [] for a manifest it did not write."""
    splits = manifest.get("splits")
    if manifest.get("generator") != TEXT_GENERATOR or not isinstance(splits, dict) or \
            not all(s in SPLIT_IDS for s in splits):
        return []
    return [VOCAB_TXT, *(f"{s}{SPLIT_SUFFIX}" for s in splits)]


def write_text_dataset(out: Path, seed: int, num_classes: int = DEFAULT_CLASSES,
                       per_class: dict[str, int] | None = None, min_length: int = DEFAULT_MIN_LENGTH,
                       max_length: int = DEFAULT_MAX_LENGTH, class_words: int = DEFAULT_CLASS_WORDS,
                       show_progress: bool = True, style: TextStyle = TextStyle()) -> None:
    """Generate the embedded text dataset into ``out`` (a temporary sibling folder moved into place: never
    half-written).  ``per_class``: sentences per class and split (default 300 / 60 / 60 for teacher / train /
    val: :data:`DEFAULT_PER_CLASS`)."""
    per_class = dict(per_class or DEFAULT_PER_CLASS)
    unknown = sorted(set(per_class) - set(SPLIT_IDS))
    if unknown:
        raise ValueError(f"per_class: unknown split(s) {unknown} (splits: {sorted(SPLIT_IDS)})")
    check_lengths(min_length, max_length)
    names, table = class_names(num_classes), class_word_table(num_classes, class_words)
    with atomic_dir(out) as tmp:
        (tmp / VOCAB_TXT).write_text("".join(f"{t}\n" for t in vocabulary(num_classes, class_words)),
                                     encoding="utf-8")
        with progress(total=sum(per_class.values()) * num_classes, desc="sentences", enabled=show_progress) as bar:
            for split, n in per_class.items():
                with open(tmp / f"{split}{SPLIT_SUFFIX}", "w", encoding="utf-8", newline="\n") as f:
                    for label, cls in enumerate(names):
                        for index, rid in split_sentences(label, n, split):
                            tokens, fg = generate_sentence(sentence_rng(seed, split, index), table[label],
                                                           min_length, max_length, style)
                            f.write(json.dumps({"id": rid, "tokens": tokens, "label": cls,
                                                "foreground": [int(v) for v in fg]}) + "\n")
                            bar.update()
        write_json(tmp / DATASET_JSON, {
            "modality": MODALITY, "generator": TEXT_GENERATOR, "seed": seed, "classes": names,
            "max_length": max_length, "min_length": min_length,
            "splits": {s: n * num_classes for s, n in per_class.items()}, "per_class": per_class,
            "vocab": VOCAB_TXT, "vocab_size": len(vocabulary(num_classes, class_words)),
            "class_words": {cls: list(ws) for cls, ws in zip(names, table)},
            "filler_words": list(FILLER_WORDS), "distractor_words": list(DISTRACTOR_WORDS),
            "style": asdict(style)})


# ---- reading a dataset root ----------------------------------------------------------------------------------
def read_manifest(root: Path, modality: str) -> dict:
    """``root``'s dataset.json, checked to describe a dataset of ``modality`` with a list of unique class names
    (the part every non-image modality shares); a UserError naming the file otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--data: dataset root {root} does not exist or is not a directory")
    path = root / DATASET_JSON
    if not path.is_file():
        raise UserError(f"--data: {path} not found (a {modality} dataset names its modality and classes there)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnreadableFile(f"{path} is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise UnreadableFile(f"{path} is not a JSON object")
    if manifest.get("modality") != modality:
        raise UserError(f"--data: {path} describes modality {manifest.get('modality', 'image')!r}, not {modality!r}")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes) \
            or len(set(classes)) != len(classes):
        raise UnreadableFile(f"{path}: \"classes\" must be a non-empty list of distinct class names")
    return manifest


def text_max_length(manifest: dict, root: Path) -> int:
    """dataset.json's ``max_length`` (a positive integer, else a one-line error)."""
    value = manifest.get("max_length")
    if type(value) is not int or value < 1:
        raise UnreadableFile(f"{Path(root) / DATASET_JSON}: \"max_length\" must be a positive integer, got {value!r}")
    return value


def is_flag(value) -> bool:
    """A foreground flag of a record: 0 or 1 (JSON false/true too)."""
    return type(value) in (int, bool) and value in (0, 1)


def parse_text_record(obj, classes: Sequence[str], max_length: int, where: str) -> TextRecord:
    """The record of one JSON line (``where``: ``file:line`` for the message), checked."""
    if not isinstance(obj, dict):
        raise UnreadableFile(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("id", "tokens", "label", "foreground") if k not in obj]
    if missing:
        raise UnreadableFile(f"{where}: the record lacks {', '.join(repr(k) for k in missing)}")
    rid, tokens, label, fg = obj["id"], obj["tokens"], obj["label"], obj["foreground"]
    if not isinstance(rid, str) or not rid:
        raise UnreadableFile(f"{where}: \"id\" must be a non-empty string, got {rid!r}")
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise UnreadableFile(f"{where}: \"tokens\" must be a list of non-empty strings")
    if not tokens:
        raise UnreadableFile(f"{where}: empty sentence (no tokens)")
    if PAD in tokens:
        raise UnreadableFile(f"{where}: token {PAD!r} is reserved for padding")
    if len(tokens) > max_length:
        raise UnreadableFile(f"{where}: {len(tokens)} tokens, longer than max_length {max_length} of dataset.json")
    if not isinstance(fg, list) or len(fg) != len(tokens):
        got = f"{len(fg)} flags" if isinstance(fg, list) else type(fg).__name__
        raise UnreadableFile(f"{where}: \"foreground\" must be a list of one flag per token ({len(tokens)}), "
                             f"got {got}")
    bad = [v for v in fg if not is_flag(v)]
    if bad:
        raise UnreadableFile(f"{where}: foreground flags must be 0 or 1, got {bad[0]!r}")
    if label not in classes:
        raise UnreadableFile(f"{where}: unknown label {label!r} (classes of dataset.json: {', '.join(classes)})")
    return TextRecord(rid, tuple(tokens), classes.index(label), tuple(bool(v) for v in fg))


def read_records(path: Path, classes: Sequence[str], max_length: int) -> list[TextRecord]:
    """Every record of a ``.jsonl`` file (blank lines skipped), checked; ids must be unique."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    records, seen = [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise UnreadableFile(f"{where}: not JSON ({exc})") from None
        record = parse_text_record(obj, classes, max_length, where)
        if record.id in seen:
            raise UnreadableFile(f"{where}: id {record.id!r} already used on line {seen[record.id]}")
        seen[record.id] = lineno
        records.append(record)
    if not records:
        raise UnreadableFile(f"{path} holds no records")
    return records


def split_path(root: Path, split: str) -> Path:
    """``ROOT/<split>.jsonl``, a UserError listing the splits there when it is missing."""
    path = Path(root) / f"{split}{SPLIT_SUFFIX}"
    if not path.is_file():
        found = sorted(p.name.removesuffix(SPLIT_SUFFIX) for p in Path(root).glob(f"*{SPLIT_SUFFIX}"))
        raise UserError(f"--split: {path} not found (splits here: {', '.join(found) or 'none'})")
    return path


def read_text_split(root: Path, split: str) -> list[TextRecord]:
    """The checked records of ``split`` (``ROOT/<split>.jsonl``) of the text dataset at ``root``."""
    manifest = read_manifest(root, MODALITY)
    return read_records(split_path(root, split), manifest["classes"], text_max_length(manifest, root))


def check_vocab(tokens: Sequence[str], where: str) -> list[str]:
    """``tokens`` (by id) as a vocabulary: ``<pad>`` then ``<unk>``, then distinct non-empty tokens."""
    tokens = list(tokens)
    if tokens[:2] != [PAD, UNK]:
        raise UnreadableFile(f"{where}: ids 0 and 1 (the first two lines) must be {PAD!r} and {UNK!r}, "
                             f"got {tokens[:2]!r}")
    first: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if not isinstance(t, str) or not t or t != t.strip():
            raise UnreadableFile(f"{where}: token id {i} (line {i + 1}) is empty or begins or ends with a space: {t!r}")
        if t in first:
            raise UnreadableFile(f"{where}: token {t!r} on line {i + 1} repeats line {first[t] + 1}")
        first[t] = i
    return tokens


def load_vocab(root: Path) -> list[str]:
    """The tokens of ``ROOT/vocab.txt`` by id (line i, from 0, is id i), checked with :func:`check_vocab`."""
    path = Path(root) / VOCAB_TXT
    if not path.is_file():
        raise UserError(f"--data: {path} not found (one token per line: <pad>, <unk>, then the words)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return check_vocab(text.splitlines(), str(path))


def encode(record: TextRecord, index: dict[str, int], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids int64 (length,), foreground bool, valid bool) of a record padded with id 0; unknown words are id 1."""
    n = len(record.tokens)
    ids = np.full(length, PAD_ID, dtype=np.int64)
    ids[:n] = [index.get(t, UNK_ID) for t in record.tokens]
    fg = np.zeros(length, dtype=bool)
    fg[:n] = record.foreground
    valid = np.zeros(length, dtype=bool)
    valid[:n] = True
    return ids, fg, valid


class TextDataset:
    """The sentences of one split as a map-style torch dataset: ``dataset[i]`` → ``(ids LongTensor (L,), label,
    foreground BoolTensor (L,), valid BoolTensor (L,))`` with ``L`` = dataset.json's ``max_length``, padded with id
    0 (``valid`` False there); a word outside the vocabulary is id 1.  ``vocab``: the tokens by id (default:
    ``ROOT/vocab.txt``; pass the training split's for another split).  ``names[i]`` is record ``i``'s id."""

    def __init__(self, root: Path, split: str, vocab: Sequence[str] | None = None):
        self.root, self.split = Path(root), split
        manifest = read_manifest(self.root, MODALITY)
        self.classes: list[str] = manifest["classes"]
        self.max_length = text_max_length(manifest, self.root)
        self.records = read_records(split_path(self.root, split), self.classes, self.max_length)
        self.vocab = load_vocab(self.root) if vocab is None else check_vocab(vocab, "vocab")
        index = {t: i for i, t in enumerate(self.vocab)}
        encoded = [encode(r, index, self.max_length) for r in self.records]
        self.ids, self.foreground, self.valid = (np.stack(a) for a in zip(*encoded))
        self.names = [r.id for r in self.records]
        self.targets = [r.label for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        import torch

        return (torch.tensor(self.ids[i]), self.targets[i], torch.tensor(self.foreground[i]),
                torch.tensor(self.valid[i]))
