"""A generated text classification task (nothing to download): sequences with two marker tokens, labelled by
which marker comes first (`order`, needs attention over positions) or which occurs more often (`majority`)."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from datamodules.base import ClassificationDataModule

MARK_A, MARK_B = 1, 2  # the two marker tokens; 0 is reserved (never generated), fillers are 3 .. vocab_size - 1
FIRST_FILLER = 3
TASKS = ("order", "majority")


def marker_sequences(n: int, vocab_size: int, seq_len: int, max_marks: int, seed: int):
    """`n` sequences of `seq_len` int64 token ids, a deterministic function of `seed`.

    Each sequence holds a copies of MARK_A and b copies of MARK_B at random positions (a != b, both in 0..max_marks,
    uniform over such pairs) and random filler tokens elsewhere. Returns (tokens (n, seq_len) int64, a, b)."""
    if vocab_size <= FIRST_FILLER:
        raise ValueError(f"vocab_size must exceed {FIRST_FILLER} (two markers, a reserved id, fillers)")
    if max_marks < 1 or 2 * max_marks > seq_len:
        raise ValueError(f"max_marks must be in 1..seq_len/2, got {max_marks} for seq_len {seq_len}")
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randint(0, max_marks + 1, (n,), generator=g)
    b = torch.randint(0, max_marks, (n,), generator=g)
    b = b + (b >= a).long()  # uniform over 0..max_marks without a
    tokens = torch.randint(FIRST_FILLER, vocab_size, (n, seq_len), generator=g)
    rank = torch.rand(n, seq_len, generator=g).argsort(dim=1).argsort(dim=1)  # a random order of the positions
    tokens[rank < a[:, None]] = MARK_A
    tokens[(rank >= a[:, None]) & (rank < (a + b)[:, None])] = MARK_B
    return tokens, a, b


def order_labels(tokens: torch.Tensor) -> torch.Tensor:
    """1 where the first MARK_A comes before the first MARK_B (a missing marker counts as after the end), else 0."""
    n, length = tokens.shape
    pos = torch.arange(length).expand(n, length)
    first_a = torch.where(tokens == MARK_A, pos, length).min(dim=1).values
    first_b = torch.where(tokens == MARK_B, pos, length + 1).min(dim=1).values
    return (first_a < first_b).long()


def make_task(task: str, n: int, vocab_size: int, seq_len: int, max_marks: int, seed: int):
    """(tokens, labels) of `task`: `order` (first MARK_A before first MARK_B) or `majority` (more MARK_A than
    MARK_B). Both have 2 classes, balanced in expectation."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    tokens, a, b = marker_sequences(n, vocab_size, seq_len, max_marks, seed)
    labels = order_labels(tokens) if task == "order" else (a > b).long()
    return tokens, labels


class TextSynthDataModule(ClassificationDataModule):
    """Generated token sequences with a 2-class label (chance 50%); see `make_task`.

    Inputs are int64 token ids of shape (seq_len,) in 0..vocab_size-1; the secure strategy shares them as integer
    data from the data owner. Splits use the seeds 3*seed, 3*seed+1, 3*seed+2 (train, val, test)."""

    input_dtype = torch.int64

    def __init__(self, task: str = "order", vocab_size: int = 32, seq_len: int = 16, num_classes: int = 2,
                 max_marks: int = 4, train_size: int = 1024, val_size: int = 256, test_size: int = 512,
                 seed: int = 0, data_dir: str = "data", batch_size: int = 64, eval_batch_size=None,
                 num_workers: int = 0, pin_memory: bool = False, shuffle: bool = True, drop_last: bool = False):
        if num_classes != 2:
            raise ValueError("text_synth has 2 classes; leave data.num_classes alone")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, pin_memory, num_classes, 1, seq_len,
                         shuffle, drop_last)
        self.task, self.vocab_size, self.seq_len, self.max_marks = task, int(vocab_size), int(seq_len), int(max_marks)
        self.sizes = (int(train_size), int(val_size), int(test_size))
        self.seed = int(seed)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.seq_len,)

    def make_split(self, k: int) -> TensorDataset:
        tokens, labels = make_task(self.task, self.sizes[k], self.vocab_size, self.seq_len, self.max_marks,
                                   3 * self.seed + k)
        return TensorDataset(tokens, labels)

    def setup(self, stage=None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.val_set, self.test_set = (self.make_split(k) for k in range(3))
