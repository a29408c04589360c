"""Slots of Prefect global concurrency limits held as leases over one API client, renewed by one thread.

``prefect.concurrency.sync.concurrency`` costs a context manager, events and a renewal thread per
acquisition; a run that holds each slot of the endpoint's cap as its own lease (to hand back
exactly the ones it stops using) takes and returns slots often, so it talks to the API directly:
one call to take a lease, one to release it, and one renewal loop for all of them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from uuid import UUID

logger = logging.getLogger("docflow.leases")

# Prefect's client sleeps 2, 4, 8 … s before retrying a 503 (its SQLite database locked by
# another writer, common on a loaded machine): a run's first slot waited 2.3 s of its 5 s for
# one. Lease calls are short writes, so they retry here instead, quickly, for about as long.
RETRY_STATUS = frozenset({408, 429, 502, 503})
RETRY_DELAYS_S = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0, 2.0)


class LimitMissing(LookupError):
    """The global concurrency limit does not exist (or is inactive)."""


class LeaseBook:
    """Leases this process holds on Prefect global concurrency limits, renewed until released."""

    def __init__(self, *, lease_s: float) -> None:
        self.lease_s = lease_s
        self._leases: set[UUID] = set()
        self._lock = threading.Lock()
        self._client: Any = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _api(self) -> Any:
        if self._client is None:
            from prefect.client.orchestration import get_client

            self._client = get_client(sync_client=True)
            self._client.__enter__()
        return self._client

    def take(self, name: str, slots: int) -> UUID | None:
        """A lease on ``slots`` slots of limit ``name``, or None when they are not free now."""
        from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
        from prefect.exceptions import PrefectHTTPStatusError

        body = {"names": [name], "slots": slots, "mode": "concurrency"}
        response = self._post(
            "/v2/concurrency_limits/increment-with-lease", {**body, "lease_duration": self.lease_s}
        )
        if response.status_code == 423:  # locked: not enough slots free
            return None
        if response.is_error:
            raise PrefectHTTPStatusError.from_httpx_error(_status_error(response))
        granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
        if not granted.limits:
            raise LimitMissing(name)
        with self._lock:
            self._leases.add(granted.lease_id)
        self._start_renewing()
        return granted.lease_id

    def active_slots(self, name: str) -> int | None:
        """Slots of limit ``name`` held by everyone now, or None when it does not exist."""
        from prefect.exceptions import ObjectNotFound

        try:
            return int(self._api().read_global_concurrency_limit_by_name(name).active_slots)
        except ObjectNotFound:
            return None

    def release(self, lease_id: UUID) -> None:
        """Give a lease's slots back (a lease already gone is fine: it lapsed)."""
        with self._lock:
            self._leases.discard(lease_id)
        response = self._post(
            "/v2/concurrency_limits/decrement-with-lease", {"lease_id": str(lease_id)}
        )
        if response.is_error:
            logger.debug("lease %s was already gone: %s", lease_id, response.text)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        """POST through the API client's connection pool without its multi-second back-off:
        a retryable answer (or a dropped connection) is tried again after RETRY_DELAYS_S."""
        import httpx

        http = self._api()._client  # httpx.Client subclass whose send() adds Prefect's retries
        request = http.build_request("POST", path, json=body)
        for delay in (*RETRY_DELAYS_S, None):
            try:
                response = httpx.Client.send(http, request)
            except httpx.TransportError as exc:
                if delay is None:
                    raise
                logger.debug("lease call %s failed (%s); again in %.2f s", path, exc, delay)
            else:
                if response.status_code not in RETRY_STATUS or delay is None:
                    return response
                logger.debug(
                    "lease call %s: %d; again in %.2f s", path, response.status_code, delay
                )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Release every lease still held and stop renewing."""
        with self._lock:
            held = list(self._leases)
        for lease_id in held:
            self.release(lease_id)
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._client = None

    def _start_renewing(self) -> None:
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew_loop, name="docflow-lease-renewal", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        """Renew every held lease each third of its duration (its own client: clients are per thread)."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.lease_s / 3):
                with self._lock:
                    held = list(self._leases)
                for lease_id in held:
                    try:
                        client.renew_concurrency_lease(
                            lease_id=lease_id, lease_duration=self.lease_s
                        )
                    except Exception as exc:  # the next round tries again; a lapse frees the slot
                        logger.warning("could not renew concurrency lease %s: %s", lease_id, exc)


def _status_error(response: Any) -> Any:
    """The httpx.HTTPStatusError of an error response (what Prefect's client would raise)."""
    import httpx

    return httpx.HTTPStatusError(
        f"{response.status_code} from {response.request.url}: {response.text[:200]}",
        request=response.request,
        response=response,
    )
