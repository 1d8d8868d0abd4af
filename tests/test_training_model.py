"""The video-point model (paper §3.2) on tiny random diffusers/transformers models, CPU only."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from tiny_text_encoder import (
    MODEL_MAX_LENGTH,
    tiny_clip_text_config,
    tiny_clip_tokenizer,
    tiny_clip_vocabulary,
)
from transformers import CLIPTextConfig, CLIPTextModel

from training.model import (
    SCHEDULER_CONFIG,
    EntryCrossAttention,
    VideoPointModel,
    expand_unet_channels,
)

RGB_UNET = {
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
    "cross_attention_dim": 8,
    "attention_head_dim": 4,
    "norm_num_groups": 2,
}
VAE = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "latent_channels": 4,
    "norm_num_groups": 2,
}


def tiny_config() -> dict:
    vocabulary = tiny_clip_vocabulary()
    return {
        "vae": VAE,
        "unet": RGB_UNET,
        "text_encoder": tiny_clip_text_config(),
        "tokenizer": {**vocabulary, "model_max_length": MODEL_MAX_LENGTH},
    }


def test_expanded_unet_reproduces_rgb_unet_for_any_point_latents():
    torch.manual_seed(0)
    rgb_unet = UNet3DConditionModel(**RGB_UNET).eval()
    unet = expand_unet_channels(rgb_unet).eval()
    assert (unet.config.in_channels, unet.config.out_channels) == (16, 8)
    assert rgb_unet.conv_in.in_channels == 8, "the RGB model must be left unchanged"

    noisy_rgb, cond = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    timesteps, text = torch.tensor([10, 700]), torch.randn(2, 5, 8)
    with torch.no_grad():
        expected = rgb_unet(torch.cat([noisy_rgb, cond], 1), timesteps, text).sample
        assert expected.abs().max() > 0
        for scale in (0, 1, 100):
            noisy_points = scale * torch.randn_like(noisy_rgb)
            output = unet(torch.cat([noisy_rgb, noisy_points, cond, cond], 1), timesteps, text).sample
            assert output.shape == (2, 8, 3, 8, 8)
            torch.testing.assert_close(output[:, :4], expected, atol=1e-6, rtol=0)
            assert torch.equal(output[:, 4:], torch.zeros_like(output[:, 4:]))


def test_expand_refuses_a_unet_without_condition_channels():
    with pytest.raises(ValueError, match="in_channels"):
        expand_unet_channels(UNet3DConditionModel(**{**RGB_UNET, "in_channels": 4}))


def test_entry_attention_is_identity_at_init_and_trainable():
    torch.manual_seed(0)
    attention = EntryCrossAttention(latent_channels=4, heads=2, dim_head=8)
    latents = torch.randn(2, 8, 3, 4, 6)
    output = attention(latents)
    assert output.shape == latents.shape
    assert torch.equal(output, latents)

    optimizer = torch.optim.Adam(attention.parameters(), lr=1e-2)
    loss = (attention(latents) - torch.randn_like(latents)).square().mean()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        output = attention(latents)
        changed = latents.clone()
        changed[:, :, 1] += 1  # frames are separate token sequences: frame 0 must not see frame 1
        output_changed = attention(changed)
    assert not torch.allclose(output[:, :4], latents[:, :4]) and not torch.allclose(output[:, 4:], latents[:, 4:])
    torch.testing.assert_close(output_changed[:, :, 0], output[:, :, 0])
    assert not torch.allclose(output_changed[:, :, 1], output[:, :, 1])


def test_video_point_model_end_to_end_shapes_and_frozen_parts():
    torch.manual_seed(0)
    model = VideoPointModel.from_config(tiny_config()).train()
    video = torch.rand(2, 3, 3, 16, 24) * 2 - 1
    points = torch.rand(2, 3, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        rgb_latents = model.encode_video(video)
        point_latents = model.encode_points(points)
        text = model.encode_text(["the ball falls", "<synthetic> a box slides off a table"])
    assert rgb_latents.shape == point_latents.shape == (2, 4, 3, 8, 12)
    assert text.shape == (2, MODEL_MAX_LENGTH, 8)

    noisy = torch.cat([rgb_latents, point_latents], 1)
    prediction = model(noisy, torch.tensor([1, 999]), text, rgb_latents[:, :, :1])
    assert prediction.shape == (2, 8, 3, 8, 12)
    assert torch.equal(prediction[:, 4:], torch.zeros_like(prediction[:, 4:])), "point outputs start at zero"
    with torch.no_grad():
        assert model.decode_video(prediction[:, :4]).shape == (2, 3, 3, 16, 24)
        assert model.decode_points(prediction[:, 4:]).shape == (2, 3, 3, 16, 24)

    prediction.square().mean().backward()
    assert not model.vae.training and not model.text_encoder.training and model.unet.training
    frozen = [*model.vae.parameters(), *model.text_encoder.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    trainable = model.trainable_parameters()
    assert len(trainable) == len(list(model.unet.parameters())) + len(list(model.entry_attention.parameters()))
    assert all(p.requires_grad for p in trainable)
    assert model.unet.conv_in.weight.grad.abs().sum() > 0

    assert model.scheduler.config.prediction_type == "v_prediction"
    assert model.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert model.scheduler.config.rescale_betas_zero_snr and model.scheduler.config.timestep_spacing == "leading"
    epsilon_model = VideoPointModel.from_config({**tiny_config(), "scheduler": {"prediction_type": "epsilon"}})
    assert epsilon_model.scheduler.config.prediction_type == "epsilon"


def test_from_pretrained_rgb_round_trip_and_trainable_state_dict(tmp_path):
    torch.manual_seed(0)
    rgb_unet = UNet3DConditionModel(**RGB_UNET)
    vae = AutoencoderKL(**VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config())).eval()
    rgb_unet.save_pretrained(tmp_path / "unet")
    vae.save_pretrained(tmp_path / "vae")
    text_encoder.save_pretrained(tmp_path / "text_encoder")
    tiny_clip_tokenizer(tmp_path / "tokenizer").save_pretrained(tmp_path / "tokenizer")
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp_path / "scheduler")

    model = VideoPointModel.from_pretrained_rgb(tmp_path, prediction_type="epsilon")
    assert torch.equal(model.unet.conv_in.weight[:, :4], rgb_unet.conv_in.weight[:, :4])
    assert torch.equal(model.unet.conv_in.weight[:, 8:12], rgb_unet.conv_in.weight[:, 4:])
    assert torch.equal(model.unet.conv_out.weight[:4], rgb_unet.conv_out.weight)
    assert torch.equal(model.unet.mid_block.resnets[0].conv1.weight, rgb_unet.mid_block.resnets[0].conv1.weight)
    assert torch.equal(model.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    assert model.unet.config.in_channels == 16 and model.unet.config.out_channels == 8
    assert model.scheduler.config.prediction_type == "epsilon"
    assert model.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert all(not p.requires_grad for p in model.text_encoder.parameters())
    with torch.no_grad():
        tokens = model.tokenizer(["the ball"], padding="max_length", max_length=MODEL_MAX_LENGTH, return_tensors="pt")
        torch.testing.assert_close(model.encode_text(["the ball"]), text_encoder(tokens.input_ids).last_hidden_state)

    with torch.no_grad():
        model.entry_attention.rgb_from_points.to_out[0].weight.fill_(0.5)
    state = model.trainable_state_dict()
    assert state and all(key.startswith(("unet.", "entry_attention.")) for key in state)
    other = VideoPointModel.from_pretrained_rgb(tmp_path)
    other.load_trainable_state_dict(state)
    loaded = other.entry_attention.rgb_from_points.to_out[0].weight
    assert torch.equal(loaded, model.entry_attention.rgb_from_points.to_out[0].weight)
    with pytest.raises(KeyError, match="unexpected"):
        other.load_trainable_state_dict({**state, "vae.encoder.conv_in.weight": vae.encoder.conv_in.weight})
    with pytest.raises(KeyError, match="missing"):
        other.load_trainable_state_dict({key: value for key, value in state.items() if key != "unet.conv_in.weight"})
