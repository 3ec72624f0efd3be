import json
import sys
import textwrap

import pytest
import torch.nn as nn

import archbench
from backbones import registry


def test_list_backbones_patterns_are_sorted_and_complete():
    dis = archbench.list_backbones("dis_*")
    assert dis == sorted(dis)
    kinds = ("zigzag", "cross", "alternate", "dim", "hybrid", "mamba2", "linear_attention")
    variants = {f"dis_{v}_{size}" for v in kinds for size in ("s2", "t2")}
    expected = {f"dis_{s}{p}" for s in "sbmlh" for p in (2, 4)} | {"dis_t2", "dis_t4"} | variants
    assert set(dis) == expected
    dit = set(archbench.list_backbones("dit_*"))
    assert {f"dit_{s}{p}" for s in ("s", "b", "l", "xl") for p in (2, 4, 8)} <= dit
    uvit = set(archbench.list_backbones("uvit_*"))
    assert {f"uvit_{s}{p}" for s in ("s", "s_deep", "m", "l", "h") for p in (2, 4)} <= uvit
    assert {"unet_ddpm", "unet_adm", "unet_t"} <= set(archbench.list_backbones("unet_*"))
    assert {"hourglass_s2", "hourglass_b2", "hourglass_mixed_s2", "hourglass_t2", "hourglass_mixed_t2"} == set(
        archbench.list_backbones("hourglass_*"))
    assert archbench.list_backbones(["dit_xl*", "dis_h?"]) == ["dis_h2", "dis_h4", "dit_xl2", "dit_xl4", "dit_xl8"]


def test_unknown_name_suggests_closest():
    with pytest.raises(KeyError, match="dis_s2"):
        archbench.build("dis_q2")


def test_unknown_override_names_it_and_lists_valid_ones():
    with pytest.raises(TypeError) as info:
        archbench.build("dit_t2", widht=64)
    message = str(info.value)
    assert "'widht'" in message and "width" in message and "num_heads" in message


def test_backbone_config_is_json_and_matches_build():
    config = archbench.backbone_config("dit_xl2")
    assert json.loads(json.dumps(config)) == config
    assert (config["depth"], config["width"], config["num_heads"], config["patch_size"]) == (28, 1152, 16, 2)
    model = archbench.build("dit_t2", depth=2)
    assert model.backbone_config == archbench.backbone_config("dit_t2", depth=2)
    assert len(model.blocks) == 2


@pytest.mark.parametrize(
    "name, option",
    [("uvit_t2", {"final_conv": False}), ("dis_t2", {"scan": "reference"}), ("dis_t2", {"drop_path": 0.0})],
)
def test_family_options_are_overridable(name, option):
    model = archbench.build(name, **option)
    assert model.backbone_config[next(iter(option))] == next(iter(option.values()))


def test_decorator_registration_on_a_class():
    @archbench.register_backbone("test_decorated_net", width=7)
    class DecoratedNet(nn.Module):
        def __init__(self, width: int = 3, image_size: int = 32):
            super().__init__()
            self.layer = nn.Linear(width, width)

    try:
        assert "test_decorated_net" in archbench.list_backbones("test_*")
        model = archbench.build("test_decorated_net")
        assert isinstance(model, DecoratedNet) and model.layer.in_features == 7
        assert archbench.backbone_config("test_decorated_net", width=5)["width"] == 5
        with pytest.raises(ValueError, match="already registered"):
            archbench.register_backbone("test_decorated_net", nn.Identity)
    finally:
        registry.unregister_backbone("test_decorated_net")


