"""The json-file source, one concern a module, as Fluent Bit's ``in_tail``:

``source`` (the source itself), ``tail`` (following one container's log), ``files`` (its
chain of files across rotations), ``inotify`` (the change notifications), ``seek`` (finding
a position by offset or time) and ``decoder`` (lines → records).
"""
