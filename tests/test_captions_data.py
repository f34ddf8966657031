"""Captions on the data side: the synthetic source's scene descriptions, the ``videos`` source's sidecar
and index captions, and the clip cache and loader that carry them."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from typer.testing import CliRunner

import fovea
from fovea.cli import app
from fovea.core.cache import CACHE_VERSION, build_cache, shard_file
from fovea.core.data import Clip, check_clip
from fovea.core.errors import FoveaError, PluginError
from fovea.core.loader import build_loader, shutdown
from fovea.plugins.data import synthetic
from fovea.plugins.data.synthetic import SyntheticShapes, describe_scene
from fovea.plugins.data.videos import VideoFolder, read_video
from tests.helpers import QUICKSTART, tiny_overrides, write_video
from tests.test_cache import video_overrides, videos_toml

S = 32  # frame_size of the source-level tests
runner = CliRunner()

# --------------------------------------------------------------------------- synthetic captions

# SHA-256 of clips' frames recorded on main before captions existed: the frames must stay bit-identical
# (tests/assets/golden_quickstart_losses.json depends on them).
FRAME_HASHES = [
    ({}, 8, 32, 0, 0, "31fcb85bebe2386093b8ee642e005adc9b0e021810e5f49121ab36c54146dd77"),
    ({}, 8, 32, 0, 2, "8c6f4fd3ddb57b2ccb41e26225140fd84ef5cffe4ad0447fd99b3b3eca73b4bf"),
    ({"num_objects": 5}, 6, 48, 7, 1, "e0fdee99f1e7a64380581ac930c8827e7e0798c2d22de75b9b7c6ea5bf5f6db3"),
    ({"num_clips": 2304, "num_objects": 1, "min_radius": 0.15, "max_radius": 0.3, "max_speed": 0.12}, 8, 64, 0, 2303,
     "4069a4502a77aac5977bc98cc8761f3bda269b75fef4f8c6e9ff29fb8021786b"),   # the quick start's data
]

COUNT = r"(no|one|two|three|four|five|six|seven|eight|nine|ten|\d+)"
OBJECT = (r"a (small|medium|large) (grey|red|green|blue|yellow|pink|cyan|white) (circle|square) "
          r"(is still|moves (right|up-right|up|up-left|left|down-left|down|down-right)( and bounces)?)\.")
CAPTION = re.compile(rf"{COUNT} objects?\.( {OBJECT})*")
NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


def corner_name(rgb) -> str:
    """The palette name of a colour in [0.3, 1]^3: which channels are above the cube's middle (0.65)."""
    high = tuple(bool(c > 0.65) for c in rgb)
    return {(0, 0, 0): "grey", (1, 0, 0): "red", (0, 1, 0): "green", (0, 0, 1): "blue", (1, 1, 0): "yellow",
            (1, 0, 1): "pink", (0, 1, 1): "cyan", (1, 1, 1): "white"}[tuple(int(h) for h in high)]


def shapes(num_clips=64, num_frames=8, frame_size=S, seed=0, **options) -> SyntheticShapes:
    config = SyntheticShapes.Config(num_clips=num_clips, **options)
    return SyntheticShapes(config, num_frames=num_frames, frame_size=frame_size, seed=seed)


@pytest.mark.parametrize("options, T, size, seed, index, digest", FRAME_HASHES)
def test_synthetic_frames_are_unchanged_by_captions(options, T, size, seed, index, digest):
    options = {"num_clips": 4, **options}
    frames = shapes(num_frames=T, frame_size=size, seed=seed, **options)[index].frames
    assert hashlib.sha256(frames.numpy().tobytes()).hexdigest() == digest


def test_synthetic_captions_are_deterministic_and_differ_between_clips():
    first, again, other_seed = shapes(16), shapes(16), shapes(16, seed=1)
    captions = [first[i].caption for i in range(16)]
    assert captions == [again[i].caption for i in range(16)]
    assert len(set(captions)) == 16
    assert captions != [other_seed[i].caption for i in range(16)]


def test_synthetic_captions_follow_the_grammar_largest_first():
    source = shapes(64)
    for i in range(64):
        caption = source[i].caption
        assert CAPTION.fullmatch(caption), caption
        assert caption.isascii() and caption == caption.lower()
        assert 60 <= len(caption) <= 170, caption
        objects = re.findall(OBJECT, caption)
        assert NUMBER[caption.split()[0]] == len(objects)
        sizes = [("small", "medium", "large").index(o[0]) for o in objects]
        assert sizes == sorted(sizes, reverse=True)


