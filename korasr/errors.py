"""The base of korasr's own errors: the CLI reports them as one line naming the file and the reason; and the one
place that takes credentials out of what an error, a log line or a status page shows."""

import re

_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@", re.IGNORECASE)


def without_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` of every URI in it replaced by ``***@`` (a tracking URI or a database URL
    in an error message), for what korasr shows and logs."""
    return _CREDENTIALS.sub(r"\1***@", text)


class KorasrError(Exception):
    pass
