"""Serve a model folder over HTTP: micro-batching, auth, limits, health and Prometheus metrics.

`tailor serve PATH` runs `tailorml.serve.server.run(ServeSettings(...))`; the app itself is built
by `tailorml.serve.app.create_app` on the service kit (`tailorml.serve.kit`: errors, API key,
limits, probes, metrics, drain), which finwatch's HTTP app uses too. A served model is a folder
(see `tailorml.predictors`), never training code, and a replica holds no state between requests, so
any number of them can sit behind a load balancer.
"""
