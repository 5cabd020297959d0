"""sf-convert-teacher: the authors' checkpoint layouts → a teacher folder, and every refusal."""

from __future__ import annotations

import json
import sys

import pytest
import safetensors.torch
import torch

from sparsefusion_ns.teacher.bundle import Teacher, TeacherConfig
from sparsefusion_ns.teacher.convert import (
    convert_teacher,
    entrypoint,
    prepare_teacher_state_dicts,
    read_vae_weights,
)
from sparsefusion_ns.teacher.state_dicts import StateDictMismatchError
from sparsefusion_ns.teacher.vae import (
    diffusers_vae_to_ldm,
    ldm_vae_to_diffusers,
    vae_state_dict_from_sd_checkpoint,
)

TINY = TeacherConfig.tiny()


def sd_checkpoint_state_dict(teacher: Teacher) -> dict[str, torch.Tensor]:
    """The teacher's VAE as a Stable Diffusion v1 checkpoint holds it, amid other SD tensors."""
    ldm = diffusers_vae_to_ldm(teacher.vae.autoencoder.state_dict(), levels=len(TINY.vae.block_out_channels))
    state = {"first_stage_model." + key: value for key, value in ldm.items()}
    state["model.diffusion_model.out.2.bias"] = torch.zeros(4)
    state["cond_stage_model.transformer.text_model.final_layer_norm.bias"] = torch.zeros(8)
    return state


@pytest.fixture(scope="module")
def source_teacher() -> Teacher:
    return Teacher.tiny(seed=11)


@pytest.fixture(scope="module")
def authors_files(source_teacher, tmp_path_factory):
    """Fake released files in the authors' layouts, written with torch.save."""
    folder = tmp_path_factory.mktemp("authors")
    eft = source_teacher.eft.state_dict()
    unet = {"unets.0." + key: value for key, value in source_teacher.unet.state_dict().items()}
    torch.save({"model_state_dict": eft, "step": 123}, folder / "ckpt_latest_eft.pt")
    torch.save({"model_state_dict": unet, "step": 456}, folder / "ckpt_latest.pt")
    torch.save({"state_dict": sd_checkpoint_state_dict(source_teacher), "global_step": 470000}, folder / "sd-v1-3.ckpt")
    return folder


def test_conversion_end_to_end(source_teacher, authors_files, tmp_path):
    output = convert_teacher(
        authors_files / "ckpt_latest_eft.pt",
        authors_files / "ckpt_latest.pt",
        authors_files / "sd-v1-3.ckpt",
        tmp_path / "teacher",
        config=TINY,
    )
    teacher = Teacher.from_pretrained(output)
    loaded = teacher.state_dict()
    for key, value in source_teacher.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert teacher.provenance["eft"] == {"file": "ckpt_latest_eft.pt", "step": 123, "dropped_keys": []}
    assert teacher.provenance["vldm"] == {"file": "ckpt_latest.pt", "step": 456}
    assert teacher.provenance["vae"] == {"file": "sd-v1-3.ckpt"}


def test_vae_sources_agree(source_teacher, authors_files, tmp_path):
    """An SD .ckpt, the same tensors as .safetensors, and a diffusers folder give the same weights."""
    safetensors.torch.save_file(sd_checkpoint_state_dict(source_teacher), tmp_path / "sd.safetensors")
    source_teacher.vae.autoencoder.save_pretrained(tmp_path / "vae_folder")
    expected = source_teacher.vae.autoencoder.state_dict()
    for path in (authors_files / "sd-v1-3.ckpt", tmp_path / "sd.safetensors", tmp_path / "vae_folder"):
        weights = read_vae_weights(path, TINY.vae)
        assert set(weights) == set(expected), path
        assert all(torch.equal(weights[key], value) for key, value in expected.items()), path
    with pytest.raises(FileNotFoundError, match="do not exist"):
        read_vae_weights(tmp_path / "stabilityai/sd-vae-ft-mse", TINY.vae)


class Arguments:
    """A custom class: loading it needs full unpickling."""


