"""Out of host memory while an input is read, probed or predicted: not the file's fault, so
the command stops naming the file and what to do, where an unreadable input is skipped."""

from __future__ import annotations


class OutOfHostMemory(MemoryError):
    """The host ran out of memory while an input was read or predicted: not the file's fault
    (the next input would likely fail too); the message names the file and what to do."""


def out_of_host_memory(what: str, error: MemoryError) -> OutOfHostMemory:
    """The `OutOfHostMemory` of `error` (Python's, or PyAV's av.error.MemoryError, FFmpeg's
    ENOMEM) raised while `what` (a video, or images: their paths) was read or predicted."""
    return OutOfHostMemory(
        f"out of host memory while reading or predicting {what} ({type(error).__name__}: "
        f"{error}), which is not a fault of the file; free the machine's memory (other "
        f"processes), or give a smaller --batch_size (a batch's frames or images are held "
        f"decoded), and predict it again")


def out_of_host_memory_probing(path: str, error: MemoryError) -> OutOfHostMemory:
    """The `OutOfHostMemory` of `error` raised while PyAV opened the file at `path` to tell
    what it holds (`video_file.plays_as_video`, `video_file.sound_only`), before anything is
    predicted."""
    return OutOfHostMemory(
        f"out of host memory while PyAV probed whether {path} is a video "
        f"({type(error).__name__}: {error}), which is not a fault of the file; free the "
        f"machine's memory (other processes) and run the command again")

