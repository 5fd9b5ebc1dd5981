-- Issue 7 (observability): the W3C trace context of the command that wrote an outbox event, so
-- that the relay delivers it within the same trace (the order saga then joins the PlaceOrder
-- trace). NULL when tracing was off; older rows stay NULL.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
