"""EmotionNet: shapes, gradients, stage switches, pretrained loading, precision/layout, summary CLI."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import efficientnet_b0

from emotionnet import EmotionNet, ModelConfig
from emotionnet.cli.summary import main as summary_main
from emotionnet.model.attention import LayerScale
from emotionnet.model.backbone import Backbone, PretrainedWeightsError, imagenet_cache_path

torch.set_num_threads(2)


def faces(batch: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def rgb_state_path(tmp_path_factory) -> Path:
    """A torchvision EfficientNet-B0 state dict with random weights and non-trivial BN statistics."""
    torch.manual_seed(0)
    state = efficientnet_b0().state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "b0.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("input_size", [48, 64, 96])
@pytest.mark.parametrize("batch", [1, 8])
def test_output_shape_and_finite(input_size: int, batch: int) -> None:
    model = EmotionNet(ModelConfig(input_size=input_size)).eval()
    with torch.no_grad():
        logits = model(faces(batch, input_size))
    assert logits.shape == (batch, 7)
    assert torch.isfinite(logits).all()


def test_default_map_is_6x6_and_other_sizes_interpolate_positions() -> None:
    model = EmotionNet().eval()
    assert model.backbone(faces(1)).shape == (1, 112, 6, 6)
    assert model.encoder.pos_embed.shape[-2:] == (6, 6)
    with torch.no_grad():  # a 64 px face gives an 8x8 map: positional embeddings get interpolated
        assert model(faces(2, 64)).shape == (2, 7)


def test_batch_of_one_trains() -> None:
    model = EmotionNet().train()
    F.cross_entropy(model(faces(1)), torch.tensor([3])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def assert_every_parameter_learns(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = EmotionNet(config).train()
    loss = F.cross_entropy(model(faces(8, config.input_size)), torch.arange(8) % 7)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_every_parameter_gets_a_gradient_in_default_config() -> None:
    assert_every_parameter_learns(ModelConfig())


@pytest.mark.parametrize(
    "override",
    [
        {"channel_attention": False},
        {"spatial_attention": False},
        {"transformer": False},
        {"channel_attention": False, "spatial_attention": False, "transformer": False},
        {"grayscale": "repeat"},
        {"backbone_stages": 7, "output_stride": 32, "input_size": 96},
        {"layer_scale": None, "readout": "cls", "stride_reduction": "stem"},  # the previous architecture
        {"layer_scale": None},
        {"readout": "cls"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_stage_switched_off_still_runs_and_learns(override: dict) -> None:
    assert_every_parameter_learns(ModelConfig(**override))


def test_switched_off_stage_has_no_parameters() -> None:
    full = sum(p.numel() for p in EmotionNet().parameters())
    no_transformer = sum(p.numel() for p in EmotionNet(ModelConfig(transformer=False)).parameters())
    assert no_transformer < full - 500_000


def test_ddp_without_unused_parameter_search() -> None:
    """DDP(find_unused_parameters=False) errors on the second step if a parameter went unused."""
    import tempfile

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with tempfile.NamedTemporaryFile() as store:
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
        try:
            model = DistributedDataParallel(EmotionNet(), find_unused_parameters=False)
            for step in range(2):
                F.cross_entropy(model(faces(2, seed=step)), torch.tensor([0, 1])).backward()
        finally:
            dist.destroy_process_group()


def test_gray_stem_equals_rgb_stem_on_replicated_image(rgb_state_path: Path) -> None:
    gray = Backbone(stages=5, output_stride=8, grayscale="stem", pretrained=str(rgb_state_path)).eval()
    rgb = efficientnet_b0()
    rgb.load_state_dict(torch.load(rgb_state_path, weights_only=True))
    rgb_stem = rgb.features[0].eval()
    rgb_stem[0].stride = (1, 1)  # output_stride 8 drops the stem stride
    image = faces(2)
    with torch.no_grad():
        torch.testing.assert_close(gray.features[0](image), rgb_stem(image.expand(-1, 3, -1, -1)))
        # And through the whole backbone: 1-channel stem vs the RGB stem fed the repeated channel.
        repeat = Backbone(
            stages=5, output_stride=8, grayscale="repeat", pretrained=str(rgb_state_path)
        ).eval()
        torch.testing.assert_close(gray(image), repeat(image))


def test_pretrained_weights_are_loaded(rgb_state_path: Path) -> None:
    state = torch.load(rgb_state_path, weights_only=True)
    model = EmotionNet(ModelConfig(pretrained=str(rgb_state_path)))
    torch.testing.assert_close(
        model.backbone.features[5][0].block[0][0].weight, state["features.5.0.block.0.0.weight"]
    )
    torch.testing.assert_close(
        model.backbone.features[0][0].weight, state["features.0.0.weight"].sum(dim=1, keepdim=True)
    )


def test_imagenet_weights_come_from_the_torch_hub_cache(rgb_state_path: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = imagenet_cache_path()
    assert cached.parent == tmp_path / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(rgb_state_path.read_bytes())
    model = EmotionNet(ModelConfig(pretrained="imagenet"))
    expected = torch.load(rgb_state_path, weights_only=True)["features.1.0.block.0.0.weight"]
    torch.testing.assert_close(model.backbone.features[1][0].block[0][0].weight, expected)


def offline() -> bool:
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        return True
    return False


@pytest.mark.skipif(not offline(), reason="would download the real ImageNet weights")
def test_missing_imagenet_weights_offline_say_where_to_put_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsError, match="put it at " + str(imagenet_cache_path())):
        EmotionNet(ModelConfig(pretrained="imagenet"))


class _Payload:
    """Unpickling this creates `marker`: proof that the loader executed the file's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_object_is_refused(tmp_path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": torch.zeros(32, 3, 3, 3), "payload": _Payload(marker)}, path)
    with pytest.raises(PretrainedWeightsError, match="refusing to unpickle"):
        EmotionNet(ModelConfig(pretrained=str(path)))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"conv.weight": torch.zeros(1)}, "not a torchvision EfficientNet-B0 state dict"),
        ({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, "does not fit EfficientNet-B0"),
        ([torch.zeros(1)], "not a state dict"),
    ],
)
def test_wrong_weight_files_are_refused(tmp_path, content, message) -> None:
    path = tmp_path / "w.pth"
    torch.save(content, path)
    with pytest.raises(PretrainedWeightsError, match=message):
        EmotionNet(ModelConfig(pretrained=str(path)))


