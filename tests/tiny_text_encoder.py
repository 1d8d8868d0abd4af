"""A tiny CLIP text encoder and tokenizer for CPU tests (no downloads).

The vocabulary is CLIP's byte-level alphabet, each byte also as a word ending ("a</w>"), plus a
few hand-written merges: any caption tokenizes, and the model stays at a few hundred tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 16
MERGES = ["t h", "th e</w>", "b a", "ba ll</w>", "l l</w>"]


def tiny_clip_vocabulary() -> dict:
    """`vocab` and `merges` in the in-memory form VideoPointModel.from_config accepts as "tokenizer"."""
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(merge.split()) for merge in MERGES] + [BOS_TOKEN, EOS_TOKEN]
    return {"vocab": {token: index for index, token in enumerate(tokens)}, "merges": list(MERGES)}


def tiny_clip_tokenizer(directory: Path) -> CLIPTokenizer:
    """Write vocab.json + merges.txt into `directory` and load them as a CLIPTokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = tiny_clip_vocabulary()
    (directory / "vocab.json").write_text(json.dumps(vocabulary["vocab"]))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(vocabulary["merges"]) + "\n")
    return CLIPTokenizer.from_pretrained(directory, model_max_length=MODEL_MAX_LENGTH)


def tiny_clip_text_config() -> dict:
    """CLIPTextConfig kwargs matching the tiny vocabulary; hidden_size is the UNet's cross_attention_dim."""
    vocab = tiny_clip_vocabulary()["vocab"]
    return {
        "vocab_size": len(vocab),
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "bos_token_id": vocab[BOS_TOKEN],
        "eos_token_id": vocab[EOS_TOKEN],
        "pad_token_id": vocab[EOS_TOKEN],
    }
