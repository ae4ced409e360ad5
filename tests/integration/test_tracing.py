"""One message's send, deliver and read spans share its trace id (in-process exporter)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus.envelope import Envelope

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def exporter():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def test_send_deliver_and_read_spans_join_the_message_trace(fresh_env, exporter, agents):
    bus = fresh_env.bus()  # no worker: this process delivers, so all spans are seen here
    sender, reader = agents("s"), agents("r")
    receipt = bus.send_message({"from": sender, "to": reader, "payload": 1})
    # Deliver the very message that was queued (the sender's history holds its wire form).
    stored = Envelope.parse(bus.runtime.store.history(sender, 1, None)[0])
    bus.runtime.deliverer.deliver(stored, attempts=1)
    [message] = bus.read(reader, limit=1)
    spans = {
        s.name: s
        for s in exporter.get_finished_spans()
        if s.attributes.get("bus.message_id") == receipt.id
    }
    assert set(spans) == {"bus.send", "bus.deliver", "bus.read"}
    trace_ids = {format(s.context.trace_id, "032x") for s in spans.values()}
    assert trace_ids == {receipt.trace_id} == {message.trace_id}
    assert spans["bus.deliver"].attributes["bus.recipients"] == 1