def test_pickle_only_checkpoint_is_refused_with_its_name(authors_files, tmp_path):
    torch.save({"model_state_dict": {}, "args": Arguments()}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match=r"pickled\.pt could not be read with torch\.load\(weights_only=True\)"):
        convert_teacher(
            tmp_path / "pickled.pt", authors_files / "ckpt_latest.pt", authors_files / "sd-v1-3.ckpt",
            tmp_path / "out", config=TINY,
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_runs_code_is_refused_pointing_at_safe_options(authors_files, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model_state_dict": {}, "args": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as error:
        convert_teacher(
            tmp_path / "evil.pt", authors_files / "ckpt_latest.pt", authors_files / "sd-v1-3.ckpt",
            tmp_path / "out", config=TINY,
        )  # fmt: skip
    message = str(error.value)
    assert not marker.exists()
    assert "evil.pt" in message and "Python object posix.system" in message and "Nothing in it was run" in message
    assert "released checkpoint files as downloaded" in message and ".safetensors" in message
    # torch's own hint points at the unsafe option: it is not passed on
    assert "likely succeed" not in message and "weights_only=False" not in message and "`False`" not in message
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((authors_files / "ckpt_latest_eft.pt").read_bytes()[:500])
    with pytest.raises(ValueError, match=r"truncated\.pt .* not a complete PyTorch file"):
        convert_teacher(
            truncated, authors_files / "ckpt_latest.pt", authors_files / "sd-v1-3.ckpt", tmp_path / "out", config=TINY
        )


def test_checkpoint_without_model_state_dict_is_refused(authors_files, tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "step": 1}, tmp_path / "other.pt")
    expected = r"other\.pt is not an authors' SparseFusion checkpoint.*found \['state_dict', 'step'\]"
    with pytest.raises(ValueError, match=expected):
        convert_teacher(
            authors_files / "ckpt_latest_eft.pt", tmp_path / "other.pt", authors_files / "sd-v1-3.ckpt",
            tmp_path / "out", config=TINY,
        )  # fmt: skip


def test_swapped_files_are_refused_listing_keys(authors_files, tmp_path):
    with pytest.raises(StateDictMismatchError) as caught:
        convert_teacher(
            authors_files / "ckpt_latest.pt", authors_files / "ckpt_latest_eft.pt", authors_files / "sd-v1-3.ckpt",
            tmp_path / "out", config=TINY,
        )  # fmt: skip
    message = str(caught.value)
    assert "ckpt_latest.pt does not match the expected architecture EpipolarFeatureTransformer" in message
    assert "missing (" in message and "encoder_model.conv1.weight" in message
    assert "unexpected (477)" in message and "unets.0.downs.0.1.block1.groupnorm.bias" in message
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder


def test_extra_eft_keys_need_the_flag_and_are_reported(source_teacher, authors_files, tmp_path, capsys):
    eft = dict(source_teacher.eft.state_dict(), **{"encoder_model.extra_head.weight": torch.ones(2)})
    torch.save({"model_state_dict": eft, "step": 9}, tmp_path / "eft_extra.pt")
    arguments = (tmp_path / "eft_extra.pt", authors_files / "ckpt_latest.pt", authors_files / "sd-v1-3.ckpt")
    with pytest.raises(StateDictMismatchError, match=r"unexpected \(1\):\n    encoder_model.extra_head.weight"):
        convert_teacher(*arguments, tmp_path / "strict", config=TINY)

    convert_teacher(*arguments, tmp_path / "lenient", config=TINY, allow_extra_eft_keys=True)
    assert "dropped 1 EFT checkpoint tensors" in capsys.readouterr().out
    assert Teacher.from_pretrained(tmp_path / "lenient").provenance["eft"]["dropped_keys"] == [
        "encoder_model.extra_head.weight"
    ]


def test_existing_output_is_kept_unless_overwrite(authors_files, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    arguments = (authors_files / "ckpt_latest_eft.pt", authors_files / "ckpt_latest.pt", authors_files / "sd-v1-3.ckpt")
    with pytest.raises(FileExistsError, match=r"--output .*out is not empty \(it holds notes.txt\).*--overwrite"):
        convert_teacher(*arguments, tmp_path / "out", config=TINY)
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
    convert_teacher(*arguments, tmp_path / "out", config=TINY, overwrite=True)
    assert (tmp_path / "out" / "teacher_config.json").is_file()
    (tmp_path / "empty").mkdir()  # an empty folder holds nothing to lose
    convert_teacher(*arguments, tmp_path / "empty", config=TINY)
    assert (tmp_path / "empty" / "teacher_config.json").is_file()


def test_cli_reports_errors_without_traceback(authors_files, tmp_path, monkeypatch, capsys):
    """The console script converts the released architecture: tiny files must be refused, with keys."""
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "sf-convert-teacher",
            "--eft", str(authors_files / "ckpt_latest_eft.pt"),
            "--vldm", str(authors_files / "ckpt_latest.pt"),
            "--vae", str(authors_files / "sd-v1-3.ckpt"),
            "--output", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    with pytest.raises(SystemExit) as caught:
        entrypoint()
    assert caught.value.code == 1
    out = capsys.readouterr().out
    assert "Error:" in out and "does not match the expected architecture EpipolarFeatureTransformer" in out
    assert "missing (" in out and "wrong shape (" in out and "t1." in out  # tiny transformers vs released ones
    assert not (tmp_path / "out").exists()


def test_full_size_key_layouts_are_accepted(shared_dir):
    """keys_full.json: the released EFT, VLDM (`unets.0.*`) and SD-v1 VAE (`first_stage_model.*`)
    layouts pass the converter's key handling for TeacherConfig.full(), on the meta device."""
    keys = json.loads((shared_dir / "reference" / "keys_full.json").read_text())

    def meta_tensors(entries, key="key"):
        dtypes = {"float32": torch.float32, "int64": torch.int64}
        return {e[key]: torch.empty(e["shape"], dtype=dtypes[e["dtype"]], device="meta") for e in entries}

    eft = meta_tensors(keys["eft"]["state_dict"])
    vldm = meta_tensors(keys["vldm"]["state_dict"])
    sd = meta_tensors(keys["vae"]["state_dict"], key="checkpoint_key")
    vae = ldm_vae_to_diffusers(vae_state_dict_from_sd_checkpoint(sd), levels=4)
    state_dicts, dropped = prepare_teacher_state_dicts(TeacherConfig.full(), eft, vldm, vae)
    assert dropped == []
    assert [len(state_dicts[name]) for name in ("eft", "unet", "vae")] == [278, 477, 248]

    del vldm["unets.0.final_conv.weight"]
    with pytest.raises(StateDictMismatchError, match=r"missing \(1\):\n    final_conv.weight"):
        prepare_teacher_state_dicts(TeacherConfig.full(), eft, vldm, vae)
