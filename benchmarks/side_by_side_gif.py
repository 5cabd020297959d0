"""Two orbit GIFs of the same camera path (``sf-render-orbit``) side by side, labelled, in one GIF.

Not a test: it made the README's orbit picture from the orbits of the benchmark's NeRF and
SparseFusion runs of one scene::

    R=<the comparison's --output>/runs/0_001011_test/sparsefusion-mini
    for m in nerf sparsefusion; do
        sf-render-orbit --load-config $R/$m/config.yml --output-dir orbit/$m --resolution 128 \\
            --num-frames 48 --fps 16 --elevation-deg 15
    done
    python benchmarks/side_by_side_gif.py orbit/nerf/orbit.gif orbit/sparsefusion/orbit.gif \\
        --labels "NeRF (no teacher)" SparseFusion --output docs/images/orbit_critter_v2_0_001011.gif

The frames share one 128-colour palette (from 8 frames spread over the video), which keeps the file small.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageSequence

LABEL_HEIGHT = 14
"""Pixels above each video for its label."""
PALETTE_SAMPLES = 8
"""Frames, spread over the video, whose colours make the shared palette."""


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("left", type=Path)
    parser.add_argument("right", type=Path)
    parser.add_argument("--labels", nargs=2, default=("", ""))
    parser.add_argument("--frame-ms", type=int, default=62, help="milliseconds per frame (default 62: 16 fps)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    videos = [
        [frame.convert("RGB") for frame in ImageSequence.Iterator(Image.open(p))] for p in (args.left, args.right)
    ]
    if len(videos[0]) != len(videos[1]) or videos[0][0].size != videos[1][0].size:
        raise SystemExit(
            f"Error: {args.left} and {args.right} differ in frame count or size "
            f"({len(videos[0])} × {videos[0][0].size} vs {len(videos[1])} × {videos[1][0].size}): render both "
            "with the same sf-render-orbit options."
        )
    width, height = videos[0][0].size
    frames = []
    for left, right in zip(*videos):
        canvas = Image.new("RGB", (2 * width, height + LABEL_HEIGHT))
        canvas.paste(left, (0, LABEL_HEIGHT))
        canvas.paste(right, (width, LABEL_HEIGHT))
        draw = ImageDraw.Draw(canvas)
        for column, label in enumerate(args.labels):
            draw.text((column * width + 4, 1), label, fill=(255, 255, 255))
        frames.append(canvas)
    samples = frames[:: max(1, len(frames) // PALETTE_SAMPLES)]  # the palette sees colours from all around
    mosaic = Image.new("RGB", (frames[0].width, frames[0].height * len(samples)))
    for row, frame in enumerate(samples):
        mosaic.paste(frame, (0, row * frames[0].height))
    palette = mosaic.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    indexed = [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    indexed[0].save(
        args.output, save_all=True, append_images=indexed[1:], duration=args.frame_ms, loop=0, optimize=True
    )
    print(f"{args.output}: {len(frames)} frames, {args.output.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
