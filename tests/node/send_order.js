// A second, independent OTLP client: the OpenTelemetry Node.js SDK exporting over gRPC.
// Usage: node send_order.js <host:port> <order-id>
// Emits one order as three Node "services": checkout (root span with the order id, ends last),
// payment (child span via W3C context, with an event) and fulfilment (a queue consumer in its own
// trace, joined by a span link). Prints {"trace": ..., "consumerTrace": ...} as JSON.
'use strict';

const api = require('@opentelemetry/api');
const { TracerProvider, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');

const [endpoint, orderId] = process.argv.slice(2);
if (!endpoint || !orderId) {
  console.error('usage: node send_order.js <host:port> <order-id>');
  process.exit(2);
}

function provider(service) {
  const exporter = new OTLPTraceExporter({ url: `http://${endpoint}` });
  return new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': service }),
    spanProcessors: [new SimpleSpanProcessor({ exporter })],
  });
}

async function main() {
  const providers = ['checkout', 'payment', 'inventory', 'shipping', 'fulfilment'].map(provider);
  const [checkout, payment, inventory, shipping, fulfilment] = providers.map((p) => p.getTracer('node-client'));

  const root = checkout.startSpan('PlaceOrder', {}, api.ROOT_CONTEXT);
  const ctx = api.trace.setSpan(api.ROOT_CONTEXT, root);

  const charge = payment.startSpan('Charge', { kind: api.SpanKind.SERVER }, ctx);
  charge.end();
  const reserve = inventory.startSpan('Reserve', {}, ctx);
  reserve.addEvent('inventory.reserved', { sku: 'SKU-7' });
  reserve.end();
  const ship = shipping.startSpan('ShipOrder', {}, ctx);
  ship.end();

  root.setAttribute('app.order.id', orderId);
  root.end();

  // the queue consumer: a new trace, linked to the checkout span
  const consume = fulfilment.startSpan(
    'orders process',
    { kind: api.SpanKind.CONSUMER, links: [{ context: root.spanContext() }] },
    api.ROOT_CONTEXT,
  );
  consume.end();

  for (const p of providers) {
    await p.forceFlush();
    await p.shutdown();
  }
  console.log(JSON.stringify({ trace: root.spanContext().traceId, consumerTrace: consume.spanContext().traceId }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
