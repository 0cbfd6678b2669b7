"""`autovla serve`: one model behind HTTP (plan + OpenAI-compatible chat), with batching and limits.

Modules, one job each: `config` (settings and limits), `errors` (JSON rejections naming the
field), `schema` (request and answer models), `images` (safe in-memory decoding), `batching`
(the dynamic batching queue), `engine` (the model and its planners), `chat` (the OpenAI chat
subset mapped onto a planning request), `metrics` (Prometheus), `app` (the FastAPI app, the
guard middleware and the uvicorn runner). See docs/serve.md.
"""
