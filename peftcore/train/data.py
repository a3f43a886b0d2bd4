"""GLUE data: reading TSVs, BERT tokenisation, dynamic-padding batches.

Formats
-------
* GLUE TSV: see peftcore.train.glue (every task's published layout).
* Encodings: ``dict`` with ``input_ids``, ``attention_mask``, ``token_type_ids``,
  each an ``np.int64`` array of shape ``(n, seq_len)``, right-padded.
  Layout: ``[CLS] a [SEP]`` (types 0) or ``[CLS] a [SEP] b [SEP]`` (a part type 0,
  b part and its ``[SEP]`` type 1), ``attention_mask`` 1 on real tokens.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.processors import TemplateProcessing

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# --------------------------------------------------------------------- GLUE
# (the tasks and their files: peftcore.train.glue; the old names stay importable here)
from .glue import (AX_TASK, GLUE_TASKS, GlueTask, get_task, load_glue,  # noqa: E402,F401
                   load_glue_from_datasets, read_glue_split, read_glue_tsv, write_submission)


# --------------------------------------------------------------- tokenizers


def _bert_pipeline(tok: Tokenizer, lowercase: bool) -> Tokenizer:
    """Give a WordPiece tokenizer BERT normalisation, post-processing and decoding."""
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ValueError("vocabulary lacks [CLS] or [SEP]")
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _tokenizer_from_vocab(vocab_path: Path, config_path: Path) -> Tokenizer:
    """BERT WordPiece tokenizer from vocab.txt (one token per line, line = id)."""
    lowercase = True
    if config_path.is_file():
        lowercase = json.loads(config_path.read_text()).get("do_lower_case", True)
    tok = Tokenizer(WordPiece.from_file(str(vocab_path), unk_token="[UNK]"))
    return _bert_pipeline(tok, lowercase)


def load_tokenizer(model_dir, max_length: int = 128) -> Tokenizer:
    """Load tokenizer.json (else vocab.txt) from a HF model folder.

    Truncation is set to ``max_length``; built-in padding is switched off
    (``encode`` pads itself, to the longest sequence).
    """
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    elif (model_dir / "vocab.txt").is_file():
        tok = _tokenizer_from_vocab(model_dir / "vocab.txt",
                                    model_dir / "tokenizer_config.json")
    else:
        raise FileNotFoundError(
            f"no tokenizer.json or vocab.txt in {model_dir}; pass a HF model folder")
    return _configure(tok, max_length)


def _configure(tok: Tokenizer, max_length: int) -> Tokenizer:
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def build_wordpiece_tokenizer_from_texts(texts, vocab_size: int = 2000,
                                         lowercase: bool = True,
                                         max_length: int = 128) -> Tokenizer:
    """A small BERT-style WordPiece tokenizer for ``texts``, built deterministically: every
    character as a word-initial and a ``##`` continuation piece, then the most frequent
    whole words (ties by spelling) up to ``vocab_size``. Words outside the vocabulary fall
    back to character pieces. (tokenizers' WordPieceTrainer breaks ties in hash-map order,
    so its vocabulary changes from process to process.)

    Special ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
    """
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = collections.Counter(
        word for text in texts
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    tokens = list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars]
    budget = max(vocab_size - len(tokens), 0)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    tokens += words[:budget]
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: marks them
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    return _configure(_bert_pipeline(tok, lowercase), max_length)


def pad_token_id(tokenizer: Tokenizer) -> int:
    """Padding id: tokenizer's padding config, else [PAD], else 0."""
    if tokenizer.padding:
        return tokenizer.padding["pad_id"]
    pad = tokenizer.token_to_id("[PAD]")
    return 0 if pad is None else pad


# ----------------------------------------------------------------- encoding


