"""The clip cache (decode once, resumable, atomic shards) and the torchdata loader that streams it."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import fovea
from fovea.cli import app
import fovea.core.cache.build as cache_build
from fovea.core.cache import build_cache, cache_path, shard_file
from fovea.core.loader import build_loader, shutdown
from tests.helpers import QUICKSTART, tiny_overrides, write_audio_only, write_video

runner = CliRunner()


@pytest.fixture
def video_dir(tmp_path):
    """Four good videos and three bad files, as a real collection has them."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for i, n in enumerate([12, 20, 9, 30]):
        write_video(videos / f"good{i}.mp4", num_frames=n)
    (videos / "zero.mp4").write_bytes(b"")
    write_audio_only(videos / "sound.mp4")
    (videos / "cut.mp4").write_bytes((videos / "good3.mp4").read_bytes()[:1500])
    return videos


def videos_toml(tmp_path):
    """The quick-start config reading videos: its synthetic-only options removed."""
    import tomli_w

    from fovea.core.config import DataConfig, read_toml

    data = read_toml(QUICKSTART)
    data["data"] = {key: value for key, value in data["data"].items() if key in DataConfig.model_fields}
    data["data"]["name"] = "videos"
    path = tmp_path / "videos.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def video_overrides(tmp_path, videos, **extra):
    overrides = tiny_overrides(tmp_path, **{"data.path": f'"{videos}"', "data.shard_size": "2", **extra})
    return [o for o in overrides if not o.startswith("data.num_clips")]


def video_config(tmp_path, videos, **extra):
    return fovea.load_config(videos_toml(tmp_path), video_overrides(tmp_path, videos, **extra))


def test_cache_holds_every_readable_clip_with_its_targets_and_a_skip_report(tmp_path, video_dir):
    from fovea.core.vae import encode_latents, load_vae

    config = video_config(tmp_path, video_dir)
    cache = build_cache(config, progress=False)
    assert len(cache) == 4
    batch = cache.read([0, 1, 2, 3])
    assert batch["frames"].shape == (4, 8, 3, 64, 64) and batch["frames"].dtype == torch.uint8
    assert batch["latents"].shape == (4, 8, 4, 8, 8) and batch["latents"].dtype == torch.float32

    info = cache.clip_info()
    assert [i["source"].rsplit("/", 1)[-1] for i in info] == ["good0.mp4", "good1.mp4", "good2.mp4", "good3.mp4"]
    assert info[3]["frame_indices"] == [0, 4, 8, 12, 17, 21, 25, 29]
    assert info[2]["frame_indices"] == [0, 1, 2, 3, 5, 6, 7, 8]

    report = cache.report()
    reasons = {item["source"].rsplit("/", 1)[-1]: item["reason"] for item in report["skipped"]}
    assert set(reasons) == {"zero.mp4", "sound.mp4", "cut.mp4"} and report["num_skipped"] == 3
    assert "empty file" in reasons["zero.mp4"] and "no video stream" in reasons["sound.mp4"]

    # the targets are the frozen VAE's latent means times the scaling factor, of exactly these frames
    vae = load_vae(cache.vae)
    expected = encode_latents(vae, batch["frames"].flatten(0, 1), batch_size=16).view_as(batch["latents"])
    torch.testing.assert_close(batch["latents"], expected)


def test_an_existing_cache_is_reused_without_decoding(tmp_path, video_dir, monkeypatch):
    config = video_config(tmp_path, video_dir)
    first = build_cache(config, progress=False)
    monkeypatch.setattr("fovea.plugins.data.videos.VideoFolder.__getitem__",
                        lambda self, i: pytest.fail("decoded again"))
    again = build_cache(config, progress=False)
    assert again.root == first.root and len(again) == 4
    assert cache_path(video_config(tmp_path, video_dir, **{"data.frame_size": "32"})) != first.root


