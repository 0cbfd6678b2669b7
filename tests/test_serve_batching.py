"""Dynamic batching: the queue on its own (fake work), then the real service over loopback HTTP
(N concurrent requests give the plans of N single requests)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from autovla.integrations.client import PlanClient
from autovla.model.planner import Planner
from autovla.serve.app import BackgroundServer
from autovla.serve.batching import Batcher
from autovla.serve.engine import PlanOptions, batch_key
from autovla.serve.errors import ServiceError
from tests.model_fixtures import dataset, sample, tiny_vla
from tests.model_fixtures import one_torch_thread as one_torch_thread  # autouse fixture
from tests.serve_fixtures import REASONING, make_app


# --- the queue alone -------------------------------------------------------------------------
def run_async(coro):
    return asyncio.run(coro)


def test_batches_by_wait_size_and_key():
    calls: list[tuple] = []

    def work(key, payloads):
        calls.append((key, list(payloads)))
        time.sleep(0.01)
        return [f"{key}:{p}" for p in payloads]

    async def main():
        b = Batcher(work, max_batch=3, max_wait_s=0.05)
        await b.start()
        jobs = [b.submit("a" if i % 2 == 0 else "b", i, timeout_s=5) for i in range(7)]
        out = await asyncio.gather(*jobs)
        await b.stop()
        return out

    out = run_async(main())
    assert [r for r, _ in out] == [f"{'a' if i % 2 == 0 else 'b'}:{i}" for i in range(7)]
    # keys never mix; a batch closes at max_batch; oldest key first
    assert calls == [("a", [0, 2, 4]), ("b", [1, 3, 5]), ("a", [6])]
    assert [info.size for _, info in out] == [3, 3, 3, 3, 3, 3, 1]


def test_first_request_waits_at_most_max_wait():
    def work(key, payloads):
        return list(payloads)

    async def main():
        b = Batcher(work, max_batch=8, max_wait_s=0.05)
        await b.start()
        t = time.perf_counter()
        (res, info) = await b.submit("k", 1, timeout_s=5)
        waited = time.perf_counter() - t
        await b.stop()
        return res, info, waited

    res, info, waited = run_async(main())
    assert res == 1 and info.size == 1 and 0.04 <= waited < 1.0


def test_timed_out_requests_are_dropped_and_failures_isolated():
    seen: list[list] = []

    def work(key, payloads):
        seen.append(list(payloads))
        if "bad" in payloads and len(payloads) > 1:
            raise ValueError("one bad request spoils the batch")
        if payloads == ["bad"]:
            raise ValueError("bad request")
        time.sleep(0.2 if payloads == ["slow"] else 0.0)
        return list(payloads)

    async def main():
        b = Batcher(work, max_batch=4, max_wait_s=0.02)
        await b.start()
        slow = asyncio.create_task(b.submit("k", "slow", timeout_s=5))
        await asyncio.sleep(0.05)  # "slow" is running: the next one queues behind it
        with pytest.raises(ServiceError) as late:
            await b.submit("k", "late", timeout_s=0.05)
        assert late.value.status == 504 and late.value.code == "timeout"
        ok, bad = await asyncio.gather(
            b.submit("k", "ok", timeout_s=5), b.submit("k", "bad", timeout_s=5),
            return_exceptions=True,
        )  # fmt: skip
        await slow
        await b.stop()
        with pytest.raises(ServiceError) as closed:
            await b.submit("k", "after", timeout_s=1)
        assert closed.value.status == 503
        return ok, bad

    ok, bad = run_async(main())
    assert ok[0] == "ok" and isinstance(bad, ValueError)
    assert all("late" not in s for s in seen)  # dropped before its batch ran
    assert ["ok", "bad"] in seen and ["ok"] in seen and ["bad"] in seen


def test_stop_finishes_what_was_admitted():
    def work(key, payloads):
        time.sleep(0.05)
        return list(payloads)

    async def main():
        b = Batcher(work, max_batch=2, max_wait_s=1.0)
        await b.start()
        tasks = [asyncio.create_task(b.submit("k", i, timeout_s=10)) for i in range(5)]
        await asyncio.sleep(0.01)
        await b.stop()  # does not wait the full max_wait: closing flushes
        assert all(it.done() for it in b._pending) and b.waiting == 0
        done = await asyncio.wait_for(asyncio.gather(*tasks), 0.5)  # answered, not timed out
        return [r for r, _ in done]

    t = time.perf_counter()
    assert run_async(main()) == [0, 1, 2, 3, 4]
    assert time.perf_counter() - t < 1.0


def test_batch_keys():
    greedy = PlanOptions(mode="fast", seed=1, top_p=0.5)
    assert batch_key(greedy) == batch_key(PlanOptions(mode="fast", seed=2))  # seed irrelevant
    assert batch_key(greedy) != batch_key(PlanOptions(mode="slow"))
    seeded = PlanOptions(temperature=1.0, seed=4)
    assert batch_key(seeded) != batch_key(seeded)  # seeded sampling is planned alone
    unseeded = PlanOptions(temperature=1.0)
    assert batch_key(unseeded) == batch_key(PlanOptions(temperature=1.0))


# --- the real service ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def more_samples(tmp_path_factory):
    """Six samples: the three of the shared dataset and three more with other images."""
    root, samples = dataset()
    extra = tmp_path_factory.mktemp("more")
    return [(root, s) for s in samples] + [(extra, sample(i, extra)) for i in range(3, 6)]


def _request(root, s, **options):
    from autovla.integrations.client import request_from_sample

    return request_from_sample(s, root, max_reasoning_tokens=REASONING, **options)


def test_concurrent_equals_single(more_samples):
    planner = Planner(tiny_vla(), max_reasoning_tokens=REASONING)
    app = make_app(max_batch=8, max_wait_ms=300.0)
    cases = [(root, s, {"mode": "auto"}) for root, s in more_samples]
    cases += [(root, s, {"mode": "fast", "action_choice": "expected"})
              for root, s in more_samples[3:]]  # fmt: skip
    cases += [(root, s, {"temperature": 1.0, "seed": 10 + i})
              for i, (root, s) in enumerate(more_samples[:3])]  # fmt: skip
    with BackgroundServer(app) as server:
        client = PlanClient(server.url)
        with ThreadPoolExecutor(len(cases)) as pool:
            replies = list(pool.map(lambda c: client.plan(_request(c[0], c[1], **c[2])), cases))
    assert max(r.batch_size for r in replies) > 1  # concurrent greedy requests were batched
    for (root, s, opts), reply in zip(cases, replies, strict=True):
        p = planner
        if opts.get("action_choice") == "expected":
            p = Planner(tiny_vla(), max_reasoning_tokens=REASONING, action_choice="expected")
        kw = {k: v for k, v in opts.items() if k != "action_choice"}
        (single,) = p.plan([s], root, **kw)
        assert reply.plans[0].action_ids == single.action_ids, (s.id, opts)
        assert reply.plans[0].text == single.text
        if "seed" in opts:
            assert reply.batch_size == 1
