"""Simulated apparel retail for the demo, the benchmarks and the tests.

- `synthetic`: a simple seeded event generator (pipeline tests and benchmarks).
- `scenario`: every world parameter, loaded strictly from `scenarios/*.json`.
- `world`: the apparel world (catalogue, users, click model, latency) with a
  fast path (`World.simulate`, `World.expected`) and a demo path
  (`draw_user`, `candidates`, `respond`, `latency_ms`) through the real cascade.
- `oracle`: exact scoring and the offline search for the best config.

May import only `schemas`, `serving_sidecar`, numpy and the standard library.
"""
