"""The file exporter: NDJSON appended to files, whole records only, exactly once across a
crash where the files can be read back.

``exporter`` is the exporter (routing by path template, the retry of a failed batch, the
skip of what an earlier run wrote); ``config`` its options; ``files`` the open files and
their writes and rotations; ``rotation`` rotated files' names, retention and gzip;
``tail`` what earlier runs wrote, read back from the files' tails.
"""

from exporters.file.config import FileConfig, RotateConfig
from exporters.file.exporter import FileExporter
from exporters.file.rotation import gzip_file, rotated_files

__all__ = ["FileConfig", "FileExporter", "RotateConfig", "gzip_file", "rotated_files"]
