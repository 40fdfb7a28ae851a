"""The base of korasr's own errors: the CLI reports them as one line naming the file and the reason."""


class KorasrError(Exception):
    pass
