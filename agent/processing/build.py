"""Every container's processing: its settings resolved once, its chain built from them.

``Processing`` (one per agent, handed to the readers by the runtime) resolves each
container's settings (``agent.processing.resolve``: global, config rules, labels),
reports invalid labels once per container, builds its ``Chain`` (``build``), and keeps
the processing counters per container (``counters``).

The stages, in order: multiline → parse → filter → rate limit → redact. Joining comes
first so that the later stages see whole events; the rate limit counts what the filters
keep; redaction comes last, after the stages that might copy text (parsed fields, a
summary) and before the pipeline, so nothing downstream sees a secret.
"""

from __future__ import annotations

from collections import Counter

import structlog

from agent.positions import Position
from agent.processing.chain import Chain, ChainDriver, Send, Stage
from agent.processing.config import ProcessingConfig
from agent.processing.resolve import Problem, Resolved, resolve
from agent.record import ContainerMeta

log = structlog.get_logger("agent.processing")


def build(
    settings: Resolved,
    config: ProcessingConfig,
    meta: ContainerMeta,
    counters: Counter[str] | None = None,
) -> Chain:
    """The chain of stages ``settings`` ask for (an empty one when they ask for none).
    A stage's module is imported when a chain first needs it: an agent that processes
    nothing never loads the presets' patterns."""
    counters = counters if counters is not None else Counter()
    stages: list[Stage] = []
    if settings.multiline is not None:
        from agent.processing.multiline import Multiline

        stages.append(Multiline(settings.multiline, counters=counters))
    parser = settings.parser
    if parser is not None or settings.detect_level:
        from agent.processing.parse import Parse

        stages.append(Parse(parser, counters))
    if settings.include or settings.exclude:
        from agent.processing.filter import Filter

        stages.append(Filter(settings.include, settings.exclude, counters))
    limit = None
    if settings.rate_limit is not None:
        from agent.processing.limit import RateLimit

        limit = RateLimit(settings.rate_limit, meta, counters)
        stages.append(limit)
    if settings.redact:
        from agent.processing.redact import Redact

        always = parser is not None and (parser.type == "regex" or not parser.keep_message)
        stages.append(Redact(settings.redact, config.redactions, counters, always))
    chain = Chain(stages, counters)
    if limit is not None and not limit.drop:
        chain.delay = limit.delay
        chain.pieces = limit.pieces
    return chain


class Processing:
    """Every container's processing settings, chains and counters (one per agent)."""

    CACHE = 4096  # containers whose settings (and counters) are kept

    def __init__(
        self,
        config: ProcessingConfig,
        drain_seconds: float = 10.0,
        previous: Processing | None = None,
    ) -> None:
        self.config = config
        self.drain_seconds = drain_seconds  # what a reader's last flush may wait, at most
        self._resolved: dict[str, Resolved] = {}
        self.invalid_labels = 0  # label problems reported (once per container)
        self.counters: dict[str, Counter[str]] = {}  # per container id
        self.retired: Counter[str] = Counter()  # the counters of containers forgotten
        if previous is not None:
            # A reload: the counters go on (running readers keep their chains, and with
            # them their containers' counters); they never go back.
            self.counters = previous.counters
            self.retired = previous.retired
            self.invalid_labels = previous.invalid_labels

    def settings(self, meta: ContainerMeta) -> Resolved:
        """The container's settings: resolved at its first start, label problems
        reported then (a container's labels never change)."""
        got = self._resolved.get(meta.id)
        if got is not None:
            return got
        got, problems = resolve(self.config, meta)
        for p in problems:
            self._report(meta, p)
        if len(self._resolved) >= self.CACHE:
            old = next(iter(self._resolved))
            del self._resolved[old]
            self.retired.update(self.counters.pop(old, ()))
        self._resolved[meta.id] = got
        return got

    def _report(self, meta: ContainerMeta, problem: Problem) -> None:
        self.invalid_labels += 1
        log.warning(
            "processing_label_invalid",
            container=meta.name,
            id=meta.id[:12],
            label=problem.label,
            problem=problem.problem,
            action="ignored",
        )

    def enabled(self, meta: ContainerMeta) -> bool:
        return self.settings(meta).enabled

    def chain(self, meta: ContainerMeta) -> Chain | None:
        """The container's chain, or None when its settings ask for nothing."""
        settings = self.settings(meta)
        if settings.empty:
            return None
        counters = self.counters.setdefault(meta.id, Counter())
        return build(settings, self.config, meta, counters)

    def driver(
        self, meta: ContainerMeta, send: Send, positions: dict[str, Position]
    ) -> ChainDriver | None:
        """What the container's reader emits through (``positions``: its read positions),
        or None (no chain: the reader's own emit, as without processing)."""
        chain = self.chain(meta)
        if chain is None:
            return None
        return ChainDriver(chain, send, positions, meta.id, self.drain_seconds)

    def totals(self) -> Counter[str]:
        """Every counter summed over the containers (all time), with ``invalid_labels``."""
        out: Counter[str] = Counter(self.retired)
        for c in list(self.counters.values()):
            out.update(c)
        out["invalid_labels"] = self.invalid_labels
        return out
