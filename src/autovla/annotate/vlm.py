"""Reasoning annotation with a large VLM over an OpenAI-compatible chat API.

    select samples -> build messages (template, camera data URLs, hint) -> POST
    /chat/completions (bounded concurrency, timeouts, retries with backoff) -> check the
    answer (re-ask with the reason, bounded) -> append to the resume cache -> at the end,
    rewrite the manifest once, atomically, from every cache file

The resume cache is JSON Lines, one line per finished sample, keyed by (sample id, template
name@version): a rerun sends nothing already answered, accepted or rejected. Shards write
their own cache files (`vlm-cache-<template>-<I>-of-<N>.jsonl`), and each run applies all
cache files it finds, so shards can run anywhere and the last one to finish leaves the
complete manifest. A killed run loses at most the answers in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import ValidationError

from autovla.annotate.vlm_parse import Verdict, check_answer
from autovla.annotate.vlm_prompt import (
    Frames,
    VLMTemplate,
    build_messages,
    hint_action,
    load_template,
    repair_messages,
)
from autovla.data.schema import DrivingSample
from autovla.io import file_lock, write_json

MAX_RESPONSE = 4 * 2**20  # bytes of one answer; max_tokens of text is far less
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})  # wrong key, model or endpoint: stop the whole run
CACHE_DIR = "annotations"


class AnnotationError(ValueError):
    """A run that cannot go on (bad endpoint, key or model name; unreadable cache)."""


@dataclass
class VLMOptions:
    endpoint: str  # base URL of the API, e.g. http://localhost:8000/v1
    model: str
    api_key: str | None = None
    template: str = "vlm-v1"
    concurrency: int = 32
    timeout: float = 120.0  # s per request
    max_retries: int = 5  # per request, on 429 / 5xx / connection errors / timeouts
    repair_attempts: int = 2  # re-asks after a rejected answer
    backoff: float = 1.0  # s, first retry delay (doubles, with jitter, capped at 60 s)
    frames: Frames = "latest"
    image_size: int = 448  # longer side of each image sent, px
    max_tokens: int = 512
    temperature: float = 0.2
    seed: int = 0
    limit: int | None = None
    shard: tuple[int, int] = (1, 1)
    all_samples: bool = False  # annotate every sample, not only complex ones
    overwrite: bool = False  # also samples that already have reasoning
    judge_complexity: bool = False
    retry_rejected: bool = False
    progress: bool = True


@dataclass
class Summary:
    selected: int = 0
    cached: int = 0  # answered by an earlier run: nothing sent
    sent: int = 0  # samples asked in this run
    accepted: int = 0
    repaired: int = 0  # accepted after at least one re-ask
    rejected: Counter = field(default_factory=Counter)
    unreachable: int = 0  # no answer after every retry: not cached, a rerun asks again
    requests: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    judged: int = 0
    agree: int = 0
    written: int = 0  # manifest records updated

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "rejected"}
        d["rejected"] = dict(self.rejected)
        d["samples_per_s"] = self.sent / self.seconds if self.seconds > 0 else None
        d["agreement"] = self.agree / self.judged if self.judged else None
        return d


# --- the resume cache --------------------------------------------------------------------
def cache_files(root: Path, tpl: VLMTemplate) -> list[Path]:
    return sorted((root / CACHE_DIR).glob(f"vlm-cache-{tpl.name}-v{tpl.version}-*.jsonl"))


MAX_TEXT = 20_000  # characters of reasoning or a meta-action in a cache entry (the schema's)


def _entry_problem(entry: Any) -> str | None:
    """Why a decoded cache line is not a usable entry, or None."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    for k in ("id", "template", "status"):
        if not isinstance(entry.get(k), str):
            return f"field {k!r} is missing or not text"
    if entry["status"] == "accepted":
        for k in ("reasoning", "meta_action"):
            v = entry.get(k)
            if not isinstance(v, str) or not v or len(v) > MAX_TEXT:
                return f"field {k!r} of an accepted entry is missing, empty or not text"
        if entry.get("vlm_complexity") not in (None, "complex", "straightforward"):
            return "field 'vlm_complexity' is not complex or straightforward"
    elif entry["status"] == "rejected":
        if not isinstance(entry.get("reason"), str):
            return "field 'reason' of a rejected entry is missing or not text"
    else:
        return f"field 'status' is {entry['status']!r}, not accepted or rejected"
    return None


