"""Image codecs: the compression "attack" applied to camera images.

``create_codec(spec)`` builds a codec from a spec string; the scheme before the first colon
picks the constructor in :data:`mdfr.registry.CODECS`:

- ``jpeg:<quality>``: PIL/libjpeg at quality 1-100, 4:2:0 chroma; the classical control.
- ``compressai:<zoo-name>:<quality>``: a CompressAI zoo model (``bmshj2018-hyperprior``,
  ``mbt2018-mean``, ... see ``mdfr codec list``) with its official MSE-optimised weights, read
  from the local torch hub cache (``$TORCH_HOME/hub/checkpoints``; nothing is downloaded).
- ``compressai:<zoo-name>:<quality>:<checkpoint>``: the same architecture with weights from a
  file (a state_dict, or a dict holding one under ``state_dict`` as CompressAI's
  ``examples/train.py`` writes). The path is everything after the third colon.
- ``learned:<checkpoint>``: a model trained by ``mdfr codec train``.
- ``external:<dir>``: images compressed by another tool (e.g. the official HiFiC code),
  mirrored under ``<dir>`` by the same relative path as the original. The mirror may use a
  different image extension (``a/b.jpg`` is looked up as ``a/b.jpg``, then ``a/b.png``, ...).

A codec maps a uint8 ``HxWx3`` image to a :class:`CodecResult` holding the decoded image (same
shape) and the number of bytes of the compressed representation. ``fingerprint()`` hashes
what determines the output so prepared datasets are keyed by it: the quality and libjpeg/Pillow
versions for JPEG; the model class, the weights' content (CDF tables included), the CompressAI
version and the device type for learned codecs (not the file's name or place); the mirror's
file contents for ``external``.

Learned codecs produce real bitstreams: ``update()`` once, ``compress`` -> bytes (with a
13+ byte header: size, latent shape, string lengths) -> ``decompress``; the image is padded to
a multiple of 64 (replicated right/bottom edge) and cropped back.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mdfr.devices import resolve_device  # noqa: F401  (re-exported: codecs take a device)
from mdfr.errors import DataError, UsageError
from mdfr.hashing import file_sha256
from mdfr.registry import CODECS

# One line per scheme: shown by `mdfr codec list` and in spec error messages.
SCHEME_SYNTAX: dict[str, str] = {
    "jpeg": "jpeg:<quality 1-100>",
    "compressai": "compressai:<zoo-name>:<quality>[:<checkpoint>]",
    "learned": "learned:<checkpoint from 'mdfr codec train'>",
    "external": "external:<dir>",
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


class CodecResult(NamedTuple):
    """A compressed-and-decoded image; unpacks as ``(image, nbytes)``.

    Attributes:
        image: decoded image, uint8, same ``HxWx3`` shape as the input.
        nbytes: size in bytes of the compressed representation (bitstream plus header).
    """

    image: np.ndarray
    nbytes: int


class Codec(ABC):
    """A lossy image codec.

    Attributes:
        name: the scheme (``jpeg``, ``compressai``, ``learned``, ``external``).
        spec: canonical spec string; ``create_codec(codec.spec)`` rebuilds an equal codec.
    """

    name: str = ""

    def __init__(self, spec: str):
        self.spec = spec
        self._fingerprint: str | None = None

    @abstractmethod
    def compress(self, img: np.ndarray, rel_path: str | None = None) -> CodecResult:
        """Compress and decode ``img`` (uint8 ``HxWx3``).

        Args:
            img: the original image.
            rel_path: the image's path relative to the dataset root; codecs that look up
                precomputed results (``external``) need it, the others use it in messages.
        """

    def fingerprint(self) -> str:
        """Hex SHA-256 of everything that determines this codec's output (cached)."""
        if self._fingerprint is None:
            payload = json.dumps(self._identity(), sort_keys=True).encode()
            self._fingerprint = hashlib.sha256(payload).hexdigest()
        return self._fingerprint

    def _identity(self) -> dict[str, Any]:
        """JSON-able description of what determines the output; subclasses extend it."""
        return {"spec": self.spec}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def create_codec(spec: str, device: str | None = None) -> Codec:
    """Build a codec from its spec string.

    Args:
        spec: ``<scheme>:<arguments>``, e.g. ``jpeg:75`` or ``learned:ckpt.pt``.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` for the learned codecs (the others
            ignore it); ``None`` means ``auto``.

    Raises:
        UsageError: malformed spec or unknown scheme (the message lists the known ones).
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise UsageError(f"codec spec {spec!r} is not <scheme>:<arguments>; {_syntax_help()}")
    scheme, arg = spec.split(":", 1)
    if scheme not in CODECS:
        raise UsageError(f"codec spec {spec!r}: {CODECS.unknown_message(scheme)}; {_syntax_help()}")
    return CODECS.create(scheme, arg, device=device)


def _syntax_help() -> str:
    return "allowed: " + ", ".join(SCHEME_SYNTAX[s] for s in CODECS.names() if s in SCHEME_SYNTAX)


def check_image(img: np.ndarray, rel_path: str | None = None) -> None:
    """Raise DataError unless ``img`` is a uint8 ``HxWx3`` array."""
    if (
        not isinstance(img, np.ndarray)
        or img.dtype != np.uint8
        or img.ndim != 3
        or img.shape[2] != 3
    ):
        what = f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}"
        where = f"{rel_path}: " if rel_path else ""
        raise DataError(f"{where}codec input must be a uint8 HxWx3 RGB image, got {what}")


def parse_int(spec: str, text: str, what: str, lo: int, hi: int) -> int:
    """``int(text)`` within ``[lo, hi]``, else a UsageError naming the spec."""
    try:
        value = int(text)
    except ValueError:
        raise UsageError(
            f"codec spec {spec!r}: {what} must be an integer {lo}-{hi}, got {text!r}"
        ) from None
    if not lo <= value <= hi:
        raise UsageError(f"codec spec {spec!r}: {what} must be in {lo}-{hi}, got {value}")
    return value


# --- jpeg ---------------------------------------------------------------------------------


@CODECS.register("jpeg")
class JpegCodec(Codec):
    """Baseline JPEG through PIL (libjpeg), 4:2:0 chroma subsampling, no optimisation pass.

    Args:
        arg: the quality, 1-100.
    """

    name = "jpeg"

    def __init__(self, arg: str, device: str | None = None):
        spec = f"jpeg:{arg}"
        self.quality = parse_int(spec, arg, "quality", 1, 100)
        super().__init__(f"jpeg:{self.quality}")

    def compress(self, img: np.ndarray, rel_path: str | None = None) -> CodecResult:
        from PIL import Image

        check_image(img, rel_path)
        buf = io.BytesIO()
        # Pin subsampling so the output does not depend on PIL's default for this quality.
        Image.fromarray(img).save(buf, format="JPEG", quality=self.quality, subsampling=2)
        data = buf.getvalue()
        with Image.open(io.BytesIO(data)) as im:
            out = np.asarray(im.convert("RGB"), dtype=np.uint8)
        return CodecResult(out, len(data))

    def _identity(self) -> dict[str, Any]:
        import PIL
        from PIL import features

        # Different libjpeg builds may round differently: part of the output's identity.
        libjpeg = features.version("libjpeg_turbo") or features.version("jpg")
        return {**super()._identity(), "pillow": PIL.__version__, "libjpeg": libjpeg}


# --- external -----------------------------------------------------------------------------


@CODECS.register("external")
class ExternalCodec(Codec):
    """Images already compressed by another tool, mirrored by relative path under <dir>.

    ``nbytes`` is the mirror file's size, which is the compressed size when the tool wrote its
    bitstream format (e.g. ``.jpg``); for a decoded PNG it is only an upper bound.

    Args:
        arg: the mirror folder.
    """

    name = "external"

    def __init__(self, arg: str, device: str | None = None):
        if not arg:
            raise UsageError("codec spec 'external:' needs a folder: external:<dir>")
        self.root = Path(arg).expanduser().resolve()
        if not self.root.is_dir():
            raise UsageError(f"codec spec 'external:{arg}': {self.root} is not a folder")
        super().__init__(f"external:{self.root}")

    def lookup(self, rel_path: str) -> Path:
        """The mirror file for ``rel_path``: same path, else same stem with an image suffix."""
        rel = Path(rel_path)
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"{rel_path}: external codec needs a path relative to the dataset root")
        exact = self.root / rel
        if exact.is_file():
            return exact
        for suffix in IMAGE_SUFFIXES:
            for cand in (exact.with_suffix(suffix), exact.with_suffix(suffix.upper())):
                if cand.is_file():
                    return cand
        raise DataError(
            f"{rel_path}: no compressed file {exact} (or same name with another image suffix) in the external mirror"
        )

    def compress(self, img: np.ndarray, rel_path: str | None = None) -> CodecResult:
        from PIL import Image, UnidentifiedImageError

        check_image(img, rel_path)
        if rel_path is None:
            raise DataError(
                "external codec needs the image's relative path to find its mirror file"
            )
        path = self.lookup(rel_path)
        try:
            with Image.open(path) as im:
                out = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{path}: unreadable compressed image ({e})") from None
        if out.shape != img.shape:
            raise DataError(
                f"{path}: compressed image is {out.shape[1]}x{out.shape[0]}, "
                f"original {rel_path} is {img.shape[1]}x{img.shape[0]}"
            )
        return CodecResult(out, path.stat().st_size)

    def _identity(self) -> dict[str, Any]:
        # Content hash of the mirror: re-running the external tool must invalidate datasets.
        files = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        contents = {str(p.relative_to(self.root)): file_sha256(p) for p in files}
        return {**super()._identity(), "files": contents}


# --- learned codecs (CompressAI) -----------------------------------------------------------

# Pad to this multiple so every zoo model's latents line up (hyperpriors downsample by 64);
# padding is replicated on the right and bottom so the 16-pixel synthesis grid stays aligned
# with the image origin, and the decoded image is cropped back.
PAD_MULTIPLE = 64
# Bitstream header: original height and width (uint16), latent shape (2 x uint16), the
# number of strings (uint8), then one uint32 length per string.
_HEADER = struct.Struct(">HHHHB")
_LENGTH = struct.Struct(">I")


def pack_bitstream(height: int, width: int, shape: tuple[int, int], strings: list[bytes]) -> bytes:
    """Serialise one image's CompressAI strings with the header needed to decode them."""
    if max(height, width, *shape) > 0xFFFF:
        raise DataError(f"image {width}x{height} is too large for the codec header (max 65535)")
    head = _HEADER.pack(height, width, shape[0], shape[1], len(strings))
    return head + b"".join(_LENGTH.pack(len(s)) for s in strings) + b"".join(strings)


