"""notcat-sort: sort a photo library into cat/ and not-cat/, fast, on a CPU, without losing a file."""

__version__ = "0.1.0"