def read_cache(paths: list[Path], key: str) -> dict[str, dict[str, Any]]:
    """Entries by sample id for template `key`; a torn last line (killed run) is ignored, any
    other unreadable line is an error naming the file, the line and the field."""
    out: dict[str, dict[str, Any]] = {}
    for p in paths:
        lines = p.read_bytes().split(b"\n")
        for i, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                problem = _entry_problem(entry)
                if problem is not None:
                    raise ValueError(problem)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                if i == len(lines):  # no newline after it: written by a run killed mid-line
                    continue
                raise AnnotationError(f"{p}:{i}: unusable cache line: {e}") from None
            if entry["template"] == key:
                out[entry["id"]] = entry
    return out


class _CacheWriter:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():  # cut a torn last line (a killed run) so appends start clean
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, entry: dict[str, Any]) -> None:
        self.f.write(json.dumps(entry, ensure_ascii=False, allow_nan=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


# --- one sample ----------------------------------------------------------------------------
class _Client:
    """POSTs chat completions with retries; counts requests, retries and tokens."""

    def __init__(self, opts: VLMOptions, summary: Summary):
        import httpx

        self.opts, self.summary = opts, summary
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        url = endpoint_url(opts.endpoint)
        limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=None)
        self.http = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=opts.timeout,
            limits=limits,
        )
        self.rng = random.Random(opts.seed)

    async def chat(self, messages: list[dict[str, Any]], user: str) -> str:
        """The answer text, or raises _Failed after bounded retries."""
        import httpx

        o = self.opts
        body = {
            "model": o.model,
            "messages": messages,
            "max_tokens": o.max_tokens,
            "temperature": o.temperature,
            "seed": o.seed,
            "user": user,
        }
        last = ""
        for attempt in range(o.max_retries + 1):
            if attempt:
                self.summary.retries += 1
            self.summary.requests += 1
            delay = None
            try:
                status, headers, raw = await self._post(body)
            except (httpx.TimeoutException, httpx.TransportError, TimeoutError) as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            except _TooLarge as e:
                raise _Failed("answer_too_large", str(e)) from None
            else:
                if status == 200:
                    try:
                        data = json.loads(raw)
                        text = data["choices"][0]["message"]["content"]
                        if not isinstance(text, str):
                            raise TypeError("content is not text")
                    except (ValueError, KeyError, IndexError, TypeError, RecursionError) as e:
                        last = f"malformed response: {type(e).__name__}: {e}"
                    else:
                        usage = data.get("usage") if isinstance(data, dict) else None
                        usage = usage if isinstance(usage, dict) else {}
                        self.summary.tokens_in += _count(usage.get("prompt_tokens"))
                        self.summary.tokens_out += _count(usage.get("completion_tokens"))
                        return text
                elif status in FATAL_STATUS:
                    raise AnnotationError(
                        f"{o.endpoint}: HTTP {status} for model {o.model!r}: "
                        f"{_text(raw)} (check --endpoint, --model and the API key)"
                    )
                elif status in RETRY_STATUS:
                    last = f"HTTP {status}"
                    delay = _retry_after(headers.get("retry-after"))
                else:
                    raise _Failed(f"http_{status}", _text(raw))
            if attempt < o.max_retries:
                cap = min(60.0, o.backoff * 2**attempt)
                await asyncio.sleep(
                    delay if delay is not None else cap * (0.5 + self.rng.random() / 2)
                )
        raise _Failed("unreachable", last, transient=True)

    async def _post(self, body: dict[str, Any]) -> tuple[int, Any, bytes]:
        """One request within one overall deadline (a server that drips bytes cannot hold a
        worker past --timeout), reading at most MAX_RESPONSE bytes."""
        async with asyncio.timeout(self.opts.timeout):
            async with self.http.stream("POST", "chat/completions", json=body) as r:
                chunks, size = [], 0
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE:
                        raise _TooLarge(f"the server sent more than {MAX_RESPONSE:,} bytes")
                    chunks.append(chunk)
                return r.status_code, r.headers, b"".join(chunks)

    async def close(self) -> None:
        await self.http.aclose()


