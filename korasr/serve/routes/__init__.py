"""The routers of `korasr serve`, one per concern, each over :class:`korasr.serve.state.ServiceState`."""

from korasr.serve.routes import admin, openai, stream, transcribe

ROUTERS = (transcribe.router, openai.router, stream.router, admin.router)
