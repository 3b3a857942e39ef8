"""A small Python client for apps that call expplatform: standard library only.

    client = Client("https://exp.example.com", "xp_...")
    variant = client.assign("c-1042", ["checkout-button"], attributes={"country": "FR"})["checkout-button"]
    if variant.variant == "green": ...          # None (not enrolled, or unreachable): control
    client.track("c-1042", "purchase", "conversion")
    client.rate("c-1042", "checkout-csat", 4)    # a rating names its question
    client.close()                               # at shutdown: sends what is queued

Two failure policies, because the calls have different jobs:
- ``assign`` sits on a page load, so it is tried once within ``timeout`` and, if the
  service cannot answer (timeout, connection error, 5xx), returns "not enrolled,
  reason unavailable" for the named experiments: the page shows the control
  experience. A 4xx (bad key, bad input) is the caller's bug and raises.
- ``track`` must not lose outcomes, so events are queued, sent by a background
  thread in batches, and retried with backoff on timeouts, connection errors, 429
  and 5xx. A retry re-sends the same events with the same ``event_id``: the service
  stores each id once, so a batch that was stored but whose answer was lost counts
  once. Events the service rejects as invalid are not retried; they and any batch
  given up are reported to ``on_error``.

What the service answered is counted on the client (``accepted``, ``duplicates``,
``rejected`` with ``rejections`` by error code, ``failed``: given up), and
``pending`` says how many events are queued or in flight, so a program that produces
events faster than they are sent can wait instead of filling the queue.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

log = logging.getLogger(__name__)

# "rating" names its question (``metric``); "satisfaction" is the older name of a
# rating, which without a metric means the one question at its stage.
EventType = Literal["conversion", "rating", "satisfaction"]
# Statuses worth sending again: the request may succeed later.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class ClientError(Exception):
    """The service refused a request as malformed or unauthorised (4xx)."""

    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"{status} {error or ''}: {message or body}")
        self.status = status
        self.body = body


class _Unavailable(Exception):
    """No answer worth trusting: timeout, connection error, or a retryable status."""


@dataclass(frozen=True)
class Assignment:
    experiment: str
    variant: str | None
    enrolled: bool
    reason: str | None = None
    forced: bool = False


@dataclass(frozen=True)
class Failure:
    """Events that will not be stored: rejected by the service, or given up after retries."""

    events: tuple[dict[str, Any], ...]
    reason: str


class Client:
    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float = 2.0,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_queue: int = 10_000,
        max_attempts: int = 6,
        backoff: float = 0.5,
        on_error: Callable[[Failure], None] | None = None,
    ) -> None:
        self._base = base_url.rstrip("/") + "/api/v1"
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.timeout = timeout
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.on_error = on_error or (
            lambda failure: log.warning("expplatform: %s (%d events)", failure.reason, len(failure.events))
        )
        self.dropped = 0  # events refused because the queue was full
        # What the service answered (updated by the sender thread):
        self.accepted = 0  # events newly stored
        self.duplicates = 0  # events whose event_id was stored already (counted once)
        self.rejected = 0  # events refused as invalid (not retried)
        self.rejections: Counter[str] = Counter()  # ... by error code
        self.failed = 0  # events given up after the last attempt, or refused with their batch
        self._queue: list[dict[str, Any]] = []
        self._oldest = 0.0  # when the oldest queued event was queued (monotonic)
        self._in_flight = 0
        self._flushing = 0  # callers waiting in flush(): send without waiting for a full batch
        self._closed = False
        self._wake = threading.Condition()
        self._sender = threading.Thread(target=self._run, name="expplatform-events", daemon=True)
        self._sender.start()

    # -- HTTP -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._base + path, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    payload = json.load(exc)
                except ValueError:
                    payload = None
            if exc.code in RETRY_STATUSES:
                raise _Unavailable(f"HTTP {exc.code}") from None
            raise ClientError(exc.code, payload) from None
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, ValueError) as exc:
            raise _Unavailable(str(exc)) from None

    # -- assignment -------------------------------------------------------------------------

    def assign(
        self,
        customer_id: str,
        experiments: Sequence[str] | None = None,
        *,
        stage: str | None = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> dict[str, Assignment]:
        """Experiment key -> assignment. Not enrolled (``variant`` None) means: show
        the control experience."""
        body: dict[str, Any] = {"customer_id": customer_id}
        if experiments is not None:
            body["experiments"] = list(experiments)
        if stage is not None:
            body["stage"] = stage
        if attributes:
            body["attributes"] = dict(attributes)
        try:
            answer = self._request("POST", "/assign", body)
        except _Unavailable as exc:
            log.warning("expplatform: assignment unavailable (%s); serving control", exc)
            return {key: Assignment(key, None, False, "unavailable") for key in experiments or ()}
        return {
            item["experiment"]: Assignment(
                item["experiment"], item.get("variant"), item["enrolled"], item.get("reason"), item.get("forced", False)
            )
            for item in answer["assignments"]
        }

    # -- events -------------------------------------------------------------------------------

    def track(
        self,
        customer_id: str,
        stage: str | None = None,
        type: EventType = "conversion",
        *,
        value: int | None = None,
        metric: str | None = None,
        experiment: str | None = None,
        timestamp: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        """Queue one event and return its id. The timestamp is taken now, so a retry
        later still says when it happened.

        A conversion needs its ``stage``; a rating names its question (``metric``,
        e.g. ``"checkout-csat"``; the stage then follows from the question and may be
        left out) and carries its ``value``."""
        if stage is None and metric is None:
            raise ValueError("an event needs its stage, or a rating its metric (the question)")
        if type == "conversion" and stage is None:
            raise ValueError("a conversion needs its stage")
        event: dict[str, Any] = {"event_id": event_id or uuid.uuid4().hex, "customer_id": customer_id}
        if stage is not None:
            event["stage"] = stage
        event["type"] = type
        event["timestamp"] = (timestamp or datetime.now(UTC)).isoformat()
        if metric is not None:
            event["metric"] = metric
        if value is not None:
            event["value"] = value
        if experiment is not None:
            event["experiment"] = experiment
        with self._wake:
            if self._closed:
                raise RuntimeError("the client is closed")
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                self.on_error(Failure((event,), "queue full"))
                return event["event_id"]
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.append(event)
            if len(self._queue) >= self.batch_size:
                self._wake.notify_all()
        return event["event_id"]

    def rate(
        self,
        customer_id: str,
        metric: str,
        value: int,
        *,
        stage: str | None = None,
        experiment: str | None = None,
        timestamp: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        """Queue a rating of question ``metric`` (e.g. ``"checkout-csat"``): ``track``
        with type ``"rating"``."""
        return self.track(
            customer_id,
            stage,
            "rating",
            value=value,
            metric=metric,
            experiment=experiment,
            timestamp=timestamp,
            event_id=event_id,
        )

    @property
    def pending(self) -> int:
        """Events queued or in flight."""
        with self._wake:
            return len(self._queue) + self._in_flight

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now; True when nothing is left queued or in flight."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            self._flushing += 1
            self._wake.notify_all()
            try:
                while self._queue or self._in_flight:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._wake.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._sender.join(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _next_batch(self) -> list[dict[str, Any]] | None:
        """Wait for a full batch, the oldest event's flush interval, a flush or close;
        None once closed and empty. Called with the lock held."""
        while True:
            if self._queue:
                waited = time.monotonic() - self._oldest
                if (
                    len(self._queue) >= self.batch_size
                    or self._flushing
                    or self._closed
                    or waited >= self.flush_interval
                ):
                    batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
                    self._oldest = time.monotonic()
                    self._in_flight = len(batch)
                    return batch
                self._wake.wait(self.flush_interval - waited)
            elif self._closed:
                return None
            else:
                self._wake.wait()

    def _run(self) -> None:
        while True:
            with self._wake:
                batch = self._next_batch()
            if batch is None:
                return
            try:
                self._send(batch)
            finally:
                with self._wake:
                    self._in_flight = 0
                    self._wake.notify_all()

    def _send(self, batch: list[dict[str, Any]]) -> None:
        for attempt in range(self.max_attempts):
            try:
                result = self._request("POST", "/events", {"events": batch})
            except _Unavailable as exc:
                if attempt == self.max_attempts - 1:
                    self._count(failed=len(batch))
                    self.on_error(Failure(tuple(batch), f"gave up after {self.max_attempts} attempts: {exc}"))
                    return
                time.sleep(self.backoff * 2**attempt)
                continue
            except ClientError as exc:
                self._count(failed=len(batch))
                self.on_error(Failure(tuple(batch), f"refused: {exc}"))
                return
            rejected = result.get("rejected") or []
            self._count(
                accepted=result.get("accepted", 0),
                duplicates=result.get("duplicates", 0),
                rejections=[r.get("error", "") for r in rejected],
            )
            if rejected:
                self.on_error(
                    Failure(
                        tuple(batch[r["index"]] for r in rejected),
                        "rejected: " + "; ".join(f"{r['error']} ({r['message']})" for r in rejected),
                    )
                )
            return

    def _count(
        self, *, accepted: int = 0, duplicates: int = 0, rejections: Sequence[str] = (), failed: int = 0
    ) -> None:
        with self._wake:
            self.accepted += accepted
            self.duplicates += duplicates
            self.rejected += len(rejections)
            self.rejections.update(rejections)
            self.failed += failed
