"""Processing stages between the sources and delivery, one module per stage, each working
on whole batches (docs/processing.md):

    multiline → parse → filter → rate limit (limit) → redact

``build.Processing`` resolves each container's settings (``resolve``: global, config
rules, ``container-agent.logs.*`` labels) and builds its ``chain.Chain``; a reader runs
it through a ``chain.ChainDriver``. ``span`` keeps the delivered positions exact when a
stage joins or drops lines; ``config`` declares every option.
"""
