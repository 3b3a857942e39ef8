"""Entry point for ``gunicorn wsgi:app``: the only module-level app."""

from expplatform import create_app, plots

app = create_app()

# Serving workers only (the CLI never imports this module): load the plotting stack
# now, so the first report page a worker serves does not wait for it. Not in a
# background thread: with preload_app gunicorn forks the workers at once, and a
# worker forked mid-import keeps a half-imported matplotlib (every plot a 500).
plots.warm_up()