def test_describe_scene_words():
    radius = torch.tensor([0.06, 0.2, 0.13])
    colour = torch.tensor([[0.9, 0.35, 0.4], [0.35, 0.4, 0.95], [0.9, 0.9, 0.9]])
    is_square = torch.tensor([False, True, True])
    speed = torch.tensor([[-0.05, 0.0], [0.03, -0.03], [0.001, 0.002]])   # left, up-right (y points down), still
    bounces = torch.tensor([True, False, True])
    seen = torch.tensor([True, True, True])
    assert describe_scene(radius, colour, is_square, speed, bounces, seen, 0.06, 0.2) == (
        "three objects. a large blue square moves up-right. a medium white square is still. "
        "a small red circle moves left and bounces.")
    hidden = torch.tensor([True, False, False])   # covered in every frame: not in the caption
    assert describe_scene(radius, colour, is_square, speed, bounces, hidden, 0.06, 0.2) == (
        "one object. a small red circle moves left and bounces.")
    many = describe_scene(torch.full((12,), 0.1), torch.ones(12, 3), torch.ones(12, dtype=torch.bool),
                          torch.tensor([[0.0, 0.05]]).expand(12, 2), torch.zeros(12, dtype=torch.bool),
                          torch.ones(12, dtype=torch.bool), 0.1, 0.1)
    assert many.startswith("12 objects. a medium white square moves down.")


def test_a_small_objects_colour_and_shape_are_in_the_caption(monkeypatch):
    scenes = []

    def spy(radius, colour, is_square, speed, bounces, visible, min_radius, max_radius):
        scenes.append((radius, colour, is_square, visible))
        return describe_scene(radius, colour, is_square, speed, bounces, visible, min_radius, max_radius)

    monkeypatch.setattr(synthetic, "describe_scene", spy)
    source = shapes(32)
    small = 0
    for i in range(32):
        caption = source[i].caption
        radius, colour, is_square, visible = scenes[i]
        for k in range(len(radius)):
            if visible[k] and radius[k] < 0.06 + (0.2 - 0.06) / 3:
                small += 1
                shape = "square" if is_square[k] else "circle"
                assert f"a small {corner_name(colour[k])} {shape} " in caption, caption
    assert small >= 10


def test_single_object_captions_match_what_the_frames_show():
    source = shapes(40, frame_size=64, num_objects=1, min_radius=0.1, max_radius=0.2, max_speed=0.12)
    background = round(synthetic.BACKGROUND * 255)
    bounced = straight = 0
    for i in range(40):
        clip = source[i]
        mask = (clip.frames != background).any(dim=1)                                 # (T, S, S)
        colour = clip.frames[0][:, mask[0]][:, 0].float() / 255                       # (3,) the object's pixel
        assert f" {corner_name(colour)} " in clip.caption
        rows, cols = torch.arange(64.0)[:, None], torch.arange(64.0)[None, :]
        area = mask.sum(dim=(1, 2)).float()                                           # (T,)
        y = (mask * rows).sum(dim=(1, 2)) / area                                      # (T,) centroids, pixels
        x = (mask * cols).sum(dim=(1, 2)) / area
        steps = torch.stack([x.diff(), y.diff()])                                     # (2, T-1)
        turns = ((steps > 0.5).any(dim=1) & (steps < -0.5).any(dim=1)).any()
        if turns:                                                                     # seen to reverse
            assert "and bounces" in clip.caption, clip.caption
            bounced += 1
        if "and bounces" in clip.caption or "is still" in clip.caption:
            continue
        straight += 1
        dx, dy = float(x[-1] - x[0]), float(y[-1] - y[0])
        direction = clip.caption.split("moves ")[1].rstrip(".")
        if abs(dx) + abs(dy) < 3:
            continue
        assert ("left" not in direction or dx < 0) and ("right" not in direction or dx > 0)
        assert ("up" not in direction or dy < 0) and ("down" not in direction or dy > 0)
        if direction in ("left", "right"):
            assert abs(dy) < abs(dx)
        if direction in ("up", "down"):
            assert abs(dx) < abs(dy)
    assert bounced >= 5 and straight >= 5


def test_check_clip_takes_a_str_or_none_caption(tiny_config):
    frames = torch.zeros(tiny_config.data.num_frames, 3, 64, 64, dtype=torch.uint8)
    assert check_clip(Clip(frames, "x", caption="a cat"), tiny_config).caption == "a cat"
    assert check_clip(Clip(frames, "x"), tiny_config).caption is None
    with pytest.raises(PluginError, match="clip source 'synthetic' returned a caption of type bytes"):
        check_clip(Clip(frames, "x", caption=b"a cat"), tiny_config)


# --------------------------------------------------------------------------- videos captions


def folder(root, num_frames=4) -> VideoFolder:
    return VideoFolder(VideoFolder.Config(path=str(root)), num_frames=num_frames, frame_size=S)


