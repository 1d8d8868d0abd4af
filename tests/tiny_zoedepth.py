"""A tiny randomly initialised ZoeDepth (NYU + KITTI heads) saved like a hub checkpoint, for CPU tests."""

from __future__ import annotations

from pathlib import Path

# Model input for 448x256 frames with this size: padded 536x322 -> 96x64 (the default 384x512 gives 512x320).
TINY_PROCESSOR_SIZE = {"height": 64, "width": 96}


def save_tiny_zoedepth(directory: Path) -> Path:
    """Save config.json, model.safetensors and preprocessor_config.json; return the folder for POINTVID_ZOEDEPTH_MODEL.

    BEiT backbone image 64, patch 16, hidden 32, 4 layers with relative position bias; the patch
    transformer that votes NYU vs KITTI must have 4 layers and hidden size 128 (hard-coded upstream).
    The preprocessor config is written by transformers' own (torchvision-free) ZoeDepth processor
    class so the file has the format transformers writes; only its target size is small, to keep CPU runs fast.
    """
    import torch
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation
    from transformers.models.zoedepth.image_processing_pil_zoedepth import (
        ZoeDepthImageProcessorPil,
    )

    backbone = BeitConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                          intermediate_size=64, out_indices=[1, 2, 3, 4], use_relative_position_bias=True,
                          reshape_hidden_states=False)
    config = ZoeDepthConfig(
        backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, bottleneck_features=16,
        num_relative_features=8, bin_embedding_dim=16, num_attractors=[4, 2, 2, 1],
        bin_configurations=[{"name": "nyu", "n_bins": 8, "min_depth": 1e-3, "max_depth": 10.0},
                            {"name": "kitti", "n_bins": 8, "min_depth": 1e-3, "max_depth": 80.0}],
        num_patch_transformer_layers=4, patch_transformer_hidden_size=128, patch_transformer_intermediate_size=64,
        patch_transformer_num_attention_heads=2,
    )
    torch.manual_seed(0)
    directory = Path(directory)
    ZoeDepthForDepthEstimation(config).save_pretrained(directory)
    ZoeDepthImageProcessorPil(size=TINY_PROCESSOR_SIZE, ensure_multiple_of=32).save_pretrained(directory)
    return directory
