"""Records genuine stack traces from the real runtimes into traces.json (run once; the
unit tests read the file, and test_multiline also runs python3 at test time).

    python tests/unit/processing/data/make_traces.py

Each entry is the whole stderr of one program run that prints exactly one event (an
uncaught exception, or a caught one printed whole), so the expected grouping is known:
one record per entry. Python, Java (javac/java) and Node.js are run when present; Go is
not installed on the machine that recorded the file: its entries are written by hand
from the runtime's documented panic and goroutine-dump format (``runtime/panic.go``,
``runtime/traceback.go``) and marked ``handwritten``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent

PYTHON = {
    "simple": "def f():\n    raise ValueError('boom')\nf()\n",
    "chained_during_handling": (
        "try:\n    {}['k']\nexcept KeyError:\n    raise RuntimeError('while handling')\n"
    ),
    "chained_direct_cause": (
        "try:\n    1/0\nexcept ZeroDivisionError as e:\n    raise ValueError('bad') from e\n"
    ),
    "syntax_error": "def f(:\n    pass\n",
    "caret_expression": "d = {'a': {'b': None}}\nx = d['a']['b']['c']\n",
    "exception_group": ("raise ExceptionGroup('many', [ValueError('one'), TypeError('two')])\n"),
    "print_exc": (
        "import traceback\ntry:\n    int('x')\nexcept ValueError:\n    traceback.print_exc()\n"
    ),
    "keyboard_interrupt": "raise KeyboardInterrupt\n",
    "nested_module": ("import json\njson.loads('{bad')\n"),
}

JAVA = {
    "Uncaught": """
public class Uncaught {
    static void inner() { throw new IllegalStateException("inner failure"); }
    static void outer() {
        try { inner(); }
        catch (IllegalStateException e) { throw new RuntimeException("outer failure", e); }
    }
    public static void main(String[] a) { outer(); }
}""",
    "Suppressed": """
public class Suppressed {
    static class R implements AutoCloseable {
        public void close() throws Exception { throw new java.io.IOException("close failed"); }
    }
    public static void main(String[] a) throws Exception {
        try (R r = new R()) { throw new IllegalArgumentException("body failed"); }
    }
}""",
    "PrintStackTrace": """
public class PrintStackTrace {
    static int depth(int n) { if (n == 0) return 1 / n; return depth(n - 1); }
    public static void main(String[] a) {
        try { depth(3); } catch (ArithmeticException e) {
            new RuntimeException("wrapped", new IllegalStateException("mid", e)).printStackTrace();
        }
    }
}""",
    "NullPointer": """
public class NullPointer {
    public static void main(String[] a) { String s = a.length > 5 ? "x" : null; s.length(); }
}""",
}

NODE = {
    "uncaught": "function f() { throw new Error('boom'); }\nf();\n",
    "type_error": "const o = undefined;\nconsole.log(o.x);\n",
    "console_error_cause": (
        "const e = new Error('outer', { cause: new TypeError('inner') });\nconsole.error(e);\n"
    ),
    "error_with_code": (
        "const e = new Error('no file'); e.code = 'ENOENT'; e.path = '/x';\nconsole.error(e);\n"
    ),
    "uncaught_custom": (
        "class AppError extends Error { constructor(m) { super(m); this.name = 'AppError'; } }\n"
        "setTimeout(() => { throw new AppError('late'); }, 1);\n"
    ),
}

GO_HANDWRITTEN = {
    "panic": (
        "panic: runtime error: index out of range [5] with length 3\n"
        "\n"
        "goroutine 1 [running]:\n"
        "main.lookup(...)\n"
        "\t/app/main.go:12\n"
        "main.main()\n"
        "\t/app/main.go:8 +0x1d\n"
        "exit status 2"
    ),
    "custom_panic_goroutines": (
        "panic: connection pool exhausted\n"
        "\n"
        "goroutine 18 [running]:\n"
        "main.(*Pool).Get(0xc000010030)\n"
        "\t/app/pool.go:41 +0x1a5\n"
        "main.worker(0xc000010030, 0x3)\n"
        "\t/app/main.go:27 +0x3c\n"
        "created by main.main in goroutine 1\n"
        "\t/app/main.go:19 +0x6f\n"
        "\n"
        "goroutine 1 [chan receive]:\n"
        "main.main()\n"
        "\t/app/main.go:22 +0x105"
    ),
    "nil_map_recovered": (
        "panic: assignment to entry in nil map [recovered]\n"
        "\tpanic: assignment to entry in nil map\n"
        "\n"
        "goroutine 1 [running]:\n"
        "main.main.func1()\n"
        "\t/app/main.go:9 +0x4c\n"
        "panic({0x4a3b20?, 0x4e6e70?})\n"
        "\t/usr/local/go/src/runtime/panic.go:770 +0x132\n"
        "main.main()\n"
        "\t/app/main.go:12 +0x45"
    ),
    "segv": (
        "panic: runtime error: invalid memory address or nil pointer dereference\n"
        "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x45a2b1]\n"
        "\n"
        "goroutine 1 [running]:\n"
        "main.main()\n"
        "\t/app/main.go:7 +0x11"
    ),
    "deadlock": (
        "fatal error: all goroutines are asleep - deadlock!\n"
        "\n"
        "goroutine 1 [chan receive]:\n"
        "main.main()\n"
        "\t/app/main.go:5 +0x2d"
    ),
}


def run(cmd: list[str], cwd: str) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    return out.stderr.rstrip("\n")


def main() -> None:
    doc: dict[str, dict[str, object]] = {"python": {}, "java": {}, "node": {}, "go": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, code in PYTHON.items():
            (Path(tmp) / f"{name}.py").write_text(code)
            doc["python"][name] = run([sys.executable, f"{name}.py"], tmp)
        doc["python_version"] = sys.version.split()[0]
        if shutil.which("javac") and shutil.which("java"):
            for name, code in JAVA.items():
                (Path(tmp) / f"{name}.java").write_text(code)
                subprocess.run(["javac", f"{name}.java"], cwd=tmp, check=True, timeout=120)
                doc["java"][name] = run(["java", "-cp", tmp, name], tmp)
            doc["java_version"] = run(["java", "-version"], tmp).splitlines()[0]
        if shutil.which("node"):
            for name, code in NODE.items():
                (Path(tmp) / f"{name}.js").write_text(code)
                doc["node"][name] = run(["node", f"{name}.js"], tmp)
            doc["node_version"] = subprocess.run(
                ["node", "--version"], capture_output=True, text=True
            ).stdout.strip()
    doc["go"] = dict(GO_HANDWRITTEN)
    doc["go_handwritten"] = True
    (HERE / "traces.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
