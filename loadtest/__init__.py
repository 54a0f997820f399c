"""Capacity sign-off: open-loop load from several tenants' OpenAI-SDK clients, judged against an SLO.

``loadtest/`` talks to a gateway over HTTP only, as a client would: the admin API to make the run's
tenants and read their usage ledger, ``/v1/chat/completions`` for the load, ``/metrics`` (gateway and
engines) to see queues and KV cache fill while it runs. Nothing here imports ``router/`` or ``serving/``.

Pieces (one idea per module):
- ``config``: the traffic profile (tenants, mix, arrivals, rate sweep), TOML/YAML/JSON.
- ``slo``: the SLO file and the per-step verdict.
- ``mix`` / ``prompts`` / ``distributions``: what each request asks for.
- ``arrivals``: inter-arrival gaps (Poisson, or gamma for burstier traffic).
- ``client``: one chat request through the official ``openai`` SDK, timed token by token.
- ``sweep``: the step schedule (warm-up, measure, drain, judge) shared by the shape and the arrivals.
- ``locustfile``: the Locust user, shape and events; runs standalone (``locust -f``) or under signoff.
- ``provision`` / ``ledger``: tenants and keys through the admin API; reconciliation with the ledger.
- ``scrape``: ``/metrics`` time series of the gateway and the engines.
- ``analysis`` / ``results``: percentiles, verdicts, served tokens/s, the maximum sustainable rate.
- ``plots`` / ``report``: the run's files as Markdown, HTML and PNGs.
- ``signoff``: the whole sign-off, as ``noor signoff`` runs it.
"""
