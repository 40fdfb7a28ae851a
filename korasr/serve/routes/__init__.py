"""The routers of `korasr serve`, one per concern, each over :class:`korasr.serve.state.ServiceState`."""

from korasr.serve.routes import admin, jobs, openai, stream, transcribe

ROUTERS = (transcribe.router, openai.router, jobs.router, stream.router, admin.router)
