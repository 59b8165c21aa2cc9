"""The model zoo: registry, head replacement, and every way of naming weights."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from edgekit.errors import ModelError
from edgekit.models import ModelSpec, build, get_spec, list_specs, register

REQUIRED = {
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_lite0",
}


def test_zoo_has_the_required_models():
    assert REQUIRED <= {spec.name for spec in list_specs()}


def test_duplicate_registration_is_refused():
    spec = get_spec("resnet18")
    with pytest.raises(ValueError, match="already registered"):
        register(spec)


def test_unknown_model_lists_close_matches():
    with pytest.raises(ModelError, match="did you mean.*resnet50"):
        get_spec("resnet5")
    with pytest.raises(ModelError, match="edgekit models"):
        get_spec("qqqqqq")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0"])
def test_head_is_replaced_for_an_odd_class_count(name):
    model, loaded = build(name, "none", num_classes=7)
    head = model.get_submodule(get_spec(name).head)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert loaded.source == "none"
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_each_spec_names_blocks_that_cover_the_backbone():
    for spec in list_specs():
        model = spec.build()
        blocks = spec.blocks(model)
        assert len(blocks) >= 4, spec.name
        in_blocks = {id(p) for block in blocks for p in block.parameters()}
        head = {id(p) for p in model.get_submodule(spec.head).parameters()}
        assert not in_blocks & head, f"{spec.name}: the head must not be inside a backbone block"


def test_lite0_default_weights_load_offline_with_their_own_preprocessing():
    model, loaded = build("efficientnet_lite0", "DEFAULT")
    assert loaded.source.startswith("package:")
    assert loaded.preprocessing.mean == (0.5, 0.5, 0.5) and loaded.preprocessing.interpolation == "bicubic"
    assert loaded.categories is not None and len(loaded.categories) == 1000
    assert get_spec("efficientnet_lite0").weights_offline


def test_torchvision_weight_names_resolve_without_download(monkeypatch):
    from edgekit.models.build import resolve_torchvision_weights

    spec = get_spec("resnet50")
    assert resolve_torchvision_weights(spec, "IMAGENET1K_V1").name == "IMAGENET1K_V1"
    assert resolve_torchvision_weights(spec, "ResNet50_Weights.IMAGENET1K_V2").name == "IMAGENET1K_V2"
    assert resolve_torchvision_weights(spec, "DEFAULT").name == "IMAGENET1K_V2"
    with pytest.raises(ModelError, match="valid: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"):
        resolve_torchvision_weights(spec, "IMAGENET22K")


def test_offline_download_failure_says_where_to_put_the_file(monkeypatch, tmp_path):
    from torchvision.models._api import WeightsEnum

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_network)
    with pytest.raises(ModelError, match=r"Place the file at .*checkpoints/resnet18-f37072fd\.pth"):
        build("resnet18", "DEFAULT", num_classes=3)


def test_torchvision_weights_come_from_the_hub_cache_offline(monkeypatch, tmp_path):
    """A user who placed the file in the torch hub cache (as the error says) gets it with no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = get_spec("resnet18").build().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert get_spec("resnet18").weights_offline
    model, loaded = build("resnet18", "DEFAULT", num_classes=5)
    assert loaded.source == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert len(loaded.preprocessing.mean) == 3 and loaded.preprocessing.crop == 224
    assert torch.equal(model.state_dict()["conv1.weight"], reference["conv1.weight"])
    assert model.fc.out_features == 5


def test_full_state_dict_file_round_trips(tmp_path):
    source, _ = build("resnet18", "none", num_classes=4)
    torch.save(source.state_dict(), tmp_path / "full.pt")
    model, loaded = build("resnet18", str(tmp_path / "full.pt"))
    assert loaded.source.startswith("file:") and not loaded.missing_keys
    assert model.fc.out_features == 4
    for key, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    source, _ = build("resnet18", "none", num_classes=4)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    model, _ = build("resnet18", str(tmp_path / "w.safetensors"), num_classes=4)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"])


def test_backbone_only_file_reports_missing_head_keys(tmp_path):
    source, _ = build("resnet18", "none")
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    torch.save(backbone, tmp_path / "backbone.pth")
    model, loaded = build("resnet18", str(tmp_path / "backbone.pth"), num_classes=3)
    assert set(loaded.missing_keys) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.state_dict()["conv1.weight"], backbone["conv1.weight"])


def test_checkpoint_of_another_architecture_is_an_error(tmp_path):
    other, _ = build("resnet34", "none", num_classes=3)
    torch.save(other.state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ModelError, match="shares no tensor names|does not fit"):
        build("mobilenet_v3_small", str(tmp_path / "r34.pt"), num_classes=3)
    wide, _ = build("resnet50", "none", num_classes=3)
    torch.save(wide.state_dict(), tmp_path / "r50.pt")
    with pytest.raises(ModelError, match="does not fit this model: .* has shape"):
        build("resnet18", str(tmp_path / "r50.pt"), num_classes=3)


class NotATensor:
    """Any custom class makes torch.save write a pickle that weights_only loading must refuse."""


def test_a_pickled_checkpoint_is_refused(tmp_path):
    torch.save({"model": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(ModelError, match="refused: it holds pickled Python objects"):
        build("resnet18", str(tmp_path / "pickled.pt"))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        build("resnet18", str(tmp_path / "nope.pt"))


def test_registering_a_new_model_is_a_few_lines():
    from torchvision.models import resnet18

    spec = register(
        ModelSpec(
            name="test_tiny_resnet",
            family="resnet",
            build=lambda: resnet18(num_classes=10),
            head="fc",
            blocks=lambda m: [m.layer1, m.layer2, m.layer3, m.layer4],
            input_size=32,
        )
    )
    model, _ = build("test_tiny_resnet", "none", num_classes=3)
    assert spec.default_weights is None and model.fc.out_features == 3
