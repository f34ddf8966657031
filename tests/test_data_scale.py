"""Data at scale (issue 20): JPEG shards and float16 latents, a manifest of clips, streaming the cache from a
URL served by a real HTTP server (exact resume after SIGKILL, a server that goes away), the shard order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fovea
from fovea.cli import app
from fovea.core.cache import ClipCache, build_cache, cache_path, shard_file
from fovea.core.checkpoint import read_checkpoint
from fovea.core.errors import FoveaError
from fovea.core.loader import ShardOrder
from fovea.core.train import train
from tests.helpers import QUICKSTART, ROOT, tiny_overrides, write_video
from tests.test_cache import video_overrides, videos_toml
from tests.test_resume import per_step, set_args, start_fovea, wait_for_step

runner = CliRunner()


def serve(directory: Path) -> tuple[subprocess.Popen, str]:
    """``python -m http.server`` on a free loopback port, serving ``directory``: (the process, its URL)."""
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"], cwd=directory,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()                  # "Serving HTTP on 127.0.0.1 port N (http://...) ..."
    port = int(line.split(" port ")[1].split()[0])
    return server, f"http://127.0.0.1:{port}"


def stop(server: subprocess.Popen) -> None:
    server.kill()
    server.wait(timeout=30)


# --- JPEG frames, float16 latents -----------------------------------------------------------------

def test_jpeg_shards_with_float16_latents_are_smaller_close_and_verified(tmp_path):
    raw = build_cache(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path)), progress=False)
    overrides = tiny_overrides(tmp_path, **{"data.codec": '"jpeg"', "data.latent_dtype": '"float16"'})
    config = fovea.load_config(QUICKSTART, overrides)
    jpeg = build_cache(config, progress=False)
    assert jpeg.root != raw.root                                   # the codec is part of the cache key
    assert jpeg.format == {"codec": "jpeg", "jpeg_quality": 90, "latent_dtype": "float16"}
    size = lambda cache: sum(p.stat().st_size for p in cache.root.glob("shard-*.safetensors"))  # noqa: E731
    assert size(jpeg) < size(raw) / 4
    clips = [0, 7, 3]
    a, b = raw.read(clips), jpeg.read(clips)
    assert b["frames"].dtype == torch.uint8 and b["frames"].shape == a["frames"].shape
    assert (b["frames"].float() - a["frames"].float()).abs().mean() < 3            # JPEG's error, in grey levels
    assert b["latents"].dtype == torch.float32
    assert torch.allclose(b["latents"], a["latents"], rtol=1e-3, atol=1e-3)        # float16's rounding
    assert b["captions"] == a["captions"]

    result = runner.invoke(app, ["precompute", "--verify", str(QUICKSTART), *set_args(overrides)])
    assert result.exit_code == 0, result.output
    shard = shard_file(jpeg.root, 0)
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF                                               # inside the JPEG bytes
    shard.write_bytes(bytes(data))
    result = runner.invoke(app, ["precompute", "--verify", str(QUICKSTART), *set_args(overrides)])
    assert result.exit_code == 2 and "shard-00000.safetensors does not match the SHA-256" in result.output
    result = runner.invoke(app, ["precompute", "--repair", str(QUICKSTART), *set_args(overrides)])
    assert result.exit_code == 0, result.output
    assert torch.equal(ClipCache(jpeg.root).read(clips)["frames"], b["frames"])   # made again, the same bytes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jpeg_frames_decode_on_the_gpu_like_on_the_cpu(tmp_path):
    pytest.importorskip("torchvision")
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"data.codec": '"jpeg"'}))
    cache = build_cache(config, progress=False)
    cpu, gpu = cache.read([0, 1]), cache.read([0, 1], device="cuda")
    assert gpu["frames"].device.type == "cuda" and gpu["frames"].dtype == torch.uint8
    assert (gpu["frames"].cpu().float() - cpu["frames"].float()).abs().mean() < 1   # decoders differ by rounding


# --- a manifest of clips --------------------------------------------------------------------------

def test_a_manifest_names_the_clips_with_captions_and_time_windows(tmp_path):
    from fovea.plugins.data.videos import VideoFolder

    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "a.mp4", 30, rate=10)            # frame i is grey 8 * i
    write_video(tmp_path / "v" / "b.mp4", 12, rate=10)
    (tmp_path / "clips.csv").write_text('path,caption,start,end\nv/a.mp4,"grey, fading",1,2.5\nv/b.mp4,,,\n')
    (tmp_path / "clips.jsonl").write_text(json.dumps({"path": "v/a.mp4", "caption": "grey, fading", "start": 1,
                                                      "end": 2.5}) + "\n" +
                                          json.dumps({"path": str(tmp_path / "v" / "b.mp4")}) + "\n")
    for manifest in ("clips.csv", "clips.jsonl"):
        source = VideoFolder(VideoFolder.Config(manifest=str(tmp_path / manifest)), num_frames=4, frame_size=32)
        a, b = source[0], source[1]
        assert a.source == f"{tmp_path / 'v' / 'a.mp4'}#t=1,2.5" and a.caption == "grey, fading"
        assert a.frame_indices == [0, 5, 9, 14]                   # the 15 frames from 1 s to 2.5 s
        assert a.frames[:, 0, 16, 30].tolist() == pytest.approx([80, 120, 152, 192], abs=3)   # frames 10..24
        assert b.source == str(tmp_path / "v" / "b.mp4") and b.caption is None and len(b.frame_indices) == 4


@pytest.mark.parametrize("name, text, line, message", [
    ("m.csv", "path,caption\nv/a.mp4,ok\nv/b.mp4\n", 3, "not as many fields"),
    ("m.csv", "file,caption\nv/a.mp4,ok\n", 1, "no column 'path' or 'url'"),
    ("m.jsonl", '{"path": "a.mp4"}\n{"path": "b.mp4", "url": "http://x/b.mp4"}\n', 2, "both path and url"),
    ("m.jsonl", '{"path": "a.mp4"}\n\n{"path": "b.mp4", "start": 3, "end": 1}\n', 3, "is not after start"),
    ("m.jsonl", '{"path": "a.mp4", "start": "soon"}\n', 1, "is not a number of seconds"),
    ("m.jsonl", '{"path": "a.mp4"\n', 1, "not valid JSON"),
])
def test_a_malformed_manifest_is_one_error_line_naming_file_and_line(tmp_path, name, text, line, message):
    (tmp_path / name).write_text(text)
    overrides = video_overrides(tmp_path, tmp_path, **{"data.manifest": f'"{tmp_path / name}"'})
    result = runner.invoke(app, ["precompute", str(videos_toml(tmp_path)), *set_args(overrides)])
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / name}, line {line}: "), result.output
    assert message in lines[0]


def test_manifest_videos_by_url_are_read_through_fsspec(tmp_path):
    pytest.importorskip("aiohttp")
    from fovea.plugins.data.videos import VideoFolder

    write_video(tmp_path / "a.mp4", 10, rate=10)
    server, url = serve(tmp_path)
    try:
        (tmp_path / "clips.jsonl").write_text(json.dumps({"url": f"{url}/a.mp4", "caption": "remote"}) + "\n" +
                                              json.dumps({"url": f"{url}/missing.mp4"}) + "\n")
        source = VideoFolder(VideoFolder.Config(manifest=str(tmp_path / "clips.jsonl")), num_frames=4, frame_size=32)
        clip = source[0]
        assert clip.source == f"{url}/a.mp4" and clip.caption == "remote" and clip.frames.shape == (4, 3, 32, 32)
        with pytest.raises(fovea.core.data.SkipClip, match="cannot be read"):
            source[1]
    finally:
        stop(server)


# --- the shard order ------------------------------------------------------------------------------

def test_shard_order_gives_each_rank_its_own_shards_in_step_and_resumes_exactly():
    counts = torch.tensor([3, 3, 2, 3, 3, 1, 3])                  # 18 clips in 7 shards
    starts = torch.cumsum(counts, 0) - counts
    allowed = torch.ones(18, dtype=torch.bool)
    allowed[4] = False                                             # a held-out clip
    shard_of = torch.repeat_interleave(torch.arange(7), counts)

    def stream(rank: int, start=None, n: int = 40) -> list[int]:
        node = ShardOrder(starts, counts, allowed, seed=5, window=2, rank=rank, world_size=2, start=start)
        node.reset()
        return [node.next() for _ in range(n)]

    ranks = [stream(0), stream(1)]
    length = ShardOrder(starts, counts, allowed, 5, 2, 0, 2).epoch_length(0)
    for epoch in range(2):
        mine = [set(shard_of[torch.tensor(r[epoch * length:(epoch + 1) * length])].tolist()) for r in ranks]
        assert not mine[0] & mine[1]                               # every rank reads its own shards
    assert 4 not in ranks[0] + ranks[1]
    node = ShardOrder(starts, counts, allowed, 5, 2, 1, 2)
    node.reset()
    for _ in range(13):
        node.next()
    assert stream(1, node.get_state(), 27) == ranks[1][13:]        # resumed from the saved position


# --- streaming the cache from a URL ---------------------------------------------------------------

STREAM = {"data.num_clips": "8", "data.shard_size": "2", "data.codec": '"jpeg"', "data.shuffle": '"shards"',
          "data.shuffle_window": "1", "data.num_workers": "1", "data.prefetch": "1", "eval.val_fraction": "0",
          "training.max_steps": "20", "training.save_every": "10", "run.log_every": "1",
          "data.stream_cache_gb": "1e-9", "data.stream_retries": "2"}   # a budget of one byte: shards come and go


@pytest.fixture(scope="module")
def served_cache(tmp_path_factory):
    """A cache of 4 JPEG shards written locally, and the per-step losses of 20 steps trained from it."""
    root = tmp_path_factory.mktemp("served")
    run = train(fovea.load_config(QUICKSTART, tiny_overrides(root, **STREAM)))
    return root / "cache", per_step(run)


def url_overrides(tmp_path: Path, url: str) -> list[str]:
    return tiny_overrides(tmp_path, **STREAM, **{"data.cache_dir": f'"{url}"',
                                                 "data.stream_cache_dir": f'"{tmp_path / "stream"}"'})


def test_training_from_a_url_matches_the_local_cache_within_a_bounded_disk(tmp_path, served_cache):
    pytest.importorskip("aiohttp")
    directory, local = served_cache
    server, url = serve(directory)
    try:
        run = train(fovea.load_config(QUICKSTART, url_overrides(tmp_path, url)))
    finally:
        stop(server)
    assert per_step(run) == local                                  # the same clips in the same order
    assert json.loads((run.path / "data_report.json").read_text())["cache"].startswith(url)
    kept = list((tmp_path / "stream").rglob("shard-*.safetensors"))
    assert 1 <= len(kept) <= 2                                     # the budget: the shard in use (per worker)


def test_a_url_run_killed_with_sigkill_resumes_with_the_same_losses(tmp_path, served_cache):
    pytest.importorskip("aiohttp")
    directory, local = served_cache
    server, url = serve(directory)
    try:
        process = start_fovea("run", str(QUICKSTART), *set_args(url_overrides(tmp_path, url)))
        try:
            run = wait_for_step(tmp_path / "runs", 11, process)   # past the checkpoint at 10
            process.kill()
            process.wait(timeout=60)
        finally:
            process.kill()
        assert [p.name for p in run.checkpoints()] == ["step-000010"]
        resumed = subprocess.run([sys.executable, "-m", "fovea", "run", "--resume", str(run.path)],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                 cwd=ROOT, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
    finally:
        stop(server)
    assert per_step(run) == local


def test_a_server_that_goes_away_stops_the_run_with_one_error_and_an_intact_checkpoint(tmp_path, served_cache):
    pytest.importorskip("aiohttp")
    directory, _ = served_cache
    server, url = serve(directory)
    try:
        process = start_fovea("run", str(QUICKSTART), *set_args(url_overrides(tmp_path, url)),
                              stderr=subprocess.PIPE)
        try:
            run = wait_for_step(tmp_path / "runs", 11, process)
            stop(server)
            _, err = process.communicate(timeout=120)
        finally:
            process.kill()
    finally:
        server.kill()
    assert process.returncode == 2, err
    errors = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot download {url}/" in errors[0] and "after 3 tries" in errors[0]
    assert "fovea run --resume" in errors[0] and "Traceback" not in err.decode()
    assert [p.name for p in run.checkpoints()] == ["step-000010"]
    assert read_checkpoint(run.checkpoints()[-1]).step == 10      # verified: sizes and SHA-256 of its files
    assert max(m["step"] for m in run.read_metrics()) < 20


def test_a_url_without_a_cache_is_one_error_and_writing_to_a_url_is_refused(tmp_path):
    pytest.importorskip("aiohttp")
    server, url = serve(tmp_path)
    try:
        overrides = tiny_overrides(tmp_path, **{"data.cache_dir": f'"{url}"', "data.stream_retries": "0"})
        result = runner.invoke(app, ["run", str(QUICKSTART), *set_args(overrides)])
        assert result.exit_code == 2 and "does not exist (the server answered 'not found')" in result.output
        assert "fovea precompute" in result.output
        with pytest.raises(FoveaError, match="writes, verifies and repairs only a local one"):
            cache_path(fovea.load_config(QUICKSTART, overrides))
    finally:
        stop(server)


# --- precompute on many processes -----------------------------------------------------------------

def test_precompute_on_two_processes_writes_the_clips_of_one_and_resumes_after_a_kill(tmp_path):
    import time

    from safetensors.torch import load_file

    from tests.test_distributed import finish, torchrun

    values = {"data.num_clips": "24", "data.shard_size": "2", "model.vae.init": '"random"'}
    single = build_cache(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path / "one", **values)), progress=False)
    args = ["precompute", str(QUICKSTART), *set_args(tiny_overrides(tmp_path / "two", **values))]
    root = tmp_path / "two" / "cache" / single.root.name

    job = torchrun(*args)
    try:
        deadline = time.monotonic() + 240
        while not list(root.glob("shard-?????.json")) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.005)
        import psutil

        agent = psutil.Process(job.pid)
        for process in [*agent.children(recursive=True), agent]:   # torchrun and both ranks, mid-write
            process.send_signal(signal.SIGKILL)
    finally:
        job.communicate(timeout=60)
    assert not (root / "manifest.json").exists(), "the job finished before it was killed"
    written = {p.name: p.stat().st_mtime_ns for p in root.glob("shard-?????.json")}
    assert written

    out, _ = finish(torchrun(*args))
    assert "clips: 24" in out and out.count("cache: ") == 1      # rank 0 speaks for the job
    assert all((root / name).stat().st_mtime_ns == mtime for name, mtime in written.items())   # not written again
    two = ClipCache(root)
    assert len(two) == len(single) and two.clip_info() == single.clip_info()
    for shard in range(12):
        a, b = load_file(shard_file(single.root, shard)), load_file(shard_file(root, shard))
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["latents"], b["latents"]), shard


def test_decoding_on_the_gpu_without_one_is_refused_with_the_fix(tmp_path):
    from fovea.core.loader import build_loader

    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"data.codec": '"jpeg"'}))
    cache = build_cache(config, progress=False)
    config.data.decode_device = "cuda"
    if torch.cuda.is_available():
        pytest.skip("this machine can decode on the GPU")
    with pytest.raises(FoveaError, match="data.decode_device = 'cuda' but JPEG frames cannot be decoded on the GPU"):
        build_loader(cache, config, torch.device("cpu"))
