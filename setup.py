"""Only the optional C extension lives here; everything else is in pyproject.toml.

``optional=True``: where no C compiler is found the build goes on without it, and the
agent runs the same Python code the extension mirrors (see agent/speedups.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "agent._speedups",
            ["agent/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