def encode(tokenizer: Tokenizer, texts_a, texts_b=None, max_length: int = 128):
    """Tokenise (pairs of) texts -> int64 arrays padded to the longest sequence.

    Sets the tokenizer's truncation to ``max_length`` (pairs: longest-first)
    and turns off its own padding.
    """
    pad_id = pad_token_id(tokenizer)
    _configure(tokenizer, max_length)
    inputs = list(texts_a) if texts_b is None else list(zip(texts_a, texts_b, strict=True))
    encs = tokenizer.encode_batch(inputs)
    width = max((len(e.ids) for e in encs), default=0)
    out = {"input_ids": np.full((len(encs), width), pad_id, np.int64),
           "attention_mask": np.zeros((len(encs), width), np.int64),
           "token_type_ids": np.zeros((len(encs), width), np.int64)}
    for i, e in enumerate(encs):
        n = len(e.ids)
        out["input_ids"][i, :n] = e.ids
        out["attention_mask"][i, :n] = e.attention_mask
        out["token_type_ids"][i, :n] = e.type_ids
    return out


# ----------------------------------------------------------------- batching


def _batch_order(lengths, batch_size, shuffle, seed, sort_by_length):
    """Row order split into batches (list of index arrays)."""
    n, rng = len(lengths), np.random.default_rng(seed)
    if sort_by_length:
        order = np.argsort(lengths, kind="stable")
    else:
        order = rng.permutation(n) if shuffle else np.arange(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if sort_by_length and shuffle:  # bucketing: similar lengths, random batch order
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


def iterate_batches(encodings, labels, batch_size: int, shuffle: bool = False,
                    seed: int = 0, drop_last: bool = False,
                    sort_by_length: bool = False):
    """Yield batch dicts, each trimmed to its longest real sequence.

    Keys: the encoding arrays, ``labels`` (if given) and ``index`` (row
    numbers into the full set, to undo shuffling/sorting).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    lengths = encodings["attention_mask"].sum(axis=1)
    for idx in _batch_order(lengths, batch_size, shuffle, seed, sort_by_length):
        if drop_last and len(idx) < batch_size:
            continue
        width = int(lengths[idx].max()) if len(idx) else 0
        batch = {k: v[idx, :width] for k, v in encodings.items()}
        if labels is not None:
            batch["labels"] = np.asarray(labels)[idx]
        batch["index"] = idx
        yield batch


# ------------------------------------------------------ synthetic sentiment

_POSITIVE = ("good", "great", "wonderful", "delightful", "charming", "brilliant",
             "enjoyable", "moving", "funny", "beautiful")
_NEGATIVE = ("bad", "terrible", "boring", "dull", "awful", "clumsy", "tedious",
             "painful", "lifeless", "annoying")
_NOUNS = ("movie", "film", "story", "script", "acting", "ending", "cast",
          "soundtrack", "plot", "director")
_PLAIN = ("the {noun} was {adv}{adj}", "what a {adv}{adj} {noun}",
          "i found the {noun} {adv}{adj}", "this {noun} is {adv}{adj}")
_NEGATED = ("the {noun} was not {adv}{adj}", "the {noun} is not {adv}{adj} at all",
            "i did not find the {noun} {adv}{adj}", "this {noun} is never {adv}{adj}")
_ADVERBS = ("", "", "very ", "really ", "truly ")


def make_synthetic_sentiment(n: int, seed: int = 0):
    """Generate ``n`` labelled sentences (1 = positive); deterministic per seed.

    Labels alternate before shuffling, so classes differ in size by at most 1.
    About a third use a negation ("not good"), which flips the adjective's polarity.
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label, negate = i % 2, bool(rng.random() < 1 / 3)
        positive_adj = bool(label) != negate
        adj = rng.choice(_POSITIVE if positive_adj else _NEGATIVE)
        template = rng.choice(_NEGATED if negate else _PLAIN)
        texts.append(template.format(noun=rng.choice(_NOUNS), adj=adj,
                                     adv=rng.choice(_ADVERBS)))
        labels.append(label)
    order = rng.permutation(n)
    return [texts[i] for i in order], np.array(labels, np.int64)[order]
