"""Video in and out: video files (mp4, mov, mkv, webm, avi) decoded and encoded with PyAV (its wheels
bundle FFmpeg; no system ffmpeg needed), a folder of numbered images or an animated GIF, and a folder of
PNG frames out.

Frames stream through one at a time (constant memory). Only local regular files are opened: URLs,
playlists and concat lists, devices and pipes are refused before FFmpeg sees them, and FFmpeg may only
use the ``file`` protocol, so a container cannot make it fetch anything else. Caps (frame count,
duration, pixels per frame: the image cap) are checked from the header before decoding.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from impasto.errors import ImageTooLargeError, InvalidImageError, InvalidOptionError
from impasto.io.dataset import IMAGE_SUFFIXES
from impasto.io.image import _resolve_max_pixels, count_frames, iter_frames, load_image

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
# Text files FFmpeg would follow to other files or the network.
PLAYLIST_SUFFIXES = (".m3u", ".m3u8", ".txt", ".ffconcat", ".sdp", ".pls", ".xspf", ".cue", ".mpd")
PLAYLIST_MAGIC = (b"#EXTM3U", b"ffconcat", b"[playlist]", b"<?xml", b"v=0")
MAX_FRAMES = 20_000  # about 11 minutes at 30 fps
MAX_SECONDS = 3600.0
FFMPEG_OPTIONS = {"protocol_whitelist": "file"}


def frame_sources(source: str | os.PathLike[str]) -> list[str]:
    """Names of the frames of ``source`` in order (file paths for a folder, 'gif:N' for GIF frames)."""
    path = Path(source)
    if path.is_dir():
        frames = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not frames:
            raise InvalidOptionError(f"{path} holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
        return frames
    if path.is_file() and path.suffix.lower() == ".gif":
        return [f"gif:{i}" for i in range(count_frames(path))]
    if path.is_file():
        raise InvalidOptionError(f"{path} is not a frame folder or GIF; read a video file with decode_video "
                                 f"(its frames) or probe_video (its length)")
    raise InvalidOptionError(f"no such frame folder or GIF: {path}")


def read_frames(source: str | os.PathLike[str]) -> Iterator[tuple[str, Tensor | InvalidImageError]]:
    """Yield (name, frame) in order, each frame (1, 3, H, W) float in [0, 1], one at a time (constant memory).

    A frame that cannot be decoded is yielded as its ``InvalidImageError`` instead, so the caller
    decides whether to stop, skip or copy. In a GIF, frames after an undecodable one cannot be
    reached; each of them is yielded as an error too.
    """
    path = Path(source)
    names = frame_sources(path)
    if path.is_file():  # a GIF: decoded in one pass
        frames = iter_frames(path)
        for index, name in enumerate(names):
            try:
                yield name, next(frames)
            except StopIteration:
                yield name, InvalidImageError(f"'{path}' frame {index + 1}: missing (the file ends early)")
            except InvalidImageError as exc:
                yield name, exc
                for later in names[index + 1:]:
                    yield later, InvalidImageError(f"'{path}' {later}: unreachable after the undecodable frame {index + 1}")
                return
        return
    for name in names:
        try:
            yield name, load_image(name)
        except InvalidImageError as exc:
            yield name, exc


def frame_path(out_dir: str | os.PathLike[str], index: int) -> Path:
    return Path(out_dir) / f"frame_{index + 1:05d}.png"


# ------------------------------------------------------------------------------------------ video files

def is_video_file(source: str | os.PathLike[str]) -> bool:
    return Path(source).suffix.lower() in VIDEO_SUFFIXES


def check_local_video(source: str | os.PathLike[str]) -> Path:
    """The path of a local regular video file, or InvalidOptionError saying why it is refused (before any decoding)."""
    text = os.fspath(source)
    if "://" in text or text.startswith(("rtmp:", "rtsp:", "http:", "https:", "ftp:", "udp:", "tcp:", "pipe:", "concat:")):
        raise InvalidOptionError(f"{text}: only local video files are read, not URLs or streams; download it first")
    path = Path(text)
    if path.suffix.lower() in PLAYLIST_SUFFIXES:
        raise InvalidOptionError(f"{path}: playlists and concat lists are refused (they make FFmpeg open other "
                                 "files or URLs); pass the video file itself")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InvalidOptionError(f"no such video file: {path}") from None
    except OSError as exc:
        raise InvalidOptionError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a pipe" if stat.S_ISFIFO(mode) else \
            "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise InvalidOptionError(f"{path} is {kind}; only regular video files are read")
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    if head.startswith(PLAYLIST_MAGIC):
        raise InvalidOptionError(f"{path} is a playlist or stream description, not a video; pass the video file itself")
    return path


@dataclass(frozen=True)
class VideoInfo:
    """What the header of a video file says (checked against the caps)."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frames: int  # from the header (estimated from duration x fps when the container does not say)
    seconds: float
    has_audio: bool


