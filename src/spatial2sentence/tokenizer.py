"""Word-level tokenizer (Hugging Face ``tokenizers`` WordLevel, whitespace split) over marker names,
template words, distance/direction words and label tokens: every word of a prompt is one token, so every
label is a single token and constrained prediction needs one forward pass.

Saved as a standard ``tokenizer.json`` (loadable by ``tokenizers.Tokenizer.from_file`` and
``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``). Encoding inside the library maps words
through the same vocabulary directly (identical ids, no string round trip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from .prompts import BOS, DIRECTIONS, EOS, PAD, SPECIALS, TEMPLATE, UNK, distance_words
from .sentences import NIL, PHENOTYPE, level_word


class WordTokenizer:
    def __init__(self, vocab: dict[str, int]):
        self.vocab = dict(vocab)
        self.inv = {i: w for w, i in self.vocab.items()}
        self.pad_id, self.unk_id = self.vocab[PAD], self.vocab[UNK]
        self.bos_id, self.eos_id = self.vocab[BOS], self.vocab[EOS]

    @classmethod
    def build(cls, markers, labels, distance_bins, n_levels: int = 0) -> "WordTokenizer":
        """The vocabulary; ``n_levels`` > 0 adds every marker's level words ``MARKER:1 .. MARKER:n``
        (``levels`` sentences) after the bare marker words (kept for ranked sentences and explanations)."""
        words = list(SPECIALS) + list(TEMPLATE) + [NIL, PHENOTYPE] + list(DIRECTIONS)
        words += distance_words(list(distance_bins)) + sorted(set(markers))
        words += [level_word(m, lv) for m in sorted(set(markers)) for lv in range(1, int(n_levels) + 1)]
        words += list(labels)
        vocab: dict[str, int] = {}
        for w in words:
            if w not in vocab:
                vocab[w] = len(vocab)
        return cls(vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, words: list[str]) -> list[int]:
        v, unk = self.vocab, self.unk_id
        return [v.get(w, unk) for w in words]

    def decode(self, ids) -> str:
        return " ".join(self.inv.get(int(i), UNK) for i in ids)

    def ids(self, words) -> list[int]:
        missing = [w for w in words if w not in self.vocab]
        if missing:
            raise KeyError(f"words not in the vocabulary: {missing}")
        return [self.vocab[w] for w in words]

    # --- Hugging Face files ----------------------------------------------------------------------
    def hf_tokenizer(self):
        """A ``tokenizers.Tokenizer`` with this vocabulary (WordLevel, whitespace split)."""
        tok = Tokenizer(WordLevel(self.vocab, unk_token=UNK))
        tok.pre_tokenizer = WhitespaceSplit()
        return tok

    def save(self, directory: str | Path) -> None:
        self.hf_tokenizer().save(str(Path(directory) / "tokenizer.json"))

    @classmethod
    def load(cls, directory: str | Path) -> "WordTokenizer":

        tok = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        return cls(tok.get_vocab())

    def pad_batch(self, seqs: list[list[int]], left: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention_mask) arrays, padded on the right (or left) with PAD."""
        n = max((len(s) for s in seqs), default=0)
        ids = np.full((len(seqs), n), self.pad_id, np.int64)
        mask = np.zeros((len(seqs), n), np.int64)
        for i, s in enumerate(seqs):
            if left:
                ids[i, n - len(s) :] = s
                mask[i, n - len(s) :] = 1
            else:
                ids[i, : len(s)] = s
                mask[i, : len(s)] = 1
        return ids, mask
