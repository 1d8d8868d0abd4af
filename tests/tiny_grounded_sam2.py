"""Tiny randomly initialised Grounding DINO and SAM2 checkpoints, saved the way the hub repos are laid out.

Used by tests/test_reference_masks_grounded_sam2.py and the lead's end-to-end test: point
POINTVID_GROUNDING_DINO_MODEL and POINTVID_SAM2_MODEL at the two folders.
"""

from __future__ import annotations

from pathlib import Path

# Grounding DINO hard-codes the bert-base-uncased ids of its phrase delimiters (modeling_grounding_dino
# SPECIAL_TOKENS = [CLS] 101, [SEP] 102, "." 1012, "?" 1029), so the hand-written vocabulary keeps those ids.
_FIXED_TOKEN_IDS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}
_WORDS = ["a", "the", "dog", "woman", "man", "cat", "ball", "person", "car", "cup", "table", "red", "hand"]
_VOCAB_SIZE = 1100


def bert_vocab() -> dict[str, int]:
    """_VOCAB_SIZE tokens: delimiters at their bert-base-uncased ids, the test words after them, filler elsewhere."""
    tokens = [_FIXED_TOKEN_IDS.get(index, f"[unused{index}]") for index in range(_VOCAB_SIZE)]
    for offset, word in enumerate(_WORDS):
        tokens[1040 + offset] = word
    return {token: index for index, token in enumerate(tokens)}


def save_tiny_grounding_dino(directory: Path) -> Path:
    """A 2-layer-decoder Grounding DINO (Swin embed 8, BERT hidden 32) with tokenizer and PIL image processor.

    The image processor's shortest edge is 128 (the real one uses 800) so a CPU forward takes well under a second.
    """
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    directory.mkdir(parents=True, exist_ok=True)
    backbone = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7, out_indices=[2, 3, 4])
    text = BertConfig(vocab_size=_VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    torch.manual_seed(0)  # the same random weights every run, so the tests' detections and masks are reproducible
    model = GroundingDinoForObjectDetection(config).eval()
    model.save_pretrained(directory)
    BertTokenizer(vocab=bert_vocab(), do_lower_case=True).save_pretrained(directory)
    GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 256}).save_pretrained(directory)
    return directory


def save_tiny_sam2(directory: Path) -> Path:
    """A Hiera-16 SAM2 (blocks [1, 1, 2, 1], FPN 32, decoder hidden 32) taking the real 1024x1024 input."""
    import torch
    from transformers import Sam2Config, Sam2Model
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    directory.mkdir(parents=True, exist_ok=True)
    hiera = Sam2HieraDetConfig(
        hidden_size=16,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        global_attention_blocks=[3],
    )
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32)
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    torch.manual_seed(0)
    Sam2Model(config).eval().save_pretrained(directory)
    return directory


def save_tiny_grounded_sam2(directory: Path) -> tuple[Path, Path]:
    """Both checkpoints under `directory`: (grounding_dino_folder, sam2_folder)."""
    return save_tiny_grounding_dino(directory / "grounding-dino"), save_tiny_sam2(directory / "sam2")
