"""Asynchronous transcription jobs (``POST /v1/jobs``; the routes: ``korasr.serve.routes.jobs``).

- ``store``: the jobs' database (SQLAlchemy: SQLite in the jobs folder unless a URL names a server database);
- ``sources``: where a job's audio comes from (an upload, an allowed folder, an allowed URL), spooled under bounds;
- ``net``: the allow-lists of URL prefixes and the addresses the server never reaches unless a prefix names them;
- ``callbacks``: signed completion callbacks (Standard Webhooks: receivers verify with the ``standardwebhooks`` library), delivered with retries;
- ``worker``: the loops that decode queued jobs, recover abandoned ones, deliver callbacks and expire old jobs.

Nothing is imported here, so that ``korasr.serve.config`` can use ``net`` without importing the rest.
"""
