"""The family records (swinssl.models.registry): one answer per family to video or image, V1 or V2, and defaults."""

import pytest

from swinssl.models.registry import FAMILIES, PRESETS, family, family_for, is_video


def test_each_family_answers_from_its_record_for_presets_and_bare_names():
    assert [(name, f.video, f.style) for name, f in FAMILIES.items()] == [
        ("swinv2", False, "v2"), ("swin", False, "v1"), ("video_swinv2", True, "v2"), ("video_swin", True, "v1")]
    assert family("video_swin_tiny") is family("video_swin") is family_for(video=True, v2=False)
    assert family("video_swinv2_base").image is family("swinv2_huge")
    assert [name for name in PRESETS if is_video(name)] == [
        f"video_{style}_{size}" for style in ("swinv2", "swin") for size in ("tiny", "small", "base", "large")]
    assert family("swin").patch_size == 4 and family("video_swinv2").patch_size == (2, 4, 4)
    assert family("video_swin").window_size == (8, 7, 7)


def test_default_window_rule_is_official_only_for_v1_joint_attention():
    rules = {(f.name, attention): f.window_rule(attention)
             for f in FAMILIES.values() if f.video for attention in ("joint", "factorized")}
    assert rules == {("video_swinv2", "joint"): "geometric", ("video_swinv2", "factorized"): "geometric",
                     ("video_swin", "joint"): "official", ("video_swin", "factorized"): "geometric"}


def test_unknown_names_are_refused_with_the_names_of_their_kind():
    with pytest.raises(ValueError, match="unknown video arch 'video_swinv3_base'.*video_swin_tiny"):
        family("video_swinv3_base")
    with pytest.raises(ValueError, match="unknown arch 'swinv3'"):
        is_video("swinv3")
