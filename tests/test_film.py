"""Real footage: a film cut into scenes (PyAV, spikes of the frame change), a held-out stretch that never trains,
clips that never cross a cut; on a synthetic film of three scenes (the real one comes from the moviepy sdist)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import film_scene

from videoldm.data.build import DataError, build_source
from videoldm.data.film import (FILM_FILE, FilmClips, FilmSplit, detect_scene_cuts, film_scenes, film_video,
                                prepare_film, scene_change_scores, split_scenes)
from videoldm.data.sources import ClipFormat

@pytest.fixture(scope="module")
def film(synthetic_film) -> Path:
    return synthetic_film


def test_scene_cuts_are_found_at_the_cuts_and_nowhere_else(film):
    prepared = prepare_film(film, film.parent / "prepared", height=24, split=FilmSplit(held_out=(30, 54)))
    import json

    description = json.loads((prepared / FILM_FILE).read_text())
    assert description["cuts"] == [30, 54]
    assert (description["num_frames"], description["width"], description["fps"]) == (90, 40, 24.0)
    assert description["scenes"] == {"train": [[0, 30], [54, 90]], "held_out": [[30, 54]]}
    frames = np.load(prepared / "frames.npy")
    assert frames.shape == (90, 24, 40, 3) and frames.dtype == np.uint8


def test_a_prepared_film_is_kept_and_other_settings_are_refused(film):
    directory = film.parent / "kept"
    prepare_film(film, directory, height=24, split=FilmSplit(held_out=(30, 54)))
    stamp = (directory / "frames.npy").stat().st_mtime_ns
    assert prepare_film(film, directory, height=24, split=FilmSplit(held_out=(30, 54))) == directory
    assert (directory / "frames.npy").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="prepared with other settings"):
        prepare_film(film, directory, height=32, split=FilmSplit(held_out=(30, 54)))


def test_clips_stay_inside_scenes_of_their_split(film):
    prepared = prepare_film(film, film.parent / "clips", height=24, split=FilmSplit(held_out=(30, 54)))
    clip = ClipFormat(num_frames=6, fps=12, height=24, width=24, channels=3)
    train, held_out = FilmClips(prepared, clip, "train"), FilmClips(prepared, clip, "held_out")
    span = 11  # 6 frames every 2nd film frame
    assert train.stride == 2
    assert len(train) == (30 - span + 1) + (36 - span + 1) and len(held_out) == 24 - span + 1
    frames = np.load(prepared / "frames.npy")
    for source, scenes in ((train, [(0, 30), (54, 90)]), (held_out, [(30, 54)])):
        for index in range(len(source)):
            scene_start, offset = source.starts.locate(index)
            first = scene_start + offset
            assert any(start <= first and first + span <= end for start, end in scenes)
        sample = source.sample(3, torch.Generator().manual_seed(1))["video"]
        assert sample.shape == (6, 3, 24, 24) and -1 <= sample.min() and sample.max() <= 1
    assert held_out.clip_starts() == [30, 41] and held_out.clip_starts(hop=5) == [30, 35, 40]
    # a clip's frames are the film's, every second one (before the crop)
    first = held_out.clip_starts()[1]
    expected = torch.from_numpy(frames[first : first + span : 2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(held_out.clip_frames(first), expected)


def test_the_split_holds_out_a_stretch_and_drops_scenes_across_its_edges():
    scenes = [(0, 10), (10, 25), (25, 40), (40, 60), (60, 80)]
    split = split_scenes(scenes, FilmSplit(held_out=(20, 60), excluded=((0, 5), (70, 100))))
    assert split == {"held_out": [(25, 40), (40, 60)], "train": [(5, 10), (60, 70)]}
    assert film_scenes([10, 25], 30) == [(0, 10), (10, 25), (25, 30)]


def test_scores_spike_at_a_cut_not_at_motion():
    generator = torch.Generator().manual_seed(0)
    frames = torch.cat([film_scene(0, 20, generator), film_scene(2, 20, generator)])
    pixels = ((frames.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    scores = scene_change_scores(pixels)
    assert scores.argmax() == 20 and scores[20] > 10 * np.median(scores[1:])
    assert detect_scene_cuts(scores) == [20]
    assert detect_scene_cuts(np.full(40, 0.2)) == []  # fast motion everywhere: no spike, no cut


def test_the_film_comes_from_the_moviepy_sdist_layout(film, tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("moviepy_10_minutes/resources/bbb.mp4", film.read_bytes())
    sdist = tmp_path / "moviepy-2.2.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        member = tarfile.TarInfo("moviepy-2.2.1/docs/_static/medias/getting_started/moviepy_10_minutes/moviepy_10_minutes.zip")
        member.size = len(inner.getvalue())
        archive.addfile(member, io.BytesIO(inner.getvalue()))
    assert film_video(sdist).read() == film.read_bytes()
    source = build_source({"kind": "film", "path": str(sdist), "cache": str(tmp_path / "cache"), "num_frames": 4,
                           "held_out": [30, 54]}, height=24, width=24, channels=1)
    assert source[0]["video"].shape == (4, 1, 24, 24)  # grey models get the film's luma


def test_a_missing_film_names_the_file_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="pip download --no-deps --no-binary :all: moviepy==2.2.1"):
        build_source({"kind": "film", "path": str(tmp_path / "moviepy-2.2.1.tar.gz")}, height=24, width=24, channels=3)
