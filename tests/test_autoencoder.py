"""CABAutoencoder: channel attention, shapes, and the save/load round trip."""

import torch

from pipeline.autoencoder import CABAutoencoder, ChannelAttention, DecoderOutput, EncoderOutput

TINY = dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4, reduction=4)


def test_channel_attention_rescales_each_channel_by_a_gate_in_0_1():
    torch.manual_seed(0)
    cab = ChannelAttention(16, reduction=4)
    x = torch.randn(2, 16, 5, 5) + 3.0  # keep away from zero so ratios are defined
    gate = cab(x) / x
    # One gate per (sample, channel), constant over space, strictly between 0 and 1.
    assert torch.allclose(gate, gate[..., :1, :1].expand_as(gate), atol=1e-5)
    assert (gate > 0).all() and (gate < 1).all()
    # It is the squeeze-excitation of the pooled input.
    pooled = x.mean(dim=(2, 3), keepdim=True)
    expected = torch.sigmoid(cab.up(torch.relu(cab.down(pooled))))
    assert torch.allclose(gate[..., :1, :1], expected, atol=1e-5)
    assert cab.down.out_channels == 4


def test_shapes_follow_the_config():
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    ae = CABAutoencoder(**TINY)
    assert ae.encode(x).latents.shape == (3, 4, 8, 8) and ae.latent_size == 8
    assert ae(x).shape == x.shape
    ae = CABAutoencoder(**{**TINY, "block_out_channels": (8, 16), "latent_channels": 2})
    z = ae.encode(x).latents
    assert z.shape == (3, 2, 16, 16) and ae.decode(z).sample.shape == x.shape


def test_encode_and_decode_return_outputs_as_diffusers_autoencoders_do():
    torch.manual_seed(0)
    ae = CABAutoencoder(**TINY).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        encoded, (z,) = ae.encode(x), ae.encode(x, return_dict=False)
        assert isinstance(encoded, EncoderOutput) and torch.equal(encoded.latents, z) and torch.equal(encoded[0], z)
        decoded, (y,) = ae.decode(z), ae.decode(z, return_dict=False)
        assert isinstance(decoded, DecoderOutput) and torch.equal(decoded.sample, y)
        assert torch.equal(ae(x), y)  # forward: the reconstruction as a tensor, for the training loss


def test_default_is_4x8x8():
    ae = CABAutoencoder()
    assert ae.encode(torch.zeros(1, 1, 32, 32)).latents.shape == (1, 4, 8, 8)


def test_save_pretrained_round_trip_is_identical(tmp_path):
    torch.manual_seed(0)
    ae = CABAutoencoder(**TINY).eval()
    ae.register_to_config(scaling_factor=0.37)
    ae.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    again = CABAutoencoder.from_pretrained(tmp_path).eval()
    assert again.config.scaling_factor == 0.37
    assert list(again.config.block_out_channels) == [8, 16, 16]
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ae(x), again(x))
