"""One module per pipeline stage; each exposes ``run(config, ...) -> result``."""
