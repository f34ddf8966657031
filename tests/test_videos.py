"""The ``videos`` source on real files made with PyAV: what real collections contain, and what breaks."""

from __future__ import annotations

import pytest
import torch

from fovea.core.data import SkipClip
from fovea.core.errors import FoveaError
from fovea.plugins.data.videos import VideoFolder, sample_indices
from tests.helpers import write_audio_only, write_video

S = 32  # frame_size for these tests


def grey_level(frames: torch.Tensor) -> list[float]:
    """Mean of the right half of each frame (T, 3, S, S): the writer paints frame i at grey 8 * i there."""
    return frames[..., S // 2:].float().mean(dim=(1, 2, 3)).tolist()


def read(path, num_frames=8, **options):
    source = VideoFolder(VideoFolder.Config(path=str(path.parent), **options), num_frames=num_frames, frame_size=S)
    return source[source.files.index(path)]


@pytest.mark.parametrize("name, codec", [("a.mp4", "mpeg4"), ("b.avi", "mpeg4"), ("c.mov", "mpeg4"),
                                         ("d.mkv", "libx264"), ("e.webm", "libvpx")])
def test_containers_sample_uniformly_over_the_clip(tmp_path, name, codec):
    path = write_video(tmp_path / name, num_frames=30, codec=codec)
    clip = read(path)
    assert clip.frames.shape == (8, 3, S, S) and clip.frames.dtype == torch.uint8
    assert clip.frame_indices == [0, 4, 8, 12, 17, 21, 25, 29] == sample_indices(30, 8)
    tolerance = 6 if codec == "mpeg4" else 12   # lossy codecs: the grey level is approximate
    for level, index in zip(grey_level(clip.frames), clip.frame_indices):
        assert level == pytest.approx(8 * index, abs=tolerance)
    assert clip.source == str(path)


def test_variable_frame_rate_samples_by_frame_not_by_time(tmp_path):
    # 20 frames with irregular timestamps: sampling by time would crowd the sparse stretches
    pts = [0, 1, 2, 5, 6, 7, 20, 21, 22, 23, 40, 41, 42, 43, 44, 60, 61, 62, 63, 64]
    clip = read(write_video(tmp_path / "vfr.mkv", num_frames=20, codec="ffv1", pix_fmt="yuv444p", pts=pts))
    assert clip.frame_indices == sample_indices(20, 8)
    assert grey_level(clip.frames) == pytest.approx([8 * i for i in clip.frame_indices], abs=1)


@pytest.mark.parametrize("width, height, pix_fmt", [(97, 61, "yuv444p"), (40, 200, "yuv444p"),
                                                    (80, 64, "gray"), (80, 64, "yuv420p10le")])
def test_odd_sizes_grayscale_and_10_bit_become_8_bit_rgb_squares(tmp_path, width, height, pix_fmt):
    clip = read(write_video(tmp_path / f"v_{pix_fmt}.mkv", num_frames=10, width=width, height=height,
                            codec="ffv1", pix_fmt=pix_fmt))
    assert clip.frames.shape == (8, 3, S, S) and clip.frames.dtype == torch.uint8
    assert grey_level(clip.frames) == pytest.approx([8 * i for i in clip.frame_indices], abs=3)
    if pix_fmt == "gray":
        assert torch.equal(clip.frames[:, 0], clip.frames[:, 1]) and torch.equal(clip.frames[:, 1], clip.frames[:, 2])


def test_rotation_metadata_is_applied(tmp_path):
    # stored 48 x 32 with its left quarter white; shown rotated 90 degrees counter-clockwise: the white
    # strip is then at the bottom of a 32 x 48 picture, whose centre crop keeps its top rows dark
    upright = read(write_video(tmp_path / "upright.mp4", num_frames=8, width=48, height=32))
    rotated = read(write_video(tmp_path / "rotated.mp4", num_frames=8, width=48, height=32, rotation=90))
    first, turned = upright.frames[0].float(), rotated.frames[0].float()   # (3, S, S)
    assert first[:, :, :2].mean() > 200 and first[:, :, -2:].mean() < 60   # white left, dark right
    assert turned[:, -2:, :].mean() > 200 and turned[:, :2, :].mean() < 60  # white bottom, dark top


def test_short_clip_policy(tmp_path):
    path = write_video(tmp_path / "short.mp4", num_frames=3)
    clip = read(path)
    assert clip.frame_indices == [0, 0, 1, 1, 1, 1, 2, 2]   # frames repeat: the clip plays slowed down
    with pytest.raises(SkipClip, match="3 frames, fewer than data.num_frames = 8"):
        read(path, short_clips="skip")


@pytest.mark.parametrize("make, reason", [
    (lambda d: (d / "empty.mp4").write_bytes(b"") and None, "empty file"),
    (lambda d: write_audio_only(d / "audio.mp4"), "no video stream"),
    (lambda d: (d / "text.mp4").write_text("not a video"), "cannot be decoded"),
    (lambda d: (d / "cut.mp4").write_bytes(write_video(d / "full.mp4", 30).read_bytes()[:2000]), "cannot be decoded"),
])
def test_unreadable_files_are_skipped_with_a_reason(tmp_path, make, reason):
    make(tmp_path)
    path = next(p for p in sorted(tmp_path.iterdir()) if p.name != "full.mp4")
    with pytest.raises(SkipClip, match=reason) as info:
        read(path)
    assert info.value.source == str(path)


def test_truncated_file_is_sampled_over_what_decodes(tmp_path):
    data = write_video(tmp_path / "whole.mkv", num_frames=30).read_bytes()
    path = tmp_path / "half.mkv"
    path.write_bytes(data[: len(data) // 2])
    clip = read(path)
    last = clip.frame_indices[-1]
    assert 8 <= last < 29                                   # the tail is gone: sampled over fewer frames
    assert grey_level(clip.frames)[-1] == pytest.approx(8 * last, abs=6)


def test_missing_or_empty_directory_says_what_to_put_there(tmp_path):
    with pytest.raises(FoveaError, match="no video directory at data.path = .*put your training videos there"):
        VideoFolder(VideoFolder.Config(path=str(tmp_path / "nowhere")), num_frames=8, frame_size=S)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FoveaError, match="no videos under"):
        VideoFolder(VideoFolder.Config(path=str(tmp_path)), num_frames=8, frame_size=S)


def test_files_are_found_in_subdirectories_in_a_stable_order(tmp_path):
    (tmp_path / "b").mkdir()
    write_video(tmp_path / "b" / "2.MP4", 5)
    write_video(tmp_path / "1.webm", 5, codec="libvpx")
    source = VideoFolder(VideoFolder.Config(path=str(tmp_path)), num_frames=4, frame_size=S)
    assert [p.relative_to(tmp_path).as_posix() for p in source.files] == ["1.webm", "b/2.MP4"]
