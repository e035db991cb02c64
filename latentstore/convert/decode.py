"""Decoding and resizing inputs: DALI for the bulk, Pillow for what DALI would get wrong, one geometry stage.

Every input is screened from its header first (cheap): refused outright when it is empty, not an
image, truncated (no end-of-image marker), smaller than 8 px or over the pixel limit. Plain JPEG
and PNG in RGB or greyscale without an EXIF rotation go through DALI's `decoders.image`; CMYK,
alpha, palette, 16-bit and EXIF-rotated images are decoded by Pillow with the project's policy
(latentstore.data.imageio), then fed to the *same* DALI resize/crop stage as raw pixels. The route
depends on the file alone, so an image gives the same pixels whatever batch it lands in.

DALI cannot skip a corrupt file inside a batch: when a batch fails, the pipeline is rebuilt and the
batch is bisected until the bad files stand alone; they are recorded as rejects with DALI's reason.

On CUDA the encoded bytes go to `decoders.image(device="mixed")` (the hardware JPEG decoder takes
HW_DECODER_LOAD of the work where the GPU has one), resize and crop run on the GPU, and the batch is
handed to torch through DLPack without a copy: no decoded pixel reaches the host.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import BadImageError
from ..data.imageio import clean_reason, decode_image_bytes, size_problem

DALI_FORMATS = {"JPEG", "PNG"}
DALI_MODES = {"RGB", "L"}
HW_DECODER_LOAD = 0.65  # share of JPEGs for the hardware decoder (issue #11: 19.5-26k img/s on an H100 at 0.65)


@dataclass
class Screened:
    route: str  # "dali" | "pillow" | "reject"
    data: bytes | None = None  # encoded bytes (dali route)
    rgb: np.ndarray | None = None  # decoded pixels (pillow route)
    reason: str = ""  # why it was rejected
    size: tuple = ()  # (H, W) from the header (dali route)


def _has_end_marker(fmt: str, data: bytes) -> bool:
    tail = data[-1024:]
    if fmt == "JPEG":
        return b"\xff\xd9" in tail
    if fmt == "PNG":
        return b"IEND" in tail
    return True


def screen(data: bytes, where: str) -> Screened:
    """The route of one input. Plain JPEGs take a shortcut (a walk over their markers, ~20x cheaper than
    Pillow's parser, which at GPU speeds would cost more cores than decoding); everything else, and every
    reject, is decided by Pillow (screen_pil)."""
    hw = plain_jpeg_size(data)
    if hw is not None and size_problem(hw[1], hw[0]) is None and _has_end_marker("JPEG", data):
        return Screened("dali", data=data, size=hw)
    return screen_pil(data, where)


def screen_pil(data: bytes, where: str) -> Screened:
    if not data:
        return Screened("reject", reason="empty file")
    try:
        im = Image.open(io.BytesIO(data))
        fmt, mode, (w, h) = im.format, im.mode, im.size
        orientation = im.getexif().get(0x0112, 1) if fmt == "JPEG" else 1
    except Exception as e:
        return Screened("reject", reason=f"not a readable image ({clean_reason(str(e).splitlines()[0]) if str(e) else type(e).__name__})")
    problem = size_problem(w, h)
    if problem:
        return Screened("reject", reason=problem)
    if not _has_end_marker(fmt, data):
        return Screened("reject", reason=f"truncated {fmt} (no end-of-image marker)")
    if fmt in DALI_FORMATS and mode in DALI_MODES and orientation in (None, 1):
        return Screened("dali", data=data, size=(h, w))
    try:
        return Screened("pillow", rgb=decode_image_bytes(data, where))
    except BadImageError as e:
        return Screened("reject", reason=str(e).split(": ", 1)[-1])


def plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(H, W) of a JPEG that Pillow reads as 8-bit L or RGB without an EXIF orientation, else None. Accepts only
    what Pillow's JPEG parser provably accepts the same way: strictly consecutive segments of the kinds below
    (lengths checked as Pillow checks them), one baseline/extended/progressive Huffman frame, then the scan.
    Any other segment (EXIF and other APPn, Adobe, ICC, arithmetic or lossless frames, fill bytes) -> None,
    and the caller asks Pillow."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, size = 2, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker, seg = data[pos + 1], int.from_bytes(data[pos + 2: pos + 4], "big")
        end = pos + 2 + seg
        if seg < 2 or end > n:
            return None
        if marker == 0xDA:  # start of scan: Pillow stops reading here
            return size
        if marker in (0xC0, 0xC1, 0xC2):  # SOF0/1/2: precision, H, W, components, 3 bytes per component
            if size is not None or seg < 8 or data[pos + 4] != 8 or data[pos + 9] not in (1, 3) \
                    or seg != 8 + 3 * data[pos + 9]:
                return None
            size = (int.from_bytes(data[pos + 5: pos + 7], "big"), int.from_bytes(data[pos + 7: pos + 9], "big"))
        elif marker == 0xDB:  # DQT: Pillow raises on a table cut short
            q = pos + 4
            while q < end:
                q += 1 + (64 if data[q] < 16 else 128)
            if q != end:
                return None
        elif marker == 0xE0:  # APP0: Pillow reads JFIF's version and density fields
            if data[pos + 4: pos + 8] == b"JFIF" and seg < 14:
                return None
        elif marker not in (0xC4, 0xDD, 0xFE):  # DHT, DRI, COM are skipped by Pillow
            return None
        pos = end
    return None


class DaliImageStage:
    """Two DALI pipelines sharing one geometry: encoded bytes -> RGB, and raw RGB -> resized RGB.

    size: S for fixed-size mode (shorter side to S, antialiased, centre crop S x S); None for
    native mode (no geometry: the encoder pads to a multiple of 8 itself).
    Outputs: HWC uint8 numpy arrays on the CPU; on CUDA, torch views of DALI's output (DLPack, no copy). They
    are held, not cloned: a pipeline with exec_dynamic=True never reuses an output buffer that something
    still references (DALI's TensorGPU.__dlpack__ documentation); the encoder's batch stack is the one device
    copy they get, and the encoder holds them until that copy has run on the GPU (encode.Encoder.launch).
    After a failure the outputs of a bisection are cloned, as their pipeline is rebuilt.
    """

    def __init__(self, size: int | None, batch_size: int, device: str = "cpu", num_threads: int = 2):
        self.size, self.batch_size, self.device, self.num_threads = size, batch_size, device, num_threads
        self._lock = threading.Lock()
        self._build()

    def _geometry(self, img):
        from nvidia.dali import fn
        if self.size is None:
            return img
        img = fn.resize(img, resize_shorter=self.size, antialias=True)
        return fn.crop(img, crop=(self.size, self.size))  # centre crop

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types
        cuda, dev_id = self.device == "cuda", None
        if cuda:
            import torch
            dev_id = torch.cuda.current_device()  # torchrun's ranks: convert() set each one's GPU
        dec = {"device": "mixed", "hw_decoder_load": HW_DECODER_LOAD} if cuda else {"device": "cpu"}

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=dev_id,
                      exec_dynamic=True, prefetch_queue_depth=1)
        def encoded():
            enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
            return self._geometry(fn.decoders.image(enc, output_type=types.RGB, **dec))

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=dev_id,
                      exec_dynamic=True, prefetch_queue_depth=1)
        def raw():
            img = fn.external_source(name="raw", dtype=types.UINT8, ndim=3, layout="HWC")
            if cuda:
                img = img.gpu()
            return self._geometry(img)

        self._enc = encoded()
        self._enc.build()
        self._raw = raw()
        self._raw.build()

    def _outputs(self, out) -> list:
        tl = out[0]
        if self.device != "cuda":
            return [np.array(tl[i]) for i in range(len(tl))]
        import torch
        if tl.is_dense_tensor():  # fixed size: one (B, S, S, 3) tensor, one hand-off
            return list(torch.from_dlpack(tl.as_tensor()).unbind(0))
        return [torch.from_dlpack(tl[i]) for i in range(len(tl))]

    def _run(self, pipe, name: str, batch: list[np.ndarray]) -> list:
        pipe.feed_input(name, batch)
        return self._outputs(pipe.run())

    def decode(self, items: list[bytes]) -> list:
        """Encoded bytes -> HWC uint8 each (numpy, or a CUDA tensor), or the exception that sample raised alone."""
        if not items:
            return []
        arrays = [np.frombuffer(d, dtype=np.uint8) for d in items]
        with self._lock:
            return self._bisect(arrays, top=True)

    def _bisect(self, arrays: list[np.ndarray], top: bool = False) -> list:
        try:
            out = self._run(self._enc, "enc", arrays)
            return out if top or self.device != "cuda" else [o.clone() for o in out]
        except Exception as e:
            self._build()  # a failed DALI pipeline cannot be reused
            if len(arrays) == 1:
                return [e]
        mid = len(arrays) // 2  # a batch of B with one bad file: about 2 log2(B) runs, not B
        return self._bisect(arrays[:mid]) + self._bisect(arrays[mid:])

    def geometry(self, images: list[np.ndarray]) -> list:
        """Already-decoded RGB -> the same resize/crop as the DALI-decoded path."""
        if not images:
            return []
        with self._lock:
            return self._run(self._raw, "raw", [np.ascontiguousarray(i) for i in images])


def dali_error_reason(e: Exception) -> str:
    msg = str(e)
    for line in msg.splitlines():
        if "Could not decode" in line or "Premature" in line or "Unrecognized" in line or "not supported" in line:
            return f"DALI could not decode it ({clean_reason(line.strip())[:160]})"
    return f"DALI could not decode it ({clean_reason(msg.splitlines()[0])[:160] if msg else type(e).__name__})"


def read_screened(it, max_bytes: int) -> tuple[Screened, dict]:
    """One input read (bounded) and screened; on the reader threads (file reads release the GIL)."""
    try:
        data = it.read(max_bytes)
    except BadImageError as e:
        return Screened("reject", reason=str(e).split(": ", 1)[-1]), {}
    s = screen(data, it.ref)
    meta = {"source_bytes": len(data)}
    if s.route == "dali":
        meta["size"] = s.size
    elif s.route == "pillow":
        meta["size"] = s.rgb.shape[:2]
    return s, meta


def decode_batch(items: list, slots: list[int], stage: DaliImageStage, max_bytes: int, screened=None):
    """-> ([(slot, HWC uint8 at stored geometry, meta)], [reject dicts]). `screened`: read_screened() of each
    slot when the caller already has them (the reader threads read the next batch while this one decodes)."""
    rejects, dali, pillow = [], [], []
    for slot, (s, meta) in zip(slots, screened or [read_screened(items[i], max_bytes) for i in slots]):
        if s.route == "reject":
            rejects.append({"path": items[slot].ref, "reason": s.reason})
        elif s.route == "dali":
            dali.append((slot, s.data, meta))
        else:
            pillow.append((slot, s.rgb, meta))
    ok = []
    for (slot, _, meta), out in zip(dali, stage.decode([d for _, d, _ in dali])):
        if isinstance(out, Exception):
            rejects.append({"path": items[slot].ref, "reason": dali_error_reason(out)})
        else:
            ok.append((slot, out, meta))
    for (slot, _, meta), out in zip(pillow, stage.geometry([r for _, r, _ in pillow])):
        ok.append((slot, out, meta))
    ok.sort(key=lambda t: t[0])
    rejects.sort(key=lambda r: r["path"])
    return ok, rejects
