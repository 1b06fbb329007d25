"""The MLflow adapter, one module per concern; stages import the module they need.

- ``keys``: the stage contract (tag keys, stage and alias names, artifact paths); no imports
- ``store``: what a tracking URI is, engines, reachability, schema revision, locks, lost connections
- ``session``: opening the store and the experiment
- ``lookups``: filter quoting and run searches
- ``sweep``: RUNNING runs nobody will close
- ``runs``: connect, stage runs, batched logging, artifacts
- ``model_io``: logging and safe loading of models
- ``registry``: versions, tags, aliases, the registration lock
- ``status``: what a store holds, for the results stage and the status script
"""
