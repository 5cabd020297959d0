"""``benchmarks/side_by_side_gif.py``: two orbit GIFs become one, labelled; mismatched videos are refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image, ImageSequence

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "side_by_side_gif.py"


def load_script():
    spec = importlib.util.spec_from_file_location("side_by_side_gif", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_gif(path: Path, colours, size=(16, 12)) -> Path:
    frames = [Image.new("RGB", size, colour) for colour in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


def test_pairs_frames_left_and_right_under_labels(tmp_path):
    script = load_script()
    left = write_gif(tmp_path / "left.gif", [(255, 0, 0), (0, 0, 255), (255, 0, 0)])
    right = write_gif(tmp_path / "right.gif", [(0, 255, 0), (255, 255, 0), (0, 0, 255)])  # distinct: GIF merges repeats
    output = tmp_path / "out" / "pair.gif"
    script.main([str(left), str(right), "--labels", "NeRF", "SF", "--output", str(output)])
    frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(Image.open(output))]
    assert len(frames) == 3 and frames[0].size == (32, 12 + script.LABEL_HEIGHT)
    # below the label band, each frame holds the left video's pixel then the right one's
    for frame, expected in zip(
        frames, [((255, 0, 0), (0, 255, 0)), ((0, 0, 255), (255, 255, 0)), ((255, 0, 0), (0, 0, 255))]
    ):
        assert frame.getpixel((8, script.LABEL_HEIGHT + 6)) == expected[0]
        assert frame.getpixel((24, script.LABEL_HEIGHT + 6)) == expected[1]


def test_refuses_videos_of_different_length(tmp_path):
    script = load_script()
    left = write_gif(tmp_path / "left.gif", [(255, 0, 0), (0, 0, 255)])
    right = write_gif(tmp_path / "right.gif", [(0, 255, 0), (0, 0, 255), (255, 0, 0)])
    with pytest.raises(SystemExit, match="differ in frame count or size"):
        script.main([str(left), str(right), "--output", str(tmp_path / "x.gif")])
