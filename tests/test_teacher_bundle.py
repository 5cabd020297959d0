"""The frozen teacher bundle: config, tiny random teacher, folder save/load and its errors."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch

from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.teacher import bundle
from sparsefusion_ns.teacher.bundle import CONFIG_FILE, FORMAT_VERSION, Teacher, TeacherConfig
from sparsefusion_ns.teacher.state_dicts import StateDictMismatchError


def cameras_around_origin(angles_deg: list[float], distance: float = 5.0) -> NDCCameras:
    """Cameras on a circle in the y = 0 plane, looking at the world origin (X_view = X R + T)."""
    rotations = []
    for angle in torch.tensor(angles_deg) * math.pi / 180:
        c, s = torch.cos(angle), torch.sin(angle)
        rotations.append(torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]))
    n = len(angles_deg)
    return NDCCameras(
        R=torch.stack(rotations),
        T=torch.tensor([[0.0, 0.0, distance]]).expand(n, 3).clone(),
        focal_length=torch.full((n, 2), 2.0),
        principal_point=torch.zeros(n, 2),
    )


def teacher_outputs(teacher: Teacher) -> dict[str, torch.Tensor]:
    """One pass through every component, on fixed inputs."""
    generator = torch.Generator().manual_seed(1)
    config = teacher.config
    size, grid = config.eft.image_size, config.eft.grid_size
    images = torch.rand(2, 3, size, size, generator=generator)
    rgb, features = teacher.eft.query(images, cameras_around_origin([-20.0, 25.0]), cameras_around_origin([5.0]))
    latents = teacher.vae.encode(images[:1])
    x_t = torch.randn(1, config.unet.latent_channels, grid, grid, generator=generator)
    eps = teacher.unet(x_t, teacher.schedule.log_snr(torch.tensor([0.4])), features[None])
    return {"rgb": rgb, "features": features, "latents": latents, "decoded": teacher.vae.decode(latents), "eps": eps}


@pytest.fixture(scope="module")
def tiny_teacher() -> Teacher:
    return Teacher.tiny(seed=0)


@pytest.fixture(scope="module")
def saved_folder(tiny_teacher, tmp_path_factory):
    tiny_teacher.provenance = {"eft": {"file": "ckpt_latest_eft.pt", "step": 7}}
    return tiny_teacher.save_pretrained(tmp_path_factory.mktemp("teachers") / "tiny")


def test_save_then_load_gives_identical_outputs(tiny_teacher, saved_folder):
    assert sorted(p.name for p in saved_folder.iterdir()) == [
        "eft.safetensors", "teacher_config.json", "unet.safetensors", "vae.safetensors",
    ]  # fmt: skip
    loaded = Teacher.from_pretrained(saved_folder)
    assert loaded.config == tiny_teacher.config
    assert loaded.provenance == {"eft": {"file": "ckpt_latest_eft.pt", "step": 7}}
    expected, actual = teacher_outputs(tiny_teacher), teacher_outputs(loaded)
    for name, value in expected.items():
        assert value.abs().max() > 0, f"{name} is identically zero: the test would not see lost weights"
        torch.testing.assert_close(actual[name], value, rtol=0, atol=0, msg=name)


def test_loaded_teacher_is_frozen_and_in_the_requested_dtype(saved_folder):
    teacher = Teacher.from_pretrained(saved_folder, device="cpu", dtype=torch.float64)
    teacher.train()
    assert not any(module.training for module in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert {p.dtype for p in teacher.parameters()} == {torch.float64}


def test_vae_file_is_a_plain_diffusers_state_dict(tiny_teacher, saved_folder):
    tensors = safetensors.torch.load_file(saved_folder / "vae.safetensors")
    assert set(tensors) == set(tiny_teacher.vae.autoencoder.state_dict())
    assert "decoder.mid_block.attentions.0.to_q.weight" in tensors


def test_missing_folder_and_missing_file_are_named(saved_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="sf-convert-teacher"):
        Teacher.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{CONFIG_FILE} is missing"):
        Teacher.from_pretrained(tmp_path / "empty")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("teacher_config.json", "eft.safetensors", "vae.safetensors"):
        (partial / name).write_bytes((saved_folder / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="lacks unet.safetensors"):
        Teacher.from_pretrained(partial)


def copy_with_config(saved_folder, target, edit):
    target.mkdir()
    for path in saved_folder.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    metadata = json.loads((target / CONFIG_FILE).read_text())
    edit(metadata)
    (target / CONFIG_FILE).write_text(json.dumps(metadata))
    return target


def test_newer_format_and_foreign_folders_are_refused(saved_folder, tmp_path):
    newer = copy_with_config(saved_folder, tmp_path / "newer", lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="Upgrade sparsefusion-ns"):
        Teacher.from_pretrained(newer)
    foreign = copy_with_config(saved_folder, tmp_path / "foreign", lambda m: m.update(format="something-else"))
    with pytest.raises(ValueError, match="not a 'sparsefusion-ns-teacher' one"):
        Teacher.from_pretrained(foreign)


def test_wrong_architecture_lists_keys_and_names_the_architecture(saved_folder, tmp_path):
    def fewer_unet_blocks(metadata):
        metadata["config"]["unet"]["num_resnet_blocks"] = [1, 1, 1, 1]

    folder = copy_with_config(saved_folder, tmp_path / "wrong", fewer_unet_blocks)
    with pytest.raises(StateDictMismatchError) as caught:
        Teacher.from_pretrained(folder)
    message = str(caught.value)
    assert "unet.safetensors" in message
    assert "VLDMUNet with VLDMUNetConfig(dim=8" in message and "num_resnet_blocks=(1, 1, 1, 1)" in message
    assert "unexpected (136)" in message and "downs.0.2.1.block1.groupnorm.bias" in message  # 2nd GC block, level 0


def test_broken_files_are_named(saved_folder, tmp_path):
    truncated = copy_with_config(saved_folder, tmp_path / "truncated", lambda m: None)
    data = (truncated / "vae.safetensors").read_bytes()
    (truncated / "vae.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated/vae\.safetensors is not a readable \.safetensors file"):
        Teacher.from_pretrained(truncated)
    garbled = copy_with_config(saved_folder, tmp_path / "garbled", lambda m: None)
    (garbled / "eft.safetensors").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(ValueError, match=r"garbled/eft\.safetensors is not a readable"):
        Teacher.from_pretrained(garbled)
    not_json = copy_with_config(saved_folder, tmp_path / "not_json", lambda m: None)
    (not_json / CONFIG_FILE).write_text('{"format": "sparsefusion-ns-teacher", ')
    with pytest.raises(ValueError, match=rf"not_json/{CONFIG_FILE} is not valid JSON"):
        Teacher.from_pretrained(not_json)
    invalid = copy_with_config(saved_folder, tmp_path / "invalid", lambda m: m["config"].update(efts={}))
    with pytest.raises(ValueError, match=rf"invalid/{CONFIG_FILE} does not describe a valid teacher.*efts"):
        Teacher.from_pretrained(invalid)


def test_weights_holding_nan_are_refused(saved_folder, tmp_path):
    folder = copy_with_config(saved_folder, tmp_path / "nan", lambda m: None)
    tensors = safetensors.torch.load_file(folder / "unet.safetensors")
    tensors["final_conv.weight"][0, 0] = float("nan")
    tensors["final_conv.bias"][:] = float("inf")
    safetensors.torch.save_file(tensors, folder / "unet.safetensors")
    with pytest.raises(
        ValueError, match=r"nan/unet\.safetensors holds NaN or infinite values in 2 tensor\(s\): final_conv"
    ):
        Teacher.from_pretrained(folder)


def test_writing_is_atomic(tiny_teacher, tmp_path, monkeypatch):
    target = tmp_path / "teacher"
    real_save = safetensors.torch.save_file
    calls = []

    def fail_on_second_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(bundle.safetensors.torch, "save_file", fail_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        tiny_teacher.save_pretrained(target)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one is left
    monkeypatch.undo()

    tiny_teacher.save_pretrained(target)
    with pytest.raises(FileExistsError, match="already exists"):
        tiny_teacher.save_pretrained(target)
    other = Teacher.tiny(seed=5)
    other.save_pretrained(target, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["teacher"]
    reloaded = safetensors.torch.load_file(target / "unet.safetensors")
    assert torch.equal(reloaded["final_conv.weight"], other.unet.final_conv.weight)


def test_tiny_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = Teacher.tiny(seed=3), Teacher.tiny(seed=3), Teacher.tiny(seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    b_tensors = b.state_dict()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b_tensors[key]), key
    assert not torch.equal(a.unet.final_conv.weight, c.unet.final_conv.weight)
    assert a.unet.final_conv.weight.abs().min() > 0  # zero-initialised upstream, random here


def test_full_teacher_parameter_counts_match_the_released_models(shared_dir):
    keys = json.loads((shared_dir / "reference" / "keys_full.json").read_text())
    with torch.device("meta"):
        counts = Teacher(TeacherConfig.full()).parameter_counts()
    assert counts["eft"] == keys["eft"]["param_count_total"]
    assert counts["unet"] == keys["vldm"]["param_count_unet"]
    assert counts["vae"] == keys["vae"]["param_count"]
    assert counts["total"] == counts["eft"] + counts["unet"] + counts["vae"]


def test_config_round_trip_and_consistency_checks():
    for config in (TeacherConfig.full(), TeacherConfig.tiny()):
        assert TeacherConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown TeacherConfig fields"):
        TeacherConfig.from_dict({"sampler": {}})
    tiny = TeacherConfig.tiny()
    with pytest.raises(ValueError, match="EFT features have 16 channels, the UNet expects 256"):
        TeacherConfig(eft=tiny.eft, unet=TeacherConfig.full().unet, vae=tiny.vae)


def test_configs_share_one_serialiser_and_the_on_disk_json_is_unchanged():
    """Every teacher config (de)serialises through utils.config_dicts; the JSON keeps the layout of the
    folders already written (field order, lists for tuples, nested components)."""
    config = TeacherConfig.tiny()
    data = config.to_dict()
    assert list(data) == ["eft", "unet", "vae", "schedule"]
    assert data["unet"]["dim_mults"] == [1, 2, 4, 4] and data["vae"]["block_out_channels"] == [8, 8, 16, 16]
    assert data["schedule"]["offset"] == 0.008
    restored = TeacherConfig.from_dict(json.loads(json.dumps(data)))
    assert restored == config and isinstance(restored.vae.block_out_channels, tuple)
    partial = TeacherConfig.from_dict({"eft": data["eft"], "unet": data["unet"], "vae": data["vae"]})
    assert partial.schedule == config.schedule  # a missing component keeps its default
    with pytest.raises(ValueError, match="unknown CosineLogSNRScheduleConfig fields"):
        TeacherConfig.from_dict({**data, "schedule": {"offsett": 0.0}})