def unpack_bitstream(data: bytes) -> tuple[int, int, tuple[int, int], list[bytes]]:
    """Inverse of :func:`pack_bitstream`."""
    try:
        height, width, s0, s1, count = _HEADER.unpack_from(data, 0)
        pos = _HEADER.size
        lengths = [_LENGTH.unpack_from(data, pos + i * _LENGTH.size)[0] for i in range(count)]
    except struct.error:
        raise DataError(f"corrupt codec bitstream: {len(data)} bytes, header truncated") from None
    pos += count * _LENGTH.size
    strings = []
    for n in lengths:
        strings.append(data[pos : pos + n])
        pos += n
    if pos != len(data):
        raise DataError(f"corrupt codec bitstream: {len(data) - pos} bytes unaccounted for")
    return height, width, (s0, s1), strings


class NeuralCodec(Codec):
    """A CompressAI model run as a real codec: ``compress`` -> bytes -> ``decompress``.

    ``update()`` (the entropy coder's CDF tables) runs once at load time if the weights do not
    carry the tables already. ``nbytes`` is the length of the packed bitstream, header
    included. Not picklable in a useful way: pass the spec string to worker processes.

    Args:
        name: the scheme (``compressai`` or ``learned``).
        spec: canonical spec.
        model: a ``compressai.models.CompressionModel``.
        device: resolved torch device string.
    """

    def __init__(self, name: str, spec: str, model: Any, device: str):
        import torch

        super().__init__(spec)
        self.name = name
        self.device = device
        self.model = model.to(device).eval()
        # no_grad, not inference_mode: the CDF buffers made here must stay normal tensors.
        with torch.no_grad():
            self.model.update(force=False)

    def encode(self, img: np.ndarray) -> bytes:
        """Compress ``img`` (uint8 ``HxWx3``) to a self-contained bitstream."""
        import torch
        import torch.nn.functional as F

        h, w = img.shape[:2]
        x = torch.from_numpy(img.copy()).to(self.device)  # copy: inputs may be read-only
        x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        pad_h, pad_w = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        with torch.inference_mode():
            out = self.model.compress(x)
        # out["strings"] holds one list per latent (y, z, ...), one bytes object per batch item.
        strings = [s[0] for s in out["strings"]]
        shape = tuple(int(v) for v in out["shape"])
        return pack_bitstream(h, w, shape, strings)  # type: ignore[arg-type]

    def decode(self, data: bytes) -> np.ndarray:
        """Decode a bitstream from :meth:`encode` to a uint8 ``HxWx3`` image."""
        import torch

        h, w, shape, strings = unpack_bitstream(data)
        with torch.inference_mode():
            x_hat = self.model.decompress([[s] for s in strings], shape)["x_hat"]
        x_hat = x_hat[0, :, :h, :w].clamp(0, 1).mul(255).round().to(torch.uint8)
        return x_hat.permute(1, 2, 0).cpu().numpy()

    def compress(self, img: np.ndarray, rel_path: str | None = None) -> CodecResult:
        check_image(img, rel_path)
        data = self.encode(img)
        return CodecResult(self.decode(data), len(data))

    def _identity(self) -> dict[str, Any]:
        import compressai

        # The architecture and the weights' content (CDF tables included), not the file's
        # name, place or wrapping: the same model via compressai: or learned: is one codec.
        # The device can change the floats the entropy coder sees: CPU and GPU kept apart.
        cls = type(self.model)
        return {
            "model": f"{cls.__module__}.{cls.__qualname__}",
            "weights_sha256": state_dict_sha256(self.model.state_dict()),
            "compressai": compressai.__version__,
            "device": self.device.split(":")[0],
        }


