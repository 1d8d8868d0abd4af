"""The video-point model (paper §3.2) on a tiny I2VGen-XL built from configs, saved and loaded as a user would (CPU).

The pipeline folder is written by diffusers' own `I2VGenXLPipeline.save_pretrained` and read back by
`VideoPointModel.from_pretrained`, the path a hub id takes; nothing is hand-built to match the code.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import I2VGenXLUNet
from tiny_i2vgen_xl import IMAGE_ENCODER, UNET, VAE, save_tiny_i2vgen_xl
from tiny_text_encoder import MODEL_MAX_LENGTH, tiny_clip_text_config, tiny_clip_vocabulary

from training.model import (
    GUIDANCE_SCALE,
    Conditions,
    EntryCrossAttention,
    VideoPointModel,
    image_latents_with_position_mask,
    widen_for_points,
)


def tiny_config() -> dict:
    return {
        "vae": VAE,
        "unet": UNET,
        "text_encoder": tiny_clip_text_config(),
        "image_encoder": IMAGE_ENCODER,
        "tokenizer": {**tiny_clip_vocabulary(), "model_max_length": MODEL_MAX_LENGTH},
    }


def random_conditions(batch: int, frames: int, height: int, width: int) -> Conditions:
    return Conditions(
        text=torch.randn(batch, MODEL_MAX_LENGTH, 8),
        image_latents=image_latents_with_position_mask(torch.randn(batch, 4, 1, height, width), frames),
        image_embeddings=torch.randn(batch, 1, 8),
        fps=torch.full((batch,), 16.0),
    )


def test_widened_i2vgen_xl_reproduces_the_pretrained_unet_exactly(tmp_path):
    save_tiny_i2vgen_xl(tmp_path / "i2vgen-xl")
    model = VideoPointModel.from_pretrained(str(tmp_path / "i2vgen-xl")).eval()
    original = I2VGenXLUNet.from_pretrained(str(tmp_path / "i2vgen-xl"), subfolder="unet").eval()

    torch.manual_seed(1)
    rgb, conditions, timesteps = torch.randn(2, 4, 3, 8, 12), random_conditions(2, 3, 8, 12), torch.tensor([10, 900])
    with torch.no_grad():
        expected = original(rgb, timesteps, fps=conditions.fps, image_latents=conditions.image_latents,
                            image_embeddings=conditions.image_embeddings, encoder_hidden_states=conditions.text).sample
        zero_points = model(torch.cat([rgb, torch.zeros_like(rgb)], 1), timesteps, conditions)
        any_points = model(torch.cat([rgb, torch.randn_like(rgb)], 1), timesteps, conditions)
    assert zero_points.shape == (2, 8, 3, 8, 12)
    assert torch.equal(zero_points[:, :4], expected), "the RGB half must be I2VGen-XL's output, bit for bit"
    assert torch.equal(any_points[:, :4], expected), "new weights start at zero: the point input does not reach RGB yet"
    assert torch.equal(zero_points[:, 4:], torch.zeros_like(zero_points[:, 4:])), "the point half starts at zero"

    # Pretrained weights kept where they were; every new weight zero; the original UNet left alone.
    assert torch.equal(model.unet.conv_in.rgb.weight, original.conv_in.weight)
    assert torch.equal(model.unet.conv_out.rgb.weight, original.conv_out.weight)
    assert not model.unet.conv_in.points.weight.any() and not model.unet.conv_out.points.weight.any() and not model.unet.conv_out.points.bias.any()
    assert original.conv_in.in_channels == 8 and not hasattr(original.conv_in, "points")
    # I2VGen-XL's own scheduler, sampled with trailing spacing (zero-SNR starts from pure noise).
    assert model.scheduler.config.prediction_type == "v_prediction" and model.scheduler.config.rescale_betas_zero_snr
    model.scheduler.set_timesteps(25)
    assert model.scheduler.config.timestep_spacing == "trailing" and int(model.scheduler.timesteps[0]) == 999


def test_widening_refuses_a_unet_that_is_not_i2vgen_xl():
    from diffusers import UNet3DConditionModel

    with pytest.raises(TypeError, match="I2VGenXLUNet"):
        widen_for_points(UNet3DConditionModel(**{**UNET, "in_channels": 8}))


def test_entry_attention_is_identity_at_init_and_trainable():
    torch.manual_seed(0)
    attention = EntryCrossAttention(4, heads=2, dim_head=8)
    latents = torch.randn(2, 8, 3, 4, 6)
    assert torch.equal(attention(latents), latents)
    attention(latents).square().sum().backward()
    assert attention.rgb_from_points.to_out[0].weight.grad.abs().sum() > 0


def test_conditions_follow_i2vgen_xl_and_dropout_gives_the_unconditional_branch():
    torch.manual_seed(0)
    model = VideoPointModel.from_config(tiny_config()).eval()
    first_frame = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        first_latents = model.encode_video(first_frame[:, None])
        kept = model.conditions(first_frame, first_latents, ["the ball falls", "a box"], frames=4, fps=8)
        dropped = model.conditions(first_frame, first_latents, ["the ball falls", "a box"], frames=4, fps=8,
                                   drop_caption=torch.tensor([True, False]), drop_image=torch.tensor([False, True]))
        empty = model.encode_text([""])
    assert kept.image_latents.shape == (2, 4, 4, 8, 12)
    assert torch.equal(kept.image_latents[:, :, :1], first_latents)
    assert torch.allclose(kept.image_latents[:, :, 1:], torch.tensor([1 / 3, 2 / 3, 1.0]).view(1, 1, 3, 1, 1).expand(2, 4, 3, 8, 12))
    assert kept.image_embeddings.shape == (2, 1, 8) and kept.fps.tolist() == [8.0, 8.0]
    assert torch.equal(dropped.text[0], empty[0]) and torch.equal(dropped.text[1], kept.text[1])
    assert torch.equal(dropped.image_embeddings[0], kept.image_embeddings[0]) and not dropped.image_embeddings[1].any()
    unconditional = kept.unconditional(empty)
    assert torch.equal(unconditional.text, empty.expand(2, -1, -1)) and not unconditional.image_embeddings.any()
    assert torch.equal(unconditional.image_latents, kept.image_latents)
    assert GUIDANCE_SCALE == 9.0


def test_video_point_model_end_to_end_shapes_and_frozen_parts():
    torch.manual_seed(0)
    model = VideoPointModel.from_config(tiny_config()).train()
    video = torch.rand(2, 3, 3, 16, 24) * 2 - 1
    points = torch.rand(2, 3, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        rgb_latents = model.encode_video(video)
        point_latents = model.encode_points(points)
        conditions = model.conditions(video[:, 0], rgb_latents[:, :, :1], ["the ball falls", "<synthetic> a box slides"], frames=3, fps=16)
    assert rgb_latents.shape == point_latents.shape == (2, 4, 3, 8, 12)
    assert conditions.text.shape == (2, MODEL_MAX_LENGTH, 8)

    prediction = model(torch.cat([rgb_latents, point_latents], 1), torch.tensor([1, 999]), conditions)
    assert prediction.shape == (2, 8, 3, 8, 12)
    assert torch.equal(prediction[:, 4:], torch.zeros_like(prediction[:, 4:]))
    (prediction - torch.randn_like(prediction)).square().mean().backward()
    assert not model.vae.training and not model.text_encoder.training and not model.image_encoder.training and model.unet.training
    frozen = [*model.vae.parameters(), *model.text_encoder.parameters(), *model.image_encoder.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    trainable = model.trainable_parameters()
    assert len(trainable) == len(list(model.unet.parameters())) + len(list(model.entry_attention.parameters()))
    assert model.unet.conv_in.rgb.weight.grad.abs().sum() > 0
    assert model.unet.conv_out.points.weight.grad.abs().sum() > 0, "the zero-initialised point output learns"


def test_trainable_state_dict_round_trip(tmp_path):
    save_tiny_i2vgen_xl(tmp_path / "i2vgen-xl")
    model = VideoPointModel.from_pretrained(str(tmp_path / "i2vgen-xl"))
    with torch.no_grad():
        model.entry_attention.rgb_from_points.to_out[0].weight.fill_(0.5)
        model.unet.conv_out.points.weight.fill_(0.25)
    state = model.trainable_state_dict()
    assert state and all(key.startswith(("unet.", "entry_attention.")) for key in state)
    other = VideoPointModel.from_pretrained(str(tmp_path / "i2vgen-xl"))
    other.load_trainable_state_dict(state)
    assert torch.equal(other.unet.conv_out.points.weight, model.unet.conv_out.points.weight)
    with pytest.raises(KeyError, match="unexpected"):
        other.load_trainable_state_dict({**state, "vae.encoder.conv_in.weight": model.vae.encoder.conv_in.weight})
    with pytest.raises(KeyError, match="missing"):
        other.load_trainable_state_dict({key: value for key, value in state.items() if key != "unet.conv_in.points.weight"})


def saved_activation_bytes(model: VideoPointModel, latents: torch.Tensor, conditions: Conditions) -> tuple[int, dict]:
    """Bytes autograd keeps for the backward pass of one training forward, and the resulting gradients."""
    saved = []
    torch.manual_seed(3)  # the UNet's temporal convs use dropout in training: the same masks for both runs

    def keep(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        prediction = model(latents, torch.tensor([500, 20]), conditions)
    (prediction - 1).square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.unet.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return sum(saved), grads


def test_gradient_checkpointing_keeps_fewer_activations_and_the_same_gradients():
    torch.manual_seed(0)
    model = VideoPointModel.from_config(tiny_config()).train()
    latents, conditions = torch.randn(2, 8, 4, 16, 24), random_conditions(2, 4, 16, 24)
    names = set(model.state_dict())
    plain_bytes, plain_grads = saved_activation_bytes(model, latents, conditions)
    model.enable_gradient_checkpointing()
    checkpointed_bytes, checkpointed_grads = saved_activation_bytes(model, latents, conditions)
    assert checkpointed_bytes < 0.5 * plain_bytes, (checkpointed_bytes, plain_bytes)
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert set(model.state_dict()) == names, "checkpoint keys must not change"
