"""``sf-render-orbit``: a full turn on the circle fitted to the input cameras, as a video and a camera path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsefusion_ns.distillation.novel_cameras import look_at_cameras, orbit_cameras
from sparsefusion_ns.scripts.render_orbit import RenderOrbitConfig, render_orbit, write_mp4
from tests.torch_threads import torch_threads
from tests.trained_model import session_trained_model


@pytest.fixture(scope="session")
def trained_config(tmp_path_factory) -> Path:
    return session_trained_model(tmp_path_factory)


def test_orbit_cameras_circle_the_look_at_point_at_the_asked_elevation():
    target, up = torch.tensor([0.2, -0.1, 0.3]), torch.tensor([0.0, 1.0, 0.0])
    angles = torch.tensor([0.3, 1.5, 2.9])
    eyes = target + 4.0 * torch.stack([torch.sin(angles), torch.full_like(angles, 0.0), torch.cos(angles)], -1)
    known = look_at_cameras(eyes, target, up, torch.tensor([2.0, 2.0]), torch.tensor([0.05, 0.0]))
    cameras, circle, look_at = orbit_cameras(known, 8, elevation=math.radians(20))
    assert len(cameras) == 8
    torch.testing.assert_close(look_at, target, atol=1e-4, rtol=0)
    offsets = cameras.camera_centers() - look_at
    distances = offsets.norm(dim=-1)
    torch.testing.assert_close(distances, torch.full((8,), 4.0), atol=1e-3, rtol=0)
    elevation = torch.asin(offsets @ circle.normal / distances)
    torch.testing.assert_close(elevation, torch.full((8,), math.radians(20)), atol=1e-4, rtol=0)
    azimuths = torch.atan2(offsets @ torch.linalg.cross(circle.normal, circle.start), offsets @ circle.start)
    steps = torch.remainder(torch.diff(azimuths), 2 * math.pi)
    torch.testing.assert_close(steps, torch.full((7,), 2 * math.pi / 8), atol=1e-4, rtol=0)
    # every camera looks at the point: it projects onto the mean principal point
    projected = cameras.transform_points_ndc(look_at.expand(8, 1, 3))[:, 0, :2]
    torch.testing.assert_close(projected, torch.tensor([0.05, 0.0]).expand(8, 2), atol=1e-4, rtol=0)


def test_writes_a_looping_gif_per_channel_and_a_camera_path(trained_config, tmp_path):
    config = RenderOrbitConfig(load_config=trained_config, output_dir=tmp_path / "orbit", num_frames=6,
                               channels=("rgb", "accumulation"), resolution=24)  # fmt: skip
    with torch_threads(1):
        written = render_orbit(config)
    assert sorted(p.name for p in written) == ["camera_path.json", "orbit.gif", "orbit_accumulation.gif"]
    gif = Image.open(tmp_path / "orbit" / "orbit.gif")
    assert gif.n_frames == 6 and gif.size == (24, 24)
    frames = []
    for index in range(6):
        gif.seek(index)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.float64))
    assert max(np.abs(frames[0] - f).mean() for f in frames[1:]) > 1.0  # the view turns
    assert np.mean([f.mean() for f in frames]) > 5.0  # the object is in view, not an empty frame
    path = json.loads((tmp_path / "orbit" / "camera_path.json").read_text())
    assert len(path["camera_path"]) == 6 and path["render_height"] == 24
    assert len(path["camera_path"][0]["camera_to_world"]) == 16
    with pytest.raises(FileExistsError, match="--overwrite"):
        render_orbit(config)


def test_writes_an_mp4_without_an_ffmpeg_program(tmp_path):
    """PyAV encodes H.264 itself; an odd frame side is padded to even (yuv420p) and the frames survive."""
    import av

    ramp = np.linspace(0, 255, 23)
    frames = []
    for shift in range(5):  # a smooth ramp with a white square moving right, like a rendered object
        frame = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (23, 1)), np.full((23, 23), 60.0)], -1)
        frame[8:15, 3 + 3 * shift : 10 + 3 * shift] = 255
        frames.append(frame.astype(np.uint8))
    path = tmp_path / "orbit.mp4"
    write_mp4(path, frames, fps=10)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and (stream.height, stream.width) == (24, 24)
        decoded = [frame.to_ndarray(format="rgb24")[:23, :23].astype(float) for frame in container.decode(stream)]
    assert len(decoded) == 5
    errors = np.array([[np.abs(back - original).mean() for original in frames] for back in decoded])
    # crf 18 with 4:2:0 chroma at 23 px: a few levels of error; every decoded frame is closest to its own
    assert errors.diagonal().max() < 8.0
    assert (errors.argmin(axis=1) == np.arange(5)).all()


def test_ns_render_camera_path_renders_the_orbit(trained_config, tmp_path, monkeypatch):
    """nerfstudio's own renderer reads camera_path.json and renders the frames sf-render-orbit renders."""
    from nerfstudio.scripts import render
    from nerfstudio.utils import install_checks

    config = RenderOrbitConfig(load_config=trained_config, output_dir=tmp_path / "orbit", num_frames=4, resolution=24)
    with torch_threads(1):
        render_orbit(config)
        # ns-render insists on ffmpeg even for PNG frames (install_checks), which it writes without it
        monkeypatch.setattr(install_checks, "check_ffmpeg_installed", lambda: None)
        render.RenderCameraPath(
            load_config=trained_config,
            camera_path_filename=tmp_path / "orbit" / "camera_path.json",
            output_path=tmp_path / "ns_render",
            output_format="images",
            image_format="png",
        ).main()
    frames = sorted((tmp_path / "ns_render").glob("*.png"))
    assert len(frames) == 4
    gif = Image.open(tmp_path / "orbit" / "orbit.gif")
    for index, frame in enumerate(frames):
        gif.seek(index)
        ours = np.asarray(gif.convert("RGB"), dtype=np.float64)
        theirs = np.asarray(Image.open(frame).convert("RGB"), dtype=np.float64)
        assert theirs.shape == ours.shape == (24, 24, 3)
        # Same cameras (the demo scene's principal points are centred), same field: measured a mean
        # difference of at most 0.06 of 255 (GIF palette quantisation of a few pixels).
        assert np.abs(theirs - ours).mean() < 1.0