def state_dict_sha256(state: dict[str, Any]) -> str:
    """Hex SHA-256 over a state_dict's names, dtypes, shapes and tensor bytes."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def zoo_names() -> list[str]:
    """CompressAI zoo image models usable as ``compressai:<name>:<quality>``."""
    from compressai.zoo.image import cfgs

    return sorted(cfgs)


def zoo_weights_path(arch: str, quality: int, metric: str = "mse") -> Path | None:
    """Where torch hub caches the official weights, or ``None`` if none are published."""
    import torch.hub
    from compressai.zoo.image import model_urls

    url = model_urls.get(arch, {}).get(metric, {}).get(quality)
    if url is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def zoo_table() -> list[dict[str, Any]]:
    """Per zoo model: its qualities and which have official weights in the local cache."""
    from compressai.zoo.image import cfgs

    rows = []
    for arch in zoo_names():
        qualities = sorted(cfgs[arch])
        paths = {q: zoo_weights_path(arch, q) for q in qualities}
        rows.append(
            {
                "name": arch,
                "qualities": qualities,
                "published": [q for q, p in paths.items() if p is not None],
                "local": [q for q, p in paths.items() if p is not None and p.is_file()],
            }
        )
    return rows


def load_state_dict_file(path: Path, spec: str) -> dict[str, Any]:
    """Tensors from a weights file (``weights_only``: no code runs from the file)."""

    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UsageError(f"codec spec {spec!r}: checkpoint {path} {what}")
    # Lazy: mdfr.checkpoints imports torch; `codec list` and specs must not pay for it.
    from mdfr.checkpoints import load_weights

    try:
        obj = load_weights(path)
    except DataError as e:
        raise DataError(f"codec spec {spec!r}: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"codec spec {spec!r}: {path} holds no state_dict")
    return obj


@CODECS.register("compressai")
def create_compressai_codec(arg: str, device: str | None = None) -> NeuralCodec:
    """A CompressAI zoo model with its official weights (local hub cache) or a checkpoint."""
    from compressai.zoo import load_state_dict as rename_keys
    from compressai.zoo.image import cfgs, model_architectures

    spec = f"compressai:{arg}"
    parts = arg.split(":", 2)
    if len(parts) < 2 or not parts[0]:
        raise UsageError(f"codec spec {spec!r}: expected {SCHEME_SYNTAX['compressai']}")
    arch = parts[0]
    if arch not in cfgs:
        raise UsageError(
            f"codec spec {spec!r}: unknown zoo model {arch!r}; known: {', '.join(zoo_names())}"
        )
    qualities = sorted(cfgs[arch])
    quality = parse_int(spec, parts[1], f"{arch} quality", qualities[0], qualities[-1])
    if len(parts) == 3 and parts[2]:
        path = Path(parts[2]).expanduser().resolve()
        spec = f"compressai:{arch}:{quality}:{path}"
    else:
        path = zoo_weights_path(arch, quality)
        spec = f"compressai:{arch}:{quality}"
        if path is None:
            raise UsageError(
                f"codec spec {spec!r}: CompressAI publishes no pretrained weights for {arch} "
                f"quality {quality}; give a checkpoint: {spec}:<checkpoint> (or --checkpoint PATH)"
            )
        if not path.is_file():
            raise UsageError(
                f"codec spec {spec!r}: pretrained weights are not in the local torch hub cache "
                f"({path}) and cannot be downloaded here; copy that file there, or give a "
                f"checkpoint: {spec}:<checkpoint> (or --checkpoint PATH)"
            )
    state = rename_keys(load_state_dict_file(path, spec))
    # The zoo spells one class key with underscores (bmshj2018_factorized_relu).
    cls = model_architectures.get(arch) or model_architectures[arch.replace("-", "_")]
    try:
        model = cls.from_state_dict(state)
    except (KeyError, RuntimeError) as e:
        raise DataError(f"codec spec {spec!r}: {path} is not a {arch} state_dict: {e}") from None
    return NeuralCodec("compressai", spec, model, resolve_device(device))


@CODECS.register("learned")
def create_learned_codec(arg: str, device: str | None = None) -> NeuralCodec:
    """A model trained by ``mdfr codec train`` (real entropy-coded bitstreams)."""
    # Lazy: codec_train imports this module (its codecs) and CompressAI; a JPEG sweep never
    # needs either.
    from mdfr.data.codec_train import load_checkpoint

    if not arg:
        raise UsageError(f"codec spec 'learned:' needs a checkpoint: {SCHEME_SYNTAX['learned']}")
    path = Path(arg).expanduser().resolve()
    spec = f"learned:{path}"
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UsageError(f"codec spec {spec!r}: checkpoint {path} {what}")
    model, _ = load_checkpoint(path)
    return NeuralCodec("learned", spec, model, resolve_device(device))