def test_missing_weight_file_is_refused(tmp_path) -> None:
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        EmotionNet(ModelConfig(pretrained=str(tmp_path / "nope.pth")))


def test_state_dict_round_trip_is_exact(tmp_path) -> None:
    torch.manual_seed(1)
    model = EmotionNet().eval()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    torch.manual_seed(2)
    restored = EmotionNet()
    restored.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    restored.eval()
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(model(faces(2)), restored(faces(2)))


def test_channels_last_matches() -> None:
    model = EmotionNet().eval()
    x = faces(4)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_is_finite(dtype: torch.dtype) -> None:
    model = EmotionNet().train()
    with torch.autocast("cpu", dtype=dtype):
        logits = model(faces(4))
    assert logits.shape == (4, 7)
    assert torch.isfinite(logits.float()).all()
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"depth": "2"}, "model.depth must be int"),
        ({"pretrained": 3}, "model.pretrained must be str or null"),
        ({"dropout": 1.5}, r"model.dropout must be in \[0, 1\)"),
        ({"grayscale": "rgb"}, "grayscale must be 'stem' or 'repeat'"),
        ({"output_stride": 32}, "output_stride 32 is not reachable with 5 backbone stages"),
        ({"d_model": 100, "heads": 3}, "heads"),
        ({"readout": "mean"}, "model.readout must be one of cls, pooled"),
        ({"layer_scale": -0.1}, "model.layer_scale must be >= 0 or null"),
        ({"stride_reduction": "early"}, "stride_reduction must be 'stem' or 'late'"),
    ],
)
def test_bad_config_is_one_clear_error(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmotionNet(ModelConfig(**override))


def test_config_yaml_lists_every_field_with_its_default() -> None:
    import dataclasses

    import yaml

    path = Path(__file__).resolve().parents[1] / "configs" / "model" / "emotionnet.yaml"
    assert yaml.safe_load(path.read_text()) == dataclasses.asdict(ModelConfig())


def test_summary_prints_stages_shapes_and_flops(capsys) -> None:
    assert summary_main(["transformer=false", "model.channel_reduction=4"]) == 0
    out = capsys.readouterr().out
    assert "(1, 112, 6, 6)" in out
    assert "encoder" in out and "channel_attention" in out
    gflops = float(out.rsplit("FLOPs per image: ", 1)[1].split()[0])
    assert 0.05 < gflops < 0.15


def test_summary_rejects_bad_input_in_one_line(capsys, tmp_path) -> None:
    assert summary_main(["colour=red"]) == 2
    assert summary_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown key colour" in err[0] and "missing.yaml" in err[1]


def test_added_stages_start_as_the_identity_around_the_backbone() -> None:
    """With zero gains the full model computes exactly what backbone + pooling + head compute: a new
    stage cannot hurt at initialisation. The default small gains stay close to it (training mode, where
    BatchNorm gives the features their working scale; no dropout, so both see the same network)."""
    no_dropout = {"backbone_drop_path": 0.0, "dropout": 0.0, "head_dropout": 0.0}
    bare_config = ModelConfig(
        channel_attention=False, spatial_attention=False, transformer=False, **no_dropout
    )
    x = faces(8)
    for layer_scale, tolerance in ((0.0, 0.0), (0.01, 0.05)):
        torch.manual_seed(0)
        full = EmotionNet(ModelConfig(layer_scale=layer_scale, **no_dropout)).train()
        bare = EmotionNet(bare_config).train()
        shared = {k: v for k, v in full.state_dict().items() if k.startswith(("backbone.", "head."))}
        bare.load_state_dict(shared)
        with torch.no_grad():
            expected = bare(x)
            difference = (full(x) - expected).abs().max()
        assert difference <= tolerance * expected.abs().max(), (layer_scale, difference)


def test_previous_architecture_exports_load_with_their_structure(tmp_path) -> None:
    """An emotionnet.json written before stride_reduction / layer_scale / readout existed describes the
    old model: it loads strictly (same parameter names) and predicts as that model does."""
    import json

    from emotionnet.data.preprocessing import Preprocessing
    from emotionnet.inference.export import DESCRIPTION_NAME, load_export, save_export
    from emotionnet.model.pretrained import LEGACY_DEFAULTS

    torch.manual_seed(3)
    old = EmotionNet(ModelConfig(output_stride=16, **LEGACY_DEFAULTS)).eval()
    save_export(tmp_path / "m", old.state_dict(), old.config, Preprocessing())
    description = json.loads((tmp_path / "m" / DESCRIPTION_NAME).read_text())
    for key in LEGACY_DEFAULTS:
        del description["model"][key]
    (tmp_path / "m" / DESCRIPTION_NAME).write_text(json.dumps(description))
    loaded, read = load_export(tmp_path / "m")
    assert {k: getattr(read.model, k) for k in LEGACY_DEFAULTS} == LEGACY_DEFAULTS
    assert not any(isinstance(m, LayerScale) for m in loaded.modules())
    with torch.no_grad():
        assert torch.equal(loaded(faces(3)), old(faces(3)))


def test_late_stride_reduction_keeps_the_stem_stride_and_costs_less_than_the_stem_one(capsys) -> None:
    late = Backbone(stages=5, output_stride=8, stride_reduction="late").eval()
    stem = Backbone(stages=5, output_stride=8, stride_reduction="stem").eval()
    assert late.features[0][0].stride == (2, 2) and stem.features[0][0].stride == (1, 1)
    assert late(faces(1)).shape == stem(faces(1)).shape == (1, 112, 6, 6)
    flops = {}
    for reduction in ("late", "stem"):
        assert summary_main([f"stride_reduction={reduction}", "transformer=false"]) == 0
        flops[reduction] = float(capsys.readouterr().out.rsplit("FLOPs per image: ", 1)[1].split()[0])
    assert flops["late"] < 0.8 * flops["stem"]
