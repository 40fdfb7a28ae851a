#!/bin/sh
# The service image's entrypoint, run by tini (PID 1), which hands it SIGTERM: `exec` makes korasr serve that child.
# The image's contract: KORASR_MODEL (default /model: the export mounted or baked in; models:/NAME@ALIAS reads the
# registry at MLFLOW_TRACKING_URI) and KORASR_PORT (default 8000) become `korasr serve --model/--port`, on every
# interface (the container's network is its own). Every other flag of `korasr serve` follows as the container's
# arguments (CMD; `args:` in Kubernetes); the keys come from KORASR_API_KEY, KORASR_ADMIN_KEY and
# KORASR_CALLBACK_SECRET, the jobs' folder from KORASR_JOBS_DIR, which korasr serve reads itself.
set -eu
exec korasr serve --model "${KORASR_MODEL:-/model}" --host 0.0.0.0 --port "${KORASR_PORT:-8000}" "$@"
