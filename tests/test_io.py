import numpy as np
import pytest
import torch

from videoldm.data.io import (
    VideoClip,
    VideoReadError,
    from_uint8,
    read_video,
    to_uint8,
    video_info,
    write_video,
)


def moving_square(frames: int = 8, height: int = 32, width: int = 48) -> torch.Tensor:
    """(T, 3, H, W) in [-1, 1]: a flat background and an 8x8 square moving right, 4 px a frame."""
    video = torch.empty(frames, 3, height, width)
    video[:, 0], video[:, 1], video[:, 2] = -0.6, -0.2, 0.2
    for t in range(frames):
        x = (4 * t) % (width - 8)
        video[t, :, 8:16, x : x + 8] = torch.tensor([0.9, 0.6, -0.8])[:, None, None]
    return video


def numbered(frames: int, height: int = 16, width: int = 16) -> np.ndarray:
    """(T, H, W, 3) uint8 whose frame t is filled with value 10 * t, so indices can be read back."""
    return np.broadcast_to((np.arange(frames, dtype=np.uint8) * 10)[:, None, None, None], (frames, height, width, 3)).copy()


def frame_ids(clip: VideoClip) -> list[int]:
    # mean over the flat frame and rounding absorb the small H.264 error
    return [round(float(v) / 10) for v in to_uint8(clip.frames).mean(axis=(1, 2, 3))]


def test_uint8_round_trip_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    frames = from_uint8(pixels)
    assert frames.shape == (2, 3, 5, 7) and frames.min() >= -1 and frames.max() <= 1
    np.testing.assert_array_equal(to_uint8(frames), pixels)
    assert to_uint8(frames[:, :1]).shape == (2, 5, 7, 3)  # gray becomes RGB


def test_mp4_round_trip(tmp_path):
    video = moving_square()
    path = write_video(video, tmp_path / "sub" / "square.mp4", fps=12)
    assert path.is_file()
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: index before media data

    clip = read_video(path)
    assert clip.frames.shape == video.shape
    assert clip.fps == 12
    assert clip.frames.dtype == torch.float32
    assert (clip.frames - video).abs().mean() < 0.05
    assert video_info(path) == {"num_frames": 8, "fps": 12.0, "width": 48, "height": 32}


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    video = moving_square(4, 31, 45)
    path = write_video(video, tmp_path / "odd.mp4", fps=8)
    clip = read_video(path)
    assert clip.frames.shape == (4, 3, 32, 46)
    assert (clip.frames[:, :, :31, :45] - video).abs().mean() < 0.05
    # the padding replicates the edge row / column
    assert (clip.frames[:, :, 31, :45] - video[:, :, 30]).abs().mean() < 0.05
    assert (clip.frames[:, :, :31, 45] - video[..., 44]).abs().mean() < 0.05


def test_gif_round_trip(tmp_path):
    video = moving_square()
    video[3] = video[2]  # a repeated frame must stay a frame of its own
    path = write_video(video, tmp_path / "square.gif", fps=12)
    clip = read_video(path)
    assert clip.frames.shape == video.shape
    assert clip.fps == pytest.approx(12, rel=0.05)
    np.testing.assert_array_equal(to_uint8(clip.frames), to_uint8(video))  # 3 colours: exact palette
    assert video_info(path)["num_frames"] == 8


def test_png_folder_round_trip_is_lossless(tmp_path):
    video = torch.rand(5, 3, 9, 11) * 2 - 1
    path = write_video(video, str(tmp_path / "frames") + "/")
    assert sorted(p.name for p in path.iterdir())[:2] == ["frame_00000.png", "frame_00001.png"]
    clip = read_video(path)
    assert clip.fps == 8
    np.testing.assert_array_equal(to_uint8(clip.frames), to_uint8(video))
    # a folder stores no rate: fps= declares it rather than resampling
    clip = read_video(path, fps=24)
    assert clip.fps == 24 and clip.frames.shape[0] == 5
    assert video_info(path) == {"num_frames": 5, "fps": 8.0, "width": 11, "height": 9}


def test_numpy_and_gray_input(tmp_path):
    gray = numbered(3)[..., :1]
    clip = read_video(write_video(gray, tmp_path / "gray"))
    np.testing.assert_array_equal(to_uint8(clip.frames), numbered(3))


