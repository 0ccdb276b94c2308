"""Judging images with DALI's decoder, the one the DALI loader will read them with.

torchvision (libjpeg-turbo) and DALI (nvImageCodec) do not reject the same files: a JPEG whose
Huffman-table marker is garbled decodes with torchvision, with a warning, and stops a DALI
pipeline. So `dist-geo shard --verify` with data.loader=dali, and the DALI loader when its
pipeline fails, ask DALI itself: a small pipeline reads each image's header
(`fn.peek_image_shape`), decodes the images whose header promises at most `max_pixels` and
never the others (a decompression bomb: a 1 KB JPEG can claim 30000 x 30000; the stand-in
below is decoded in its place). A batch that fails is retried image by image, each failure
ending the pipeline it ran in, so every verdict names one image.
"""
from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from torchvision.io import encode_jpeg

# A valid 8x8 JPEG that takes the place of an image a pipeline must not decode.
STAND_IN = encode_jpeg(torch.zeros((3, 8, 8), dtype=torch.uint8)).numpy()
INPUT = "encoded"


def too_many_pixels(height: int, width: int, max_pixels: int) -> str:
    return (f"{width}x{height} image: more than data.max_image_pixels={max_pixels} pixels, "
            f"not decoded")


def dali_error(error: RuntimeError) -> str:
    """The operator's own message out of a DALI pipeline error (what follows 'encountered:')."""
    text = str(error)
    lines = [line.strip() for line in text.partition("encountered:")[2].splitlines()]
    return next((line for line in lines if line), text.strip().splitlines()[-1])


def guard_decoding(jpegs, max_pixels: int, skip=None):
    """(jpegs with STAND_IN in place of each image whose header promises more than max_pixels,
    or for which `skip` is true; per image, whether it promised too many; the header shapes).
    Inside a pipeline with `enable_conditionals=True`."""
    hwc = fn.peek_image_shape(jpegs)
    too_big = hwc[0] * hwc[1] > max_pixels
    stand_in = too_big if skip is None else too_big | skip
    if stand_in:
        jpegs = types.Constant(STAND_IN, dtype=types.UINT8)
    return jpegs, too_big, hwc


@pipeline_def(enable_conditionals=True)
def _check_pipeline(max_pixels: int, gpu: bool):
    jpegs, too_big, hwc = guard_decoding(fn.external_source(name=INPUT, dtype=types.UINT8),
                                         max_pixels)
    fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
                      preserve=True)
    return hwc, too_big


class DaliImageCheck:
    """`check(images)`: per encoded image, "" when DALI decodes it, else why not.

    device_id None: DALI's CPU decoder; a GPU index: its mixed (nvJPEG) decoder on that GPU.
    """

    def __init__(self, max_pixels: int, device_id: int | None = None, batch_size: int = 64):
        self.max_pixels, self.device_id, self.batch_size = max_pixels, device_id, batch_size
        self._pipe = None

    def _run(self, images: list[bytes]) -> list[str]:
        if self._pipe is None:
            self._pipe = _check_pipeline(
                max_pixels=self.max_pixels, gpu=self.device_id is not None,
                batch_size=self.batch_size, num_threads=1, device_id=self.device_id,
                prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
            self._pipe.build()
        self._pipe.feed_input(INPUT, [np.frombuffer(image, dtype=np.uint8) for image in images])
        try:
            hwc, too_big = self._pipe.run()
        except RuntimeError:
            self._pipe = None  # a failed pipeline cannot run again
            raise
        return [too_many_pixels(*np.array(hwc[i])[:2], self.max_pixels)
                if np.array(too_big[i]) else "" for i in range(len(images))]

    def __call__(self, images: list[bytes]) -> list[str]:
        verdicts = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            try:
                verdicts += self._run(batch)
            except RuntimeError:
                verdicts += [self._one(image) for image in batch]
        return verdicts

    def _one(self, image: bytes) -> str:
        try:
            return self._run([image])[0]
        except RuntimeError as e:
            return f"undecodable image (DALI): {dali_error(e)}"


__all__ = ["STAND_IN", "DaliImageCheck", "dali_error", "guard_decoding", "too_many_pixels"]
