"""Frame codecs of the clip cache: ``raw`` uint8 arrays, or ``jpeg`` (one JPEG per frame).

A ``jpeg`` shard holds every frame's JPEG bytes end to end in one uint8 tensor ``jpeg`` and their
boundaries in ``jpeg_offsets`` (int64, n*T + 1 of them): clip ``i``'s frames are the T JPEGs between
offsets ``i*T`` and ``i*T + T``, read as one memory-mapped slice. Encoding and CPU decoding use Pillow
(libjpeg-turbo; fovea's own dependency, torchvision is not needed on a CPU machine); decoding on the
GPU uses nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``, batched over a whole batch.

At 256 px a frame costs 196 608 bytes raw and ~10-25 kB as JPEG at quality 90 (docs/benchmarks.md).
JPEG is lossy: the frames differ from the decoded video by the codec's error (the latents are computed
from the original frames, before encoding). CPU and GPU decoders may differ by a grey level here and there.
"""

from __future__ import annotations

import io

import numpy as np
import torch


def encode_jpeg(frames: torch.Tensor, quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (N, 3, S, S) -> (every JPEG end to end: uint8 (bytes,), boundaries: int64 (N + 1,))."""
    from PIL import Image

    blobs = []
    for frame in frames.permute(0, 2, 3, 1).numpy():                          # (S, S, 3) each
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)   # 4:2:0, baseline: nvJPEG's fast path
        blobs.append(buffer.getvalue())
    sizes = torch.tensor([0] + [len(b) for b in blobs], dtype=torch.int64)
    data = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8) if blobs else torch.zeros(0, dtype=torch.uint8)
    return data, torch.cumsum(sizes, 0)


def split_jpegs(data: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    """The JPEGs in ``data`` (uint8 (bytes,)) between consecutive ``offsets`` (relative to ``data``'s start)."""
    bounds = offsets.tolist()
    return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def decode_jpeg(blobs: list[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """JPEGs (uint8 tensors) -> uint8 RGB frames (N, 3, S, S), on ``device`` (CUDA: nvJPEG, batched)."""
    device = torch.device(device)
    if device.type == "cuda":
        from torchvision.io import ImageReadMode, decode_jpeg as tv_decode

        return torch.stack(tv_decode(blobs, mode=ImageReadMode.RGB, device=device))   # (N, 3, S, S)
    from PIL import Image

    images = None
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob.numpy().tobytes())) as image:
            if image.mode != "RGB":
                image = image.convert("RGB")
            if images is None:
                images = np.empty((len(blobs), image.height, image.width, 3), dtype=np.uint8)   # (N, S, S, 3)
            images[i] = np.asarray(image)   # decoded straight into the batch (libjpeg-turbo, without the GIL)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()          # (N, 3, S, S)


def gpu_decoding_available() -> str | None:
    """None when nvJPEG decoding can run here, else why not (no CUDA, or no torchvision)."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return "torchvision is not installed (pip install torchvision, the build that matches your torch)"
    return None
