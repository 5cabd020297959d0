"""The viewer's opening camera for every dataparser we ship, and the SparseFusion panel without a browser.

The opening camera (``sparsefusion_ns/viewer/framing.py``) is checked geometrically on the
dataparsers' own outputs: the object's bounding sphere, mapped into the field frame with the
dataparser's transform, must be centred and wholly inside the view, seen from outside. The panel
(``viewer/panel.py``) is installed into a real viser server on 127.0.0.1 with a stand-in for
nerfstudio's viewer; ``tests/test_viewer_distillation.py`` checks both in a browser.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sparsefusion_ns.data.co3d_dataparser import Co3dDataParserConfig
from sparsefusion_ns.data.sparse_view_dataparser import SparseViewsDataParserConfig
from sparsefusion_ns.distillation.counters import TeacherCost
from sparsefusion_ns.distillation.novel_cameras import NovelCameraPoolConfig, build_novel_camera_pool
from sparsefusion_ns.distillation.progress import StepReport
from sparsefusion_ns.distillation.teacher_inputs import ndc_cameras
from sparsefusion_ns.scripts.make_demo_scene import DEMO_OBJECT
from sparsefusion_ns.synthetic.surface import sample_surface
from sparsefusion_ns.viewer.framing import PULL_BACK, framing_pose
from sparsefusion_ns.viewer.panel import SparseFusionViewerControl, ViewerPanelConfig, panel_picture
from tests.co3d_fixture import Co3dFixtureConfig, write_co3d_fixture
from tests.scenes import demo_scene
from tests.viewer_tools import LOCALHOST, free_port

CANVAS_ASPECT = 1.4  # a typical browser canvas beside the control panel (1280x800 window)


def _blender(scene: Path) -> Path:
    """The demo scene rewritten in the Blender layout (transforms_train.json, camera_angle_x)."""
    meta = json.loads((scene / "transforms.json").read_text())
    blender = {
        "camera_angle_x": 2 * np.arctan(0.5 * meta["w"] / meta["fl_x"]),
        "frames": [
            {"file_path": "./" + f["file_path"][: -len(".png")], "transform_matrix": f["transform_matrix"]}
            for f in meta["frames"]
        ],
    }
    (scene / "transforms.json").unlink()
    (scene / "transforms_train.json").write_text(json.dumps(blender))
    return scene


def _parsed(kind: str, tmp_path: Path):
    """(dataparser outputs of the train split, the object's shapes in the scene's own frame)."""
    if kind == "co3d":
        fixture = write_co3d_fixture(
            tmp_path / "co3d", Co3dFixtureConfig(frames_per_sequence=8, image_size_hw=(48, 64))
        )
        config = Co3dDataParserConfig(data=fixture.root, category=fixture.category, subset="fewview_test", num_frames=8,
                                      num_input_views=2, cache_dir=tmp_path / "cache", image_size=32)  # fmt: skip
        return config.setup().get_dataparser_outputs("train"), fixture.scene.shapes
    scene = demo_scene(tmp_path / "scene", num_views=8, resolution=24)
    if kind == "blender":
        scene = _blender(scene)
    config = SparseViewsDataParserConfig(data=scene, input_views=(1, 4))
    return config.setup().get_dataparser_outputs("train"), DEMO_OBJECT


def _view_coordinates(points: torch.Tensor, position, look_at, up) -> torch.Tensor:
    """Points as (right, up, forward) coordinates of a camera at ``position`` looking at ``look_at``."""
    forward = (look_at - position) / (look_at - position).norm()
    right = torch.linalg.cross(forward, up)
    right = right / right.norm()
    true_up = torch.linalg.cross(right, forward)
    offsets = points - position
    return torch.stack([offsets @ right, offsets @ true_up, offsets @ forward], dim=-1)


@pytest.mark.parametrize("kind", ["sparse-views", "blender", "co3d"])
def test_opening_camera_frames_the_object(kind, tmp_path):
    parsed, shapes = _parsed(kind, tmp_path)
    transform, scale = parsed.dataparser_transform.double(), float(parsed.dataparser_scale)
    surface = torch.from_numpy(sample_surface(shapes, 4000)[0])
    surface = scale * (surface @ transform[:, :3].T + transform[:, 3])  # into the field frame
    pose = framing_pose(parsed.cameras)
    view = _view_coordinates(surface, pose.position.double(), pose.look_at.double(), pose.up.double())
    assert float(view[:, 2].min()) > 0, "the viewer must start outside the object, facing it"
    fov = pose.fov_for_canvas(CANVAS_ASPECT)
    half_height = math.tan(fov / 2)
    x, y = view[:, 0] / view[:, 2], view[:, 1] / view[:, 2]  # image-plane coordinates at depth 1
    assert float(y.abs().max()) < half_height, "the whole object is in view vertically"
    assert float(x.abs().max()) < half_height * CANVAS_ASPECT, "the whole object is in view horizontally"
    # Framed, not a speck: the object spans at least a third of the view's height (measured 0.55-0.61).
    assert float(y.max() - y.min()) > 2 * half_height / 3
    # Centred: the middle of the object's extent near the view's centre. Measured 0.009 (co3d) and
    # 0.044 (demo scene, whose cameras aim at the origin, not at the middle of its object) of the half height.
    centre = torch.stack([(x.max() + x.min()) / 2, (y.max() + y.min()) / 2])
    assert float(centre.norm()) < 0.15 * half_height, (centre, half_height)


def test_opening_camera_of_one_camera_looks_along_its_centre_ray(tmp_path):
    parsed, _ = _parsed("sparse-views", tmp_path)
    one = parsed.cameras[0:1]
    pose = framing_pose(one)
    c2w = one.camera_to_worlds[0]
    direction = (pose.look_at - pose.position) / (pose.look_at - pose.position).norm()
    torch.testing.assert_close(direction, -c2w[:, 2], atol=1e-5, rtol=0)  # centred principal point: the −Z axis
    # on that axis, PULL_BACK times as far from the look-at point as the camera
    torch.testing.assert_close(pose.look_at - pose.position, PULL_BACK * (pose.look_at - c2w[:, 3]), atol=1e-5, rtol=0)
    assert pose.fov_for_canvas(0.5) > pose.fov  # a narrow canvas widens the vertical field of view


# ------------------------------------------------------------------------------------ the panel


@pytest.fixture
def server():
    import viser

    server = viser.ViserServer(host=LOCALHOST, port=free_port(), verbose=False)
    yield server
    server.stop()


def _pool(parsed):
    config = NovelCameraPoolConfig(num_circle_cameras=4, num_random_cameras=2)
    pool = build_novel_camera_pool(config, ndc_cameras(parsed.cameras), torch.Generator().manual_seed(0))
    from sparsefusion_ns.cameras.conventions import ndc_to_nerfstudio

    return pool, ndc_to_nerfstudio(pool.cameras, (16, 16))


def _report(step: int, phase: str = "diffusion", size: int = 32) -> StepReport:
    generator = torch.Generator().manual_seed(step)
    images = [torch.rand(3, size, size, generator=generator) for _ in range(3)]
    return StepReport(step=step, phase=phase, camera_index=3, camera_kind="circle", start_time=0.42,
                      totals=TeacherCost(unet_evals=7 * step), render=images[0], target=images[1], eft=images[2])  # fmt: skip


def test_panel_installs_into_a_running_viewer_and_shows_reports(server, tmp_path):
    parsed, _ = _parsed("sparse-views", tmp_path)
    control = SparseFusionViewerControl(ViewerPanelConfig(image_every=2, image_height=24))
    viewer = SimpleNamespace(
        viser_server=server,
        pipeline=SimpleNamespace(datamanager=SimpleNamespace(train_dataset=SimpleNamespace(cameras=parsed.cameras))),
        config=SimpleNamespace(camera_frustum_scale=0.1),
        stats_markdown=None,
    )
    pool, cameras = _pool(parsed)
    control._setup(viewer)  # nerfstudio's viewer first, then step (B) reports its pool (ns-train's order)
    assert control.pose is not None and not control.installed
    control.pool_ready(pool, cameras)
    assert control.installed and len(control.frusta) == len(pool) == 2 + 4 + 2
    assert all(frustum.visible for frustum in control.frusta)

    # Nobody watching: step (B) is not even asked for a report.
    assert not control.wants_report(0)
    for step in (3, 4):
        control.step_done(_report(step))
    assert control.iteration.value == 4 and control.unet_evaluations.value == 28
    assert control.phase.value == "diffusion" and control.start_time.value == "0.420"
    assert control.pool_camera.value == "3 (circle)"
    assert control.pictures_made == 1  # step 4 only (image_every 2)
    assert "data:image/png;base64," in control.picture.content
    assert control.current_frustum is not None and control.current_frustum.visible

    control.show_pool.gui_handle.value = False  # what the checkbox does when clicked
    control.show_pool.cb_hook(control.show_pool)
    assert not any(frustum.visible for frustum in control.frusta) and not control.current_frustum.visible


def test_panel_picture_is_render_target_eft_side_by_side():
    report = _report(1, size=32)
    picture = panel_picture(report, height=16)
    assert picture.shape == (16, 48, 3) and picture.dtype == np.uint8
    # area averaging of 2x2 blocks: each third is its image, downsampled (8-bit rounding: ≤ 0.5/255 + float error)
    expected = torch.nn.functional.avg_pool2d(report.render[None], 2)[0].permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(picture[:, :16].astype(np.float64), expected, atol=0.51)


def test_without_a_viewer_nothing_is_installed_or_reported(tmp_path):
    parsed, _ = _parsed("sparse-views", tmp_path)
    control = SparseFusionViewerControl(ViewerPanelConfig())
    control.pool_ready(*_pool(parsed))
    assert not control.installed and not control.wants_report(0)