def _open(path: Path):
    import av  # imported on use: importing impasto must not load FFmpeg

    try:
        return av.open(str(path), options=FFMPEG_OPTIONS)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidImageError(f"{path} cannot be opened as a video ({_ffmpeg_reason(exc)}); "
                                "it may be truncated, damaged or not a video") from None


def _ffmpeg_reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).splitlines()[0][:200]


def probe_video(source: str | os.PathLike[str], *, start: float = 0.0, duration: float | None = None, every: int = 1,
                max_pixels: int | None = None, max_frames: int | None = None, max_seconds: float | None = None) -> VideoInfo:
    """Check a video file from its header: local regular file, a video stream, and the part to stylise (from
    ``start`` for ``duration`` seconds, every ``every``-th frame) under the caps on frames, seconds and
    pixels per frame. Raises InvalidOptionError / InvalidImageError / ImageTooLargeError."""
    path = check_local_video(source)
    cap = _resolve_max_pixels(max_pixels)
    max_frames = MAX_FRAMES if max_frames is None else max_frames
    max_seconds = MAX_SECONDS if max_seconds is None else max_seconds
    with _open(path) as container:
        if not container.streams.video:
            raise InvalidImageError(f"{path} holds no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"{path}: its video stream has no frame size (damaged header)")
        if width * height > cap:
            raise ImageTooLargeError(f"{path}: frames of {width}x{height} = {width * height:,} pixels exceed the cap of "
                                     f"{cap:,}; scale the video down first or raise IMPASTO_MAX_PIXELS")
        fps = Fraction(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise InvalidImageError(f"{path}: its video stream has no frame rate")
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000
        else:
            seconds = 0.0
        frames = stream.frames or round(seconds * fps)
        span = max(0.0, min(seconds, start + duration) - start) if duration is not None else max(0.0, seconds - start)
        wanted = -(-round(span * fps) // every) if (start or duration is not None) else -(-frames // every)
        if span > max_seconds:
            raise InvalidOptionError(f"{path}: {span:.0f} s to stylise; at most {max_seconds:.0f} s are stylised in one run: "
                                     "cut it with --start/--duration")
        if wanted > max_frames:
            raise InvalidOptionError(f"{path}: {wanted} frames to stylise; at most {max_frames} are stylised in one run: "
                                     "cut it with --start/--duration or thin it with --every")
        return VideoInfo(path, width, height, fps, int(frames), seconds, bool(container.streams.audio))


def _frame_tensor(frame) -> Tensor:
    rgb = frame.to_ndarray(format="rgb24")
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255).contiguous()


def decode_video(source: str | os.PathLike[str], *, start: float = 0.0, duration: float | None = None, every: int = 1,
                 max_pixels: int | None = None, max_frames: int | None = None) -> Iterator[tuple[str, Tensor]]:
    """Yield ("frame N", (1, 3, H, W) float in [0, 1]) for the frames from ``start`` seconds for ``duration``
    seconds, every ``every``-th one, one at a time. A stream that breaks off mid-way raises InvalidImageError
    naming the last good frame."""
    import av

    max_frames = MAX_FRAMES if max_frames is None else max_frames
    info = probe_video(source, start=start, duration=duration, every=every, max_pixels=max_pixels, max_frames=max_frames)
    path = info.path
    end = None if duration is None else start + duration
    taken = kept = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else kept / float(info.fps)
                if t < start - 1e-6:
                    continue
                if end is not None and t >= end - 1e-6:
                    break
                index = taken
                taken += 1
                if index % every:
                    continue
                kept += 1
                if kept > max_frames:
                    raise InvalidOptionError(f"{path}: more than {max_frames} frames to stylise; cut with --start/--duration")
                yield f"frame {index + 1}", _frame_tensor(frame)
        except av.FFmpegError as exc:
            raise InvalidImageError(f"{path}: decoding failed after {kept} frames ({_ffmpeg_reason(exc)}); "
                                    "the file is truncated or damaged") from None
    if kept == 0:
        raise InvalidImageError(f"{path}: no frames decoded" + (f" from {start:g} s on" if start else "")
                                + "; the file is damaged, or --start lies past its end")


def even_size(height: int, width: int) -> tuple[int, int]:
    """h264 in yuv420p needs even sides: the frame is padded by one replicated row/column where odd."""
    return height + height % 2, width + width % 2


def _to_rgb24(image: Tensor) -> np.ndarray:
    h, w = image.shape[-2:]
    eh, ew = even_size(h, w)
    if (eh, ew) != (h, w):
        image = torch.nn.functional.pad(image, (0, ew - w, 0, eh - h), mode="replicate")
    return (image[0].clamp(0, 1).permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).contiguous().numpy()


class VideoWriter:
    """Write frames to an h264 mp4 (yuv420p, even sides) at ``fps``, optionally copying the audio packets of
    ``audio_from`` between ``start`` and ``start + duration`` seconds unchanged. The file appears at
    ``path`` only when ``close()`` succeeds (written to ``path.part`` first, then renamed); ``abort()`` or
    an exception inside ``with`` removes the partial file."""

    def __init__(self, path: str | os.PathLike[str], fps: Fraction, *, audio_from: str | os.PathLike[str] | None = None,
                 start: float = 0.0, duration: float | None = None, crf: int = 18) -> None:
        import av

        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.fps, self.crf = Fraction(fps).limit_denominator(1_000_000), crf
        self.container = av.open(str(self.part), "w", format="mp4")
        self.stream = None
        self.audio_from, self.start, self.duration = audio_from, start, duration
        self.audio_source = self.audio_out = None
        self.frames = 0

    def _start(self, height: int, width: int) -> None:
        """Add the streams (all of them before the first packet: the header is written then)."""
        self.stream = self.container.add_stream("libx264", rate=self.fps)
        self.stream.height, self.stream.width = height, width
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(self.crf), "preset": "medium"}
        if self.audio_from is not None:
            self.audio_source = _open(Path(self.audio_from))
            if self.audio_source.streams.audio:
                self.audio_out = self.container.add_stream_from_template(self.audio_source.streams.audio[0])

    def write(self, image: Tensor) -> None:
        import av

        rgb = _to_rgb24(image)
        if self.stream is None:
            self._start(*rgb.shape[:2])
        elif (self.stream.height, self.stream.width) != rgb.shape[:2]:
            raise InvalidOptionError(f"frame {self.frames + 1} is {rgb.shape[1]}x{rgb.shape[0]}, the video is "
                                     f"{self.stream.width}x{self.stream.height}; every frame must have one size")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def _copy_audio(self) -> None:
        """Mux the source's audio packets in the cut, unchanged apart from timestamps shifted by ``start``."""
        if self.audio_out is None:
            return
        audio_in = self.audio_source.streams.audio[0]
        tb = audio_in.time_base
        offset = round(self.start / tb) if self.start else 0
        end = None if self.duration is None else self.start + self.duration
        for packet in self.audio_source.demux(audio_in):
            if packet.dts is None or packet.size == 0:
                continue
            t = float((packet.pts if packet.pts is not None else packet.dts) * tb)
            if (self.start > 0 and t < self.start - 1e-6) or (end is not None and t >= end - 1e-6):
                continue  # (at start 0 the encoder's priming packets, before time 0, stay)
            if packet.pts is not None:
                packet.pts -= offset
            packet.dts -= offset
            packet.stream = self.audio_out
            self.container.mux(packet)

    def close(self) -> Path:
        """Flush the encoder, copy the audio, and move the finished file into place."""
        if self.stream is None:
            self.abort()
            raise InvalidOptionError(f"no frames were written to {self.path}")
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self._copy_audio()
            self.container.close()
        except BaseException:
            self.abort()
            raise
        finally:
            if self.audio_source is not None:
                self.audio_source.close()
        os.replace(self.part, self.path)
        return self.path

    def abort(self) -> None:
        """Close everything and remove the partial file."""
        for container in (self.container, self.audio_source):
            try:
                if container is not None:
                    container.close()
            except Exception:  # noqa: BLE001 - the partial file goes either way
                pass
        self.part.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None:
            self.abort()
        return False


def write_test_clip(path: str | os.PathLike[str], frames: list[Tensor], fps: int = 12, tone_hz: float | None = 440.0,
                    sample_rate: int = 16_000) -> Path:
    """An h264 mp4 of ``frames`` with, if ``tone_hz``, an AAC sine tone as long as the video (for tests and demos)."""
    import av

    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        h, w = even_size(*frames[0].shape[-2:])
        video.height, video.width, video.pix_fmt = h, w, "yuv420p"
        audio = None
        if tone_hz:
            audio = out.add_stream("aac", rate=sample_rate)
            audio.layout = "mono"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(_to_rgb24(image), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if audio is not None:
            n = round(len(frames) / fps * sample_rate)
            t = np.arange(n) / sample_rate
            samples = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)[None]
            chunk = 1024
            for k in range(0, n, chunk):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + chunk]), format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = k
                for packet in audio.encode(frame):
                    out.mux(packet)
            for packet in audio.encode(None):
                out.mux(packet)
    return path
