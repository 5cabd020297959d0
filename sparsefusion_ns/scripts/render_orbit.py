"""``sf-render-orbit``: a 360° video around the object, on the circle fitted to the input cameras.

``ns-render interpolate`` only moves between the input cameras, a short arc for two views. This
command orbits the whole object on the circle the distillation's camera pool uses (fitted to the
input cameras' centres, looking at the point nearest their principal axes), optionally raised by
``--elevation-deg``, and writes:

- ``orbit.gif`` (or ``orbit.mp4``, H.264 through PyAV, which nerfstudio installs: no ffmpeg program needed), rendered
  directly by the trained model; ``--channels rgb depth accumulation`` adds one video per channel;
- ``camera_path.json``, the same orbit as a nerfstudio camera path, so that
  ``ns-render camera-path --load-config ... --camera-path-filename .../camera_path.json`` renders it
  with nerfstudio's own renderer (at the mean principal point: camera paths assume centred ones).

    sf-render-orbit --load-config outputs/.../config.yml --output-dir orbit/ --num-frames 60
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Tuple

import numpy as np
import torch
import tyro
from PIL import Image

from sparsefusion_ns.cameras.conventions import ndc_to_nerfstudio
from sparsefusion_ns.distillation.novel_cameras import orbit_cameras
from sparsefusion_ns.distillation.teacher_inputs import ndc_cameras
from sparsefusion_ns.utils.atomic_files import atomic_path, write_text_atomically
from sparsefusion_ns.utils.output_folders import prepare_output_folder
from sparsefusion_ns.utils.summary import print_summary, progress_bar

Channel = Literal["rgb", "depth", "accumulation"]


@dataclass
class RenderOrbitConfig:
    """Options of ``sf-render-orbit``."""

    load_config: Path
    """The run's ``config.yml``."""
    output_dir: Path = Path("orbit")
    """Folder for the videos and ``camera_path.json``."""
    num_frames: int = 60
    """Frames over the full turn."""
    fps: int = 20
    """Frames per second of the video."""
    elevation_deg: float = 0.0
    """Raise the orbit by this angle above the fitted circle, as seen from the look-at point."""
    resolution: int = 0
    """Height of the rendered frames in pixels; 0: the input views' height."""
    channels: Tuple[Channel, ...] = ("rgb",)
    """Which model outputs to write, one video each."""
    video_format: Literal["gif", "mp4"] = "gif"
    """GIF, or MP4 (H.264, yuv420p; written with PyAV's bundled FFmpeg libraries, so no ffmpeg program is needed)."""
    overwrite: bool = False
    """Replace this command's earlier outputs in a non-empty ``output_dir``."""


def _frame(output: torch.Tensor, channel: Channel) -> np.ndarray:
    if channel == "rgb":
        image = output.clamp(0, 1)
    else:
        values = output[..., 0]
        scale = values.max().clamp_min(1e-8) if channel == "depth" else 1.0
        image = (values / scale).clamp(0, 1)[..., None].expand(*values.shape, 3)
    return (image.cpu().numpy() * 255 + 0.5).astype(np.uint8)


def write_mp4(path: Path, frames: List[np.ndarray], fps: int) -> None:
    """H.264 MP4 of uint8 RGB frames (H, W, 3), padded at the bottom/right to even sides (yuv420p needs them)."""
    import av  # PyAV, a nerfstudio dependency: FFmpeg's libraries without the ffmpeg program

    height, width = frames[0].shape[:2]
    even = (height + height % 2, width + width % 2)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = even
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}  # visually lossless; the frames are small
        for frame in frames:
            padded = np.pad(frame, ((0, even[0] - height), (0, even[1] - width), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def camera_path_json(cameras, fps: int) -> dict:
    """A nerfstudio camera path (``ns-render camera-path``) through ``cameras`` (nerfstudio ``Cameras``)."""
    height, width = int(cameras.height[0]), int(cameras.width[0])
    path = []
    for index in range(cameras.shape[0]):
        matrix = torch.eye(4)
        matrix[:3] = cameras.camera_to_worlds[index]
        fov = math.degrees(2 * math.atan(height / 2 / float(cameras.fy[index])))
        path.append({"camera_to_world": matrix.flatten().tolist(), "fov": fov, "aspect": width / height})
    return {
        "camera_type": "perspective",
        "render_height": height,
        "render_width": width,
        "fps": fps,
        "seconds": cameras.shape[0] / fps,
        "camera_path": path,
    }


def render_orbit(config: RenderOrbitConfig) -> List[Path]:
    """Render and write the orbit; returns the files written."""
    from sparsefusion_ns.engine.eval_setup import eval_setup  # loads nerfstudio's pipeline machinery

    own = ["orbit*.gif", "orbit*.mp4", "camera_path.json"]
    prepare_output_folder(config.output_dir, config.overwrite, "sf-render-orbit --output-dir", own_outputs=own)
    _, pipeline, _, _ = eval_setup(config.load_config, test_mode="inference")
    model = pipeline.model
    model.eval()
    inputs = pipeline.datamanager.train_dataset.cameras
    ndc, circle, _ = orbit_cameras(ndc_cameras(inputs), config.num_frames, math.radians(config.elevation_deg))
    height = config.resolution or int(inputs.height[0])
    cameras = ndc_to_nerfstudio(ndc, (height, height)).to(model.device)
    frames = {channel: [] for channel in config.channels}
    progress = progress_bar("[bold]Rendering the orbit")
    with progress, torch.no_grad():
        task = progress.add_task("frames", total=config.num_frames)
        for index in range(config.num_frames):
            outputs = model.get_outputs_for_camera(cameras[index : index + 1])
            for channel in config.channels:
                frames[channel].append(_frame(outputs[channel], channel))
            progress.advance(task)
    written = []
    for channel, images in frames.items():
        path = Path(config.output_dir) / f"orbit{'' if channel == 'rgb' else '_' + channel}.{config.video_format}"
        with atomic_path(path) as temporary:
            if config.video_format == "gif":
                pil = [Image.fromarray(image) for image in images]
                pil[0].save(temporary, format="GIF", save_all=True, append_images=pil[1:],
                            duration=round(1000 / config.fps), loop=0)  # fmt: skip
            else:
                write_mp4(temporary, images, config.fps)
        written.append(path)
    path_file = Path(config.output_dir) / "camera_path.json"
    write_text_atomically(path_file, json.dumps(camera_path_json(cameras.to("cpu"), config.fps), indent=1))
    written.append(path_file)
    print_summary(
        "Orbit Rendered",
        [(path.name, path) for path in written]
        + [
            ("Frames", f"{config.num_frames} at {height}×{height} px, {config.fps} fps"),
            ("Orbit", f"radius {circle.radius:.2f}, elevation {config.elevation_deg:g}°"),
            (
                "Render with nerfstudio",
                f"ns-render camera-path --load-config {config.load_config} --camera-path-filename {path_file}",
            ),
        ],
    )
    return written


def entrypoint() -> None:
    """Entry point of the ``sf-render-orbit`` console script."""
    render_orbit(tyro.cli(RenderOrbitConfig))


if __name__ == "__main__":
    entrypoint()