def captions_of(source: VideoFolder) -> dict[str, str | None]:
    return {p.relative_to(source.config.path).as_posix(): source[i].caption for i, p in enumerate(source.files)}


def test_sidecar_txt_gives_the_caption(tmp_path):
    write_video(tmp_path / "a.mp4", 6)
    write_video(tmp_path / "b.mp4", 6)
    write_video(tmp_path / "c.mp4", 6)
    (tmp_path / "a.txt").write_text("  A dog runs on the beach.\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text(" \n", encoding="utf-8")                             # empty: no caption
    assert captions_of(folder(tmp_path)) == {"a.mp4": "A dog runs on the beach.", "b.mp4": None, "c.mp4": None}
    clip = read_video(tmp_path / "a.mp4", 4, S)   # one file, as `fovea caption` reads it
    assert clip.caption == "A dog runs on the beach." and clip.frames.shape == (4, 3, S, S)
    assert read_video(str(tmp_path / "c.mp4"), 4, S).caption is None


def test_captions_jsonl_gives_captions_and_a_sidecar_wins(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    for name in ("a.mp4", "sub/b.mkv", "c.mp4", "d.mp4"):
        write_video(tmp_path / name, 6)
    (tmp_path / "c.txt").write_text("from the sidecar")
    lines = [{"path": "a.mp4", "caption": "a red car turns left"},
             {"path": str(tmp_path / "sub" / "b.mkv"), "caption": " caf\u00e9 \u2028 at night "},   # absolute path
             {"path": "c.mp4", "caption": "from the index"},
             {"path": "gone.mp4", "caption": "not among the videos"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines[:2])
                                             + "\n\n" + "\n".join(json.dumps(line) for line in lines[2:]) + "\n",
                                             encoding="utf-8")
    source = folder(tmp_path)
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "warning:" in warning and "gone.mp4" in warning
    assert captions_of(source) == {"a.mp4": "a red car turns left", "sub/b.mkv": "caf\u00e9 \u2028 at night",
                                   "c.mp4": "from the sidecar", "d.mp4": None}


def test_captions_csv_gives_captions(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write_video(tmp_path / name, 6)
    (tmp_path / "captions.csv").write_bytes(
        '\ufeffvideoid,caption,path,duration\r\n'              # a byte-order mark, as spreadsheets write it
        '1,"a cat, sleeping",a.mp4,PT10S\r\n'
        '2,"two lines\nof ""quoted"" text",./b.mp4,PT4S\r\n'
        '3,,c.mp4,PT1S\r\n'.encode("utf-8"))
    assert captions_of(folder(tmp_path)) == {"a.mp4": "a cat, sleeping", "b.mp4": 'two lines\nof "quoted" text',
                                             "c.mp4": None}


JSONL = "captions.jsonl"
CSV = "captions.csv"
MALFORMED = [
    (JSONL, b'{"path": "a.mp4", "caption": "ok"}\n{"path": "a.mp4", caption}\n', "line 2: not valid JSON"),
    (JSONL, b'\n["a.mp4", "a caption"]\n', "line 2: a JSON list, not an object"),
    (JSONL, b'{"path": "a.mp4", "text": "a caption"}\n', "line 1: no 'caption' key"),
    (JSONL, b'{"caption": "a caption"}\n', "line 1: no 'path' key"),
    (JSONL, b'{"path": "a.mp4", "caption": 7}\n', "line 1: 'caption' is 7, not a string"),
    (JSONL, b'{"path": "a.mp4", "caption": "ok"}\n{"path": "a.mp4", "caption": "caf\xe9"}\n', "line 2: not UTF-8"),
    (JSONL, b'{"path": "a.mp4", "caption": "one"}\n{"path": "./a.mp4", "caption": "two"}\n',
     "line 2: a second caption for './a.mp4' (the first is on line 1)"),
    (CSV, b"videoid,name\n1,a dog\n", "line 1: no column 'path' or 'caption' (the header row names 'videoid', 'name')"),
    (CSV, b"path,caption\na.mp4,ok\nb.mp4\n", "line 3: fewer fields than the header row"),
    (CSV, b"path,caption\na.mp4,\xff\n", "line 2: not UTF-8"),
]


@pytest.mark.parametrize("name, content, message", MALFORMED)
def test_a_malformed_captions_index_is_one_error_naming_file_and_line(tmp_path, name, content, message):
    write_video(tmp_path / "a.mp4", 6)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(FoveaError) as info:
        folder(tmp_path)
    assert f"{tmp_path / name}, {message}" in str(info.value) and "\n" not in str(info.value)


def test_two_indexes_or_a_bad_sidecar_are_errors(tmp_path):
    write_video(tmp_path / "a.mp4", 6)
    (tmp_path / "a.txt").write_bytes(b"fine\nnot \xc3(utf-8\n")
    with pytest.raises(FoveaError, match=r"a\.txt, line 2: not UTF-8"):
        folder(tmp_path)[0]
    (tmp_path / JSONL).write_text("")
    (tmp_path / CSV).write_text("path,caption\n")
    with pytest.raises(FoveaError, match="give captions; keep one of them"):
        folder(tmp_path)


@pytest.mark.parametrize("name, content, message", [MALFORMED[0], MALFORMED[7]])
def test_precompute_stops_on_a_malformed_index_with_one_error_line(tmp_path, name, content, message):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", 6)
    (videos / name).write_bytes(content)
    args = ["precompute", str(videos_toml(tmp_path))]
    for override in video_overrides(tmp_path, videos):
        args += ["--set", override]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert f"{videos / name}, {message}" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- the cache and the loader


def test_cache_round_trip_of_video_captions(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        write_video(videos / name, 6)
    (videos / "a.txt").write_text("from a sidecar")
    (videos / JSONL).write_text(json.dumps({"path": "c.mp4", "caption": "from the index"}) + "\n")
    config = fovea.load_config(videos_toml(tmp_path), video_overrides(tmp_path, videos))   # shards of 2 clips
    cache = build_cache(config, progress=False)
    expected = ["from a sidecar", None, "from the index", None]
    assert cache.captions() == expected
    assert [info["caption"] for info in cache.clip_info()] == expected
    batch = cache.read([2, 0, 3, 2])
    assert batch["captions"] == ["from the index", "from a sidecar", None, "from the index"]
    assert batch["frames"].shape[0] == 4
    assert json.loads((cache.root / "manifest.json").read_text())["version"] == CACHE_VERSION == 3

    # a shard made again holds the same captions, so it passes the same-clips check ...
    shard_file(cache.root, 1).unlink()
    assert build_cache(config, progress=False).captions() == expected
    # ... and a caption changed since the cache was written is a changed source
    (videos / JSONL).write_text(json.dumps({"path": "c.mp4", "caption": "another caption"}) + "\n")
    shard_file(cache.root, 1).unlink()
    with pytest.raises(FoveaError, match="changed since the cache was written"):
        build_cache(config, progress=False)


def synthetic_cache(tmp_path, **extra):
    overrides = tiny_overrides(tmp_path, **{"data.num_clips": "6", "data.shard_size": "4", **extra})
    config = fovea.load_config(QUICKSTART, overrides)
    return config, build_cache(config, progress=False)


def test_cache_round_trip_of_synthetic_captions_across_shards(tmp_path):
    from fovea.core.data import build_source

    config, cache = synthetic_cache(tmp_path)
    source = build_source(config)
    expected = [source[i].caption for i in range(6)]
    assert cache.captions() == expected and all(expected)
    assert cache.read([5, 1, 4])["captions"] == [expected[5], expected[1], expected[4]]
    cache.captions().clear()                                            # a copy: the cache keeps its own
    assert cache.read([0])["captions"] == [expected[0]]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_carry_their_captions(tmp_path, workers):
    config, cache = synthetic_cache(tmp_path, **{"data.num_workers": str(workers), "training.batch_size": "3"})
    captions = cache.captions()
    loader = build_loader(cache, config, torch.device("cpu"))
    batches = iter(loader)
    for _ in range(3):
        batch = next(batches)
        assert batch["captions"] == [captions[i] for i in batch["index"].tolist()]
    shutdown(loader)


def test_pin_memory_keeps_a_list_of_captions(tmp_path, monkeypatch):
    """torchdata's ``PinMemory`` pins each batch with torch's ``pin_memory``: strings and None pass unchanged."""
    from torch.utils.data._utils.pin_memory import pin_memory

    _, cache = synthetic_cache(tmp_path)
    batch = cache.read([3, 0])
    batch["captions"][1] = None
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args: self.clone())   # no CUDA on this machine
    pinned = pin_memory(batch)
    assert pinned["captions"] == batch["captions"] and isinstance(pinned["captions"], list)
    assert torch.equal(pinned["frames"], batch["frames"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_cuda_loader_batches_carry_their_captions(tmp_path):
    config, cache = synthetic_cache(tmp_path, **{"data.pin_memory": "true", "training.batch_size": "2"})
    loader = build_loader(cache, config, torch.device("cuda"))
    batch = next(iter(loader))
    assert batch["frames"].is_pinned()
    assert batch["captions"] == [cache.captions()[i] for i in batch["index"].tolist()]
    shutdown(loader)