def test_fps_resampling_picks_nearest_frames(tmp_path):
    path = write_video(numbered(24), tmp_path / "numbered.mp4", fps=24)
    half = read_video(path, fps=12)
    assert half.fps == 12 and half.frames.shape[0] == 12
    assert frame_ids(half) == list(range(0, 24, 2))
    double = read_video(path, fps=48)
    assert double.frames.shape[0] == 48
    assert frame_ids(double) == [(j + 1) // 2 if j < 47 else 23 for j in range(48)]


def test_frame_range_selection(tmp_path):
    path = write_video(numbered(24), tmp_path / "numbered.mp4", fps=24)
    assert frame_ids(read_video(path, start_frame=5, num_frames=4)) == [5, 6, 7, 8]
    assert frame_ids(read_video(path, start_frame=3, num_frames=3, stride=4)) == [3, 7, 11]
    # the range is counted in resampled frames
    assert frame_ids(read_video(path, fps=12, start_frame=2, num_frames=3)) == [4, 6, 8]
    assert frame_ids(read_video(path, start_frame=20, num_frames=10)) == [20, 21, 22, 23]
    with pytest.raises(VideoReadError, match="numbered.*range is empty"):
        read_video(path, fps=12, start_frame=12)


def test_missing_file(tmp_path):
    for fn in (read_video, video_info):
        with pytest.raises(FileNotFoundError, match="nothere.mp4"):
            fn(tmp_path / "nothere.mp4")


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for fn in (read_video, video_info):
        with pytest.raises(VideoReadError, match="broken.mp4"):
            fn(path)


def test_truncated_mp4(tmp_path):
    path = write_video(moving_square(), tmp_path / "cut.mp4", fps=12)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        read_video(path)


def test_empty_folder(tmp_path):
    folder = tmp_path / "emptyclip"
    folder.mkdir()
    for fn in (read_video, video_info):
        with pytest.raises(VideoReadError, match="emptyclip.*empty"):
            fn(folder)


def test_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=r"clip\.avi.*'\.avi'.*\.mp4.*\.gif"):
        write_video(moving_square(2), tmp_path / "clip.avi")
    assert not (tmp_path / "clip.avi").exists()


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4", "written.mp4", "written.gif", "frames"])
def test_reading_from_a_start_frame_seeks_to_exactly_the_frames_of_a_full_read(name, tmp_path):
    """Seeking (files) and skipping images (folders) give the frames a read from the start gives."""
    from conftest import real_video

    from videoldm.data.io import read_video, write_video

    if name in ("bikes.mp4", "carphone_pristine.mp4"):
        path = real_video(name)
    else:
        frames = read_video(real_video("carphone_pristine.mp4"), num_frames=40).frames[:, :, ::4, ::4]
        path = write_video(frames, tmp_path / name, fps=12)
    for fps in (None, 5.0) if name != "bikes.mp4" else (5.0,):  # bikes: 250 frames of 640x272, one rate
        full = read_video(path, fps=fps).frames
        for start in (1, 7, len(full) // 2, len(full) - 3):
            clip = read_video(path, fps=fps, start_frame=start, num_frames=3).frames
            assert torch.equal(clip, full[start : start + 3]), (fps, start)
    with pytest.raises(VideoReadError, match=f"start_frame={len(full) + 5} but the video has only {len(full)} frames"):
        read_video(path, fps=5.0, start_frame=len(full) + 5)


def test_a_variable_rate_video_is_read_from_its_start_instead_of_sought(tmp_path):
    """Timestamps with a gap (frame 4 missing from the 10 fps grid): seeking by time would land
    one frame off, so reading falls back to counting frames from the start."""
    import fractions

    import av

    path = tmp_path / "variable.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.time_base = fractions.Fraction(1, 10)
        for index, pts in enumerate([0, 1, 2, 3, *range(5, 21)]):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 10, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    full = read_video(path).frames
    assert len(full) == 20
    assert torch.equal(read_video(path, start_frame=8, num_frames=3).frames, full[8:11])


def test_mp4_of_the_same_frames_is_the_same_file_whatever_memory_held_before(tmp_path):
    """x264's macroblock tree read uninitialised memory on small frames: the same moving digits gave
    different pixels from run to run. glibc's MALLOC_PERTURB_ fills fresh allocations with a given
    byte, so two runs with different bytes stand for two runs of a longer-lived process."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from videoldm.data.io import write_video\n"
        "from videoldm.data.moving_digits import MovingDigitsConfig, generate_video\n"
        "frames = [generate_video(i, MovingDigitsConfig()).frames for i in range(3)]\n"
        "for i, video in enumerate(frames):\n"
        "    write_video(video, f'{sys.argv[1]}/{i}.mp4')\n"
    )
    files = []
    for perturb in ("165", "37"):
        out = tmp_path / perturb
        out.mkdir()
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=120,
                       env={**os.environ, "MALLOC_PERTURB_": perturb})
        files.append([(out / f"{i}.mp4").read_bytes() for i in range(3)])
    assert files[0] == files[1]