def endpoint_url(endpoint: str) -> Any:
    """The API base URL as httpx parses it, or an AnnotationError naming the option."""
    import httpx

    try:
        url = httpx.URL(endpoint.rstrip("/") + "/")
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("expected http(s)://host[:port]/path")
    except (httpx.InvalidURL, ValueError) as e:
        raise AnnotationError(f"--endpoint {endpoint!r} is not a usable URL: {e}") from None
    return url


class _TooLarge(Exception):
    pass


def _count(value: Any) -> int:
    """A token count from a server's `usage`, 0 when it is not a sane number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value) if 0 <= value < 1e12 else 0


def _text(raw: bytes) -> str:
    return raw[:200].decode("utf-8", "replace")


class _Failed(Exception):
    """A request that got no usable answer; `transient` when retrying later may help."""

    def __init__(self, reason: str, detail: str, transient: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.transient = reason, detail, transient


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


async def _annotate_one(
    client: _Client, tpl: VLMTemplate, sample: DrivingSample, root: Path, opts: VLMOptions
) -> dict[str, Any]:
    """Ask, check, re-ask with the reason; the cache entry for this sample."""
    action = hint_action(sample)
    entry: dict[str, Any] = {"id": sample.id, "template": tpl.key, "meta_action": action}
    try:
        messages = await asyncio.to_thread(
            build_messages, tpl, sample, root, opts.frames, opts.image_size, opts.judge_complexity
        )
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # this sample's images
        entry.update(status="rejected", reason="bad_image", detail=str(e)[:500], attempts=0)
        return entry
    verdict: Verdict | None = None
    for attempt in range(opts.repair_attempts + 1):
        try:
            answer = await client.chat(messages, sample.id)
        except _Failed as e:
            if e.transient:  # the server, not the sample: not cached, a rerun asks again
                raise
            entry.update(status="rejected", reason=e.reason, detail=e.detail, attempts=attempt)
            return entry
        verdict = check_answer(
            answer, sample.instruction, action, tpl.max_chars, opts.judge_complexity
        )
        if verdict.ok:
            entry.update(status="accepted", reasoning=verdict.text, attempts=attempt + 1)
            if verdict.complexity is not None:
                entry["vlm_complexity"] = verdict.complexity
            return entry
        messages = repair_messages(tpl, sample, messages, answer, verdict.detail)
    assert verdict is not None
    entry.update(
        status="rejected", reason=verdict.reason, detail=verdict.detail,
        attempts=opts.repair_attempts + 1, answer=answer[:2000],
    )  # fmt: skip
    return entry


# --- a whole dataset -------------------------------------------------------------------------
def select(samples: Iterable[DrivingSample], opts: VLMOptions) -> list[DrivingSample]:
    """This shard's samples that want an annotation, in manifest order, up to the limit
    (streamed: only the chosen samples are kept in memory)."""
    i, n = opts.shard
    keep: list[DrivingSample] = []
    for k, s in enumerate(samples):
        if opts.limit is not None and len(keep) >= opts.limit:
            break
        if k % n != i - 1 or s.future is None:
            continue
        if not (opts.all_samples or s.complex):
            continue
        if s.reasoning and not opts.overwrite:
            continue
        keep.append(s)
    return keep


async def _run(
    todo: list[tuple[DrivingSample, Path]],
    tpl: VLMTemplate,
    opts: VLMOptions,
    summary: Summary,
    cache: _CacheWriter,
    on_entry: Callable[[dict[str, Any]], None],
) -> None:
    from tqdm import tqdm

    client = _Client(opts, summary)
    queue: asyncio.Queue[tuple[DrivingSample, Path]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    bar = tqdm(total=len(todo), desc="annotate vlm", unit="sample", disable=not opts.progress)
    t0 = time.perf_counter()
    streak = [0]  # samples in a row that got no answer at all (server down)

    async def worker() -> None:
        while True:
            try:
                sample, root = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                entry = await _annotate_one(client, tpl, sample, root, opts)
            except _Failed as e:
                summary.unreachable += 1
                streak[0] += 1
                if streak[0] >= max(8, 2 * opts.concurrency):
                    raise AnnotationError(
                        f"{opts.endpoint}: {streak[0]} samples in a row got no answer "
                        f"(last: {e.detail}); answers so far are cached, rerun to resume"
                    ) from None
                bar.update()
                continue
            streak[0] = 0
            cache.write(entry)
            on_entry(entry)
            bar.update()
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(
                tok_s=f"{(summary.tokens_in + summary.tokens_out) / dt:.0f}",
                ok=summary.accepted,
                rej=sum(summary.rejected.values()),
                refresh=False,
            )

    try:
        workers = [asyncio.create_task(worker()) for _ in range(max(1, opts.concurrency))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
    finally:
        bar.close()
        await client.close()


def annotate_vlm(path: str | os.PathLike, opts: VLMOptions) -> Summary:
    """Annotate a dataset's selected samples, then rewrite its manifest once from the cache."""
    from autovla.data.manifest import dataset_root, iter_samples

    tpl = load_template(opts.template)
    endpoint_url(opts.endpoint)  # a typo in the URL is an error before any work
    path = Path(path)
    root = dataset_root(path)
    summary = Summary()
    seen = 0

    def counted() -> Iterator[DrivingSample]:
        nonlocal seen
        for s in iter_samples(path):
            seen += 1
            yield s

    chosen = select(counted(), opts)
    if seen == 0:
        raise AnnotationError(f"no samples found in {path}")
    summary.selected = len(chosen)
    i, n = opts.shard
    mine = root / CACHE_DIR / f"vlm-cache-{tpl.name}-v{tpl.version}-{i}-of-{n}.jsonl"
    done = read_cache(cache_files(root, tpl), tpl.key)
    if opts.retry_rejected:
        done = {k: v for k, v in done.items() if v.get("status") == "accepted"}
    todo = [(s, root) for s in chosen if s.id not in done]
    summary.cached = len(chosen) - len(todo)
    summary.sent = len(todo)
    by_id = {s.id: s for s in chosen}

    def count(entry: dict[str, Any]) -> None:
        if entry["status"] == "accepted":
            summary.accepted += 1
            summary.repaired += int(entry.get("attempts", 1) > 1)
            judged = entry.get("vlm_complexity")
            if judged is not None and by_id[entry["id"]].complex is not None:
                summary.judged += 1
                summary.agree += int((judged == "complex") == by_id[entry["id"]].complex)
        else:
            summary.rejected[entry["reason"]] += 1

    t0 = time.perf_counter()
    if todo:
        cache = _CacheWriter(mine)
        try:
            asyncio.run(_run(todo, tpl, opts, summary, cache, count))
        finally:
            cache.close()
    summary.seconds = time.perf_counter() - t0
    with file_lock(root / CACHE_DIR / "manifest.lock"):  # shards rewrite one manifest in turn
        entries = read_cache(cache_files(root, tpl), tpl.key)
        summary.written = apply_cache(path, entries, f"vlm:{opts.model}:{tpl.key}")
    write_json(mine.with_name(f"vlm-summary-{tpl.name}-v{tpl.version}-{i}-of-{n}.json"),
               summary.to_json())  # fmt: skip
    return summary


def apply_cache(path: Path, entries: dict[str, dict[str, Any]], source: str) -> int:
    """Write accepted answers into the manifest (one atomic rewrite); records changed."""
    from autovla.data.manifest import rewrite_manifest

    def update(s: DrivingSample) -> DrivingSample:
        e = entries.get(s.id)
        if e is None or e.get("status") != "accepted":
            return s
        meta = {**s.meta, "reasoning_source": source}
        if "vlm_complexity" in e:
            meta["vlm_complexity"] = e["vlm_complexity"]
        data = {**s.model_dump(), "reasoning": e["reasoning"], "meta_action": e["meta_action"]}
        try:  # validated like any record: a cache entry never writes what the schema refuses
            return DrivingSample.model_validate({**data, "meta": meta})
        except ValidationError as err:
            raise AnnotationError(
                f"cache entry for sample {s.id!r} does not fit the schema: {err.errors()[0]['msg']}"
            ) from None

    return rewrite_manifest(path, update)