def test_entry_point_plugin_registers(tmp_path, monkeypatch):
    """A real installed-distribution layout (dist-info with entry_points.txt) on sys.path."""
    package = tmp_path / "archbench_plugin_demo"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            class PluginNet(nn.Module):
                '''A third-party backbone.'''

                def __init__(self, width: int = 4):
                    super().__init__()
                    self.proj = nn.Linear(width, width)
            """
        )
    )
    dist_info = tmp_path / "archbench_plugin_demo-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: archbench-plugin-demo\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[archbench.backbones]\nplugin_net = archbench_plugin_demo:PluginNet\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        loaded = registry.refresh_entry_points()
        assert "plugin_net" in loaded
        assert "plugin_net" in archbench.list_backbones("plugin_*")
        assert archbench.build("plugin_net", width=6).proj.out_features == 6
        assert registry.get_spec("plugin_net").tags == () and "plugin_net" not in archbench.list_backbones(tag="tiny")
    finally:
        registry.unregister_backbone("plugin_net")
        sys.modules.pop("archbench_plugin_demo", None)


def built_in_families() -> set[str]:
    return {s.family for s in map(registry.get_spec, archbench.list_backbones())
            if s.constructor.__module__.startswith("backbones.")}


def test_every_family_has_exactly_one_tiny_member():
    """Tests, CI and benchmarks take "the tiny member of each family" from this tag: a family without one fails."""
    tiny = archbench.list_backbones(tag="tiny")
    families = [registry.get_spec(n).family for n in tiny]
    assert sorted(families) == sorted(built_in_families()), "each family needs exactly one backbone tagged 'tiny'"
    assert {"dis_t2", "dit_t2", "uvit_t2", "unet_t"} <= set(tiny)


def test_the_cpu_study_tag_is_one_16_token_member_per_family_of_the_dis_paper():
    """The CPU studies compare the DiS paper's families at the same token count (patch 4 at 16x16; the U-Net as
    it is).  The hourglass skeleton is compared with isotropy in its own study (the hierarchy preset)."""
    members = archbench.list_backbones(tag="cpu_study")
    assert sorted(registry.get_spec(n).family for n in members) == ["dis", "dit", "unet", "uvit"]
    for name in members:
        model = archbench.build(name, image_size=16, in_channels=1)
        assert getattr(model, "patch_size", 4) == 4, name


def test_tiny_tags_mean_tiny_and_do_not_overlap():
    tiny, variants = archbench.list_backbones(tag="tiny"), archbench.list_backbones(tag="tiny_variant")
    assert not set(tiny) & set(variants)
    assert {"dis_t4", "dis_zigzag_t2", "dis_mamba2_t2", "dit_bimamba_t2", "uvit_bimamba_t2"} <= set(variants)
    assert {registry.get_spec(n).family for n in variants} <= {registry.get_spec(n).family for n in tiny}
    for name in tiny + variants:  # the whole test suite builds these at their defaults, many times
        model = archbench.build(name)
        assert sum(p.numel() for p in model.parameters()) < 1_500_000, name
        assert model.image_size <= 32, name


def test_list_backbones_filters_by_tag_and_pattern():
    assert archbench.list_backbones("dis_*", tag="tiny") == ["dis_t2"]
    assert archbench.list_backbones(["dit_*", "uvit_*"], tag="tiny_variant") == [
        "dit_bimamba_t2", "dit_t4", "uvit_bimamba_t2", "uvit_t4"]
    assert archbench.list_backbones(tag="cpu_study") == ["dis_t4", "dit_t4", "unet_t", "uvit_t4"]
    assert archbench.list_backbones("dis_s*", tag="tiny") == []
    assert set(archbench.list_backbones(tag="tiny")) < set(archbench.list_backbones())


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown backbone tag 'tiy'; known tags: .*tiny, tiny_variant"):
        archbench.list_backbones(tag="tiy")


def test_registered_tags_are_queryable_and_checked():
    @archbench.register_backbone("test_tagged_net", tags=("test_tag", "test_other"), width=5)
    class TaggedNet(nn.Module):
        def __init__(self, width: int = 3):
            super().__init__()
            self.layer = nn.Linear(width, width)

    archbench.register_backbone("test_tagged_fn", lambda width=2: nn.Linear(width, width), tags="test_tag")
    try:
        assert archbench.list_backbones(tag="test_tag") == ["test_tagged_fn", "test_tagged_net"]
        assert archbench.list_backbones(tag="test_other") == ["test_tagged_net"]
        assert registry.get_spec("test_tagged_fn").tags == ("test_tag",)  # one string is one tag
        assert {"test_tag", "test_other"} <= set(registry.backbone_tags())
        with pytest.raises(ValueError, match="tags must be non-empty words"):
            archbench.register_backbone("test_badly_tagged", nn.Identity, tags=("ok", ""))
        assert "test_badly_tagged" not in archbench.list_backbones("test_*")
    finally:
        registry.unregister_backbone("test_tagged_net")
        registry.unregister_backbone("test_tagged_fn")
    with pytest.raises(ValueError, match="unknown backbone tag 'test_tag'"):
        archbench.list_backbones(tag="test_tag")
