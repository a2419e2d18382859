"""Masked-LM inputs (BERT's recipe): choose `mask_prob` of the ordinary tokens; of those, 80%
become [MASK], 10% a random ordinary token, 10% stay as they are; the loss is on the chosen ones.

Each block is masked from its own generator, seeded by (seed, epoch, unit) for training and
(seed, block) for evaluation: the masks do not depend on the batch a block lands in, the number
of processes, or a resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tailorml.data.sft import IGNORE


@dataclass
class Masker:
    mask_prob: float
    mask_id: int
    specials: np.ndarray  # ids never chosen (CLS, SEP, PAD, ...), shape (k,)
    vocab_size: int
    pool: np.ndarray = field(init=False)  # ordinary token ids: the random replacements

    def __post_init__(self) -> None:
        self.specials = np.asarray(self.specials, dtype=np.int64)
        self.pool = np.setdiff1d(np.arange(self.vocab_size, dtype=np.int64), self.specials)

    def mask(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of one block `ids` (seq,): labels hold the original id where a
        token was chosen and IGNORE elsewhere."""
        chosen = (rng.random(len(ids)) < self.mask_prob) & ~np.isin(ids, self.specials)
        labels = np.where(chosen, ids, IGNORE)
        r = rng.random(len(ids))
        inputs = ids.copy()
        inputs[chosen & (r < 0.8)] = self.mask_id
        swap = chosen & (r >= 0.8) & (r < 0.9)
        inputs[swap] = self.pool[rng.integers(0, len(self.pool), int(swap.sum()))]
        return inputs, labels


def train_rng(seed: int, epoch: int, unit: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0, epoch, unit])


def eval_rng(seed: int, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, block])
