"""Log sources: what reads each container's output into record batches.

``base`` says what a source is; ``api`` reads the engine's logs API, ``jsonfile`` the
json-file driver's files on disk; ``lines`` is the partial-line, cap and resume path both
share; ``choice`` picks a source per container; ``reader`` runs one container's reads and
``followers`` owns every reader task and delivered position.
"""
