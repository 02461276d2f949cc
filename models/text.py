"""CPU-sized nets for token sequences: ``transformer_tiny`` and ``bilstm_tiny``.

Input: a LongTensor of token ids ``(B, L)``; id 0 is padding, and the padding mask ``ids != 0`` is computed inside
the model, so a sentence gives the same logits however much padding follows it (or where the padding sits).  Every
net has a submodule ``embed`` (``nn.Embedding``, ``padding_idx=0``) whose *output* is where the σ fit injects its
noise (a forward hook replaces it); whatever the net adds afterwards (positional embeddings) is added outside it.

Taps (pre-activation, each the output of a module followed by a ReLU): ``conv`` = ``proj``, a per-token Linear
after the encoder, ``(B, L, 64)``, zero input at padded positions (so its output there is the bias, whatever the
noise); ``fc1`` / ``fc2`` / ``fc3`` = ``classifier.0`` / ``.3`` / ``.6``, the head of kdq's tiny VGG.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from kdq.models import DEFAULT_MAX_LENGTH
from kdq.models.init import classifier_head, disable_inplace, init_weights
from kdq.models.taps import Tap

EMBED = "embed"  # the submodule whose output the σ fit's noise replaces (ArchInfo.inject)
DEFAULT_VOCAB = 64  # the builders' vocab_size when none is given (a dataset's vocab.txt gives the real one)
PAD = 0  # the padding id
EMBED_DIM = 32
PROJ_WIDTH = 64  # the width of the conv tap (``proj``) and of the head's hidden layers

TEXT_TAPS: dict[str, Tap] = {
    "conv": Tap("proj", "proj.weight"),
    "fc1": Tap("classifier.0", "classifier.0.weight"),
    "fc2": Tap("classifier.3", "classifier.3.weight"),
    "fc3": Tap("classifier.6", "classifier.6.weight"),
}


def token_mask(ids: torch.Tensor, max_length: int) -> torch.Tensor:
    """``ids != 0`` as a bool ``(B, L)`` mask; a ValueError for ids that are not ``(B, L)`` integers, for a sequence
    of padding only, or for one with more than ``max_length`` tokens."""
    if ids.dim() != 2 or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"a text net takes integer token ids of shape (B, L), not {tuple(ids.shape)} {ids.dtype}")
    mask = ids != PAD
    counts = mask.sum(1)
    if ids.shape[0] and bool((counts == 0).any()):
        raise ValueError("a sequence holds only padding (id 0): every sequence needs at least one token")
    if ids.shape[0] and int(counts.max()) > max_length:
        raise ValueError(f"a sequence has {int(counts.max())} tokens, more than this net's max_length {max_length}")
    return mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` ``(B, L, C)`` over the positions where ``mask`` ``(B, L)`` is True: ``(B, C)``."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The maximum of ``x`` ``(B, L, C)`` over the positions where ``mask`` ``(B, L)`` is True: ``(B, C)``."""
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


class TinyTransformer(nn.Module):
    """embed (+ learned positions, counted over the tokens) → 2 encoder layers with the padding mask → ``proj`` →
    ReLU → masked mean → classifier."""

    def __init__(self, num_classes: int, vocab_size: int, max_length: int, dropout: float):
        super().__init__()
        self.max_length = max_length
        self.embed = nn.Embedding(vocab_size, EMBED_DIM, padding_idx=PAD)
        self.position = nn.Embedding(max_length, EMBED_DIM)
        layer = nn.TransformerEncoderLayer(EMBED_DIM, nhead=2, dim_feedforward=64, dropout=dropout,
                                           activation="relu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.proj = nn.Linear(EMBED_DIM, PROJ_WIDTH)
        self.act = nn.ReLU()
        self.classifier = classifier_head(PROJ_WIDTH, PROJ_WIDTH, num_classes, dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = token_mask(ids, self.max_length)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # a token's index among the tokens: padding moves nothing
        x = self.embed(ids) + self.position(positions)
        x = self.encoder(x, src_key_padding_mask=~mask)
        x = self.proj(x.masked_fill(~mask.unsqueeze(-1), 0.0))
        return self.classifier(masked_mean(self.act(x), mask))


def tokens_first(mask: torch.Tensor) -> torch.Tensor:
    """The permutation of each row's positions that puts its tokens first, in their order (a stable sort)."""
    return torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices


class TinyBiLSTM(nn.Module):
    """embed → a bidirectional LSTM over the tokens only (packed; padding anywhere is skipped) → ``proj`` → ReLU →
    masked max → classifier."""

    def __init__(self, num_classes: int, vocab_size: int, max_length: int, dropout: float, hidden: int = 32):
        super().__init__()
        self.max_length = max_length
        self.embed = nn.Embedding(vocab_size, EMBED_DIM, padding_idx=PAD)
        self.lstm = nn.LSTM(EMBED_DIM, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, PROJ_WIDTH)
        self.act = nn.ReLU()
        self.classifier = classifier_head(PROJ_WIDTH, PROJ_WIDTH, num_classes, dropout)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The LSTM's ``(B, L, 2H)`` outputs at the positions of ``x``'s tokens, zero at padded positions.  cuDNN
        is off: its RNN backward refuses eval mode, which the σ fit needs, and the CPU kernel is deterministic."""
        order = tokens_first(mask)
        packed = pack_padded_sequence(x.gather(1, order.unsqueeze(-1).expand_as(x)), mask.sum(1).cpu(),
                                      batch_first=True, enforce_sorted=False)
        with torch.backends.cudnn.flags(enabled=False):
            out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out.gather(1, order.argsort(1).unsqueeze(-1).expand_as(out))  # back to each token's position

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = token_mask(ids, self.max_length)
        x = self.proj(self.encode(self.embed(ids), mask))
        return self.classifier(masked_max(self.act(x), mask))


def _finish(model: nn.Module) -> nn.Module:
    """kdq's initialisation of the CPU-sized nets (linear N(0, 1/fan_in), zero bias; embeddings and the LSTM keep
    PyTorch's), out-of-place ReLUs."""
    init_weights(model, linear_std=None)
    return disable_inplace(model)


def _check_sizes(vocab_size: int, max_length: int) -> None:
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2 (id 0 is padding), not {vocab_size}")
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")


def build_transformer_tiny(num_classes: int, dropout: float = 0.5, vocab_size: int = DEFAULT_VOCAB,
                           max_length: int = DEFAULT_MAX_LENGTH) -> TinyTransformer:
    """A 2-layer transformer encoder (dim 32, 2 heads, ffn 64) over ``vocab_size`` ids (0 = padding) with learned
    positions for sequences of at most ``max_length`` tokens; ``dropout`` in the encoder and the head."""
    _check_sizes(vocab_size, max_length)
    return _finish(TinyTransformer(num_classes, vocab_size, max_length, dropout))


def build_bilstm_tiny(num_classes: int, dropout: float = 0.5, vocab_size: int = DEFAULT_VOCAB,
                      max_length: int = DEFAULT_MAX_LENGTH) -> TinyBiLSTM:
    """A bidirectional LSTM (hidden 32 each way) over ``vocab_size`` ids (0 = padding), refusing sequences of more
    than ``max_length`` tokens (as the transformer, whose positions stop there); ``dropout`` in the head."""
    _check_sizes(vocab_size, max_length)
    return _finish(TinyBiLSTM(num_classes, vocab_size, max_length, dropout))
