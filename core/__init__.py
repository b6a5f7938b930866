"""tailrank's shared layer: what training and serving must agree on, with no torch, Feast or gRPC.

- ``core.schema``: column names, file names, the head/tail rule, the id order, Gini;
- ``core.contract``: the model contract (ONNX inputs and outputs, manifest fields and
  file names, the feature refs serving reads) and ``build_feed``, the one function that
  turns one user + N candidates into the model's feed;
- ``core.rerank``: the long-tail re-ranking rule;
- ``core.ids``, ``core.files``, ``core.cli``: id checks, atomic writes, CLI plumbing.

Import rules (docs/ARCHITECTURE.md, checked by ``make lint``): ``core`` imports neither
``training`` nor ``serving``; both import ``core``.
"""
