"""Processing stages between the sources and delivery (multiline, parsers, filters,
redaction, rate limits), one module per stage, each working on whole batches.

Empty for now: today a batch goes from a reader straight to the pipeline. See
CONTRIBUTING.md, "Adding a processing stage".
"""
