"""Archives at scale: ``korasr transcribe --manifest IN --out DIR`` on Ray Data, from one laptop to a cluster.

- :mod:`korasr.archive.sources`: what a run reads (a manifest, a list, a folder, a glob; local or by URI), streamed;
- :mod:`korasr.archive.worker`: one actor's runtime session; a file that fails becomes a row with its error;
- :mod:`korasr.archive.run`: shards, resumption, the Ray Data pipeline, the summary.
"""

from korasr.archive.run import FORMATS, ArchiveError, ArchiveOptions, transcribe_archive
from korasr.archive.worker import Settings

__all__ = ["FORMATS", "ArchiveError", "ArchiveOptions", "Settings", "transcribe_archive"]