def test_interrupted_precompute_resumes_and_never_keeps_a_half_shard(tmp_path, video_dir, monkeypatch):
    config = video_config(tmp_path, video_dir)
    write_shard = cache_build._write_shard
    calls = []

    def crash_on_third_shard(root, shard, *args):
        calls.append(shard)
        if shard == 2:
            (root / f".{shard_file(root, shard).name}.999.tmp").write_bytes(b"half a shard")  # as a kill leaves it
            raise KeyboardInterrupt
        write_shard(root, shard, *args)

    monkeypatch.setattr(cache_build, "_write_shard", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        build_cache(config, progress=False)
    root = cache_path(config)
    assert shard_file(root, 0).is_file() and shard_file(root, 1).is_file()
    assert not shard_file(root, 2).exists() and not (root / "manifest.json").exists()
    done = {s: shard_file(root, s).stat().st_mtime_ns for s in (0, 1)}

    calls.clear()
    monkeypatch.setattr(cache_build, "_write_shard", lambda root, shard, *args: (calls.append(shard),
                                                                                   write_shard(root, shard, *args)))
    cache = build_cache(config, progress=False)
    assert calls == [2, 3]                                        # only the missing shards are written
    assert {s: shard_file(root, s).stat().st_mtime_ns for s in (0, 1)} == done
    assert len(cache) == 4 and cache.report()["num_skipped"] == 3


def test_a_source_with_nothing_readable_is_one_clear_error(tmp_path):
    videos = tmp_path / "bad"
    videos.mkdir()
    (videos / "zero.mp4").write_bytes(b"")
    with pytest.raises(fovea.FoveaError, match="no clip of the 'videos' source could be read .*zero.mp4: empty file"):
        build_cache(video_config(tmp_path, videos), progress=False)


def test_loader_streams_batches_and_resumes_from_the_same_sample(tmp_path):
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"data.num_clips": "10",
                                                                       "training.batch_size": "3"}))
    cache = build_cache(config, progress=False)
    loader = build_loader(cache, config, torch.device("cpu"))
    batches = iter(loader)
    seen = [next(batches)["index"] for _ in range(5)]             # crosses an epoch boundary (10 clips)
    assert all(b.shape == (3,) for b in seen)
    assert sorted(torch.cat(seen[:3]).tolist()[:9]) == sorted(set(torch.cat(seen[:3]).tolist()[:9]))  # no repeats in an epoch
    state = json.loads(json.dumps(loader.state_dict()))          # what loader_state.json holds
    following = [next(batches)["index"] for _ in range(3)]
    shutdown(loader)

    resumed = build_loader(cache, config, torch.device("cpu"))
    resumed.load_state_dict(state)
    again = iter(resumed)
    assert all(torch.equal(next(again)["index"], b) for b in following)
    shutdown(resumed)


def test_bad_video_inputs_are_one_clear_error(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "text.mkv").write_text("not a video")
    args = ["run", str(videos_toml(tmp_path))]
    for case, path, message in [
        ("only unreadable files", videos, "no clip of the 'videos' source could be read"),
        ("a file, not a directory", videos / "zero.mp4", "is a file; point it at the directory"),
    ]:
        overrides = video_overrides(tmp_path, videos, **{"data.path": f'"{path}"'})
        result = runner.invoke(app, args + [item for o in overrides for item in ("--set", o)])
        assert result.exit_code == 2 and message in result.output, case
        assert result.output.count("\n") == 1 and "Traceback" not in result.output, case
    assert not (tmp_path / "runs").exists()


def test_precompute_command(tmp_path, video_dir):
    args = ["precompute", str(videos_toml(tmp_path))]
    for o in video_overrides(tmp_path, video_dir):
        args += ["--set", o]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "clips: 4  skipped: 3" in result.output and "zero.mp4: empty file" in result.output

    caches = sorted((tmp_path / "cache").iterdir())
    missing = runner.invoke(app, args + ["--set", f'data.path="{tmp_path / "nowhere"}"'])
    assert missing.exit_code == 2 and "no video directory at data.path" in missing.output
    assert sorted((tmp_path / "cache").iterdir()) == caches      # nothing written for a source that is not there


def test_training_on_videos_writes_the_data_report(tmp_path, video_dir):
    from fovea.core.train import train

    run = train(video_config(tmp_path, video_dir))
    report = json.loads(run.data_report_file.read_text())
    assert report["num_clips"] == 4 and report["num_skipped"] == 3
    assert report["num_train"] == 3 and report["num_val"] == 1               # one of the 4 clips held out
    assert json.loads((run.path / "summary.json").read_text())["num_clips"] == 3   # the training clips
