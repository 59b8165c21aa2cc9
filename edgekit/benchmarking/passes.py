"""Bench's timing passes over its sessions: every session interleaved at one batch size (``device.timing``, the
protocol the device runner uses too), then each alone under the settings an app would use."""

from __future__ import annotations

from .. import runtimes as registry
from ..device import timing
from ..errors import first_line
from .deployment import deployment_options
from .sessions import DeploymentTiming, Entry, timed_call, warm_up


def time_pass(entries: list[Entry], batch_size: int, iterations: int, e2e_images, bar, monitor) -> None:
    """Time every session that takes ``batch_size`` interleaved (``device.timing.interleaved``) into its entry."""
    active = [e for e in entries if e.session.fixed_batch in (None, batch_size)]
    if not active:
        return
    calls = [timed_call(e, batch_size, e2e_images) for e in active]
    bar.begin(iterations, f"timing batch {batch_size} ({len(active)} variants interleaved)")
    for entry, timed in zip(active, timing.interleaved(calls, iterations, monitor, on_round=bar.advance)):
        entry.times[batch_size], entry.chunks[batch_size], entry.remeasured[batch_size] = timed.times, timed.chunks, timed.remeasured


def time_deployment(
    entry: Entry, threads, options, user_options, batch_sizes, warmup, iterations, e2e_images, bar, monitor, took_turns: bool
) -> None:
    """Time ``entry`` alone under the settings an app would use: a new session where they differ from the fair ones
    (ORT's spinning), else the same session. Every row's deployed figure is then an alone one, so runtimes compete on
    equal terms (interleaving costs each its caches); a row benched alone with the same settings already has one."""
    runtime = registry.get_runtime(entry.runtime)
    fair = {k: v for k, v in options.items() if k in runtime.options}
    wanted = deployment_options(runtime, fair, user_options)
    if wanted is None and not took_turns:
        return
    bar.describe(f"timing {entry.candidate.path.name} on {entry.runtime} alone, deployment settings")
    session = entry.session
    if wanted is not None:
        try:
            session = registry.load(entry.candidate.path, entry.runtime, threads, **wanted)
            warm_up(session, batch_sizes, warmup)
        except Exception as exc:  # the fair figures stand; say why the deployment ones are missing
            entry.notes.append(f"deployment settings {wanted} not measured ({type(exc).__name__}: {first_line(exc)})")
            return
    timing = DeploymentTiming(info=dict(session.info))
    alone = Entry(entry.candidate, entry.runtime, session, entry.size_bytes, notes=[])
    for batch_size in batch_sizes:
        if session.fixed_batch in (None, batch_size):
            time_pass([alone], batch_size, iterations, e2e_images, bar, monitor)
            timing.times[batch_size] = alone.times[batch_size]
            timing.chunks[batch_size] = alone.chunks[batch_size]
            timing.remeasured[batch_size] = alone.remeasured[batch_size]
    entry.deployment = timing  # the session, and its spinning threads, end when this function returns
