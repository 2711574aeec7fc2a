"""Demo traffic: a small order-processing system of simulated services, instrumented with the
real OpenTelemetry SDK and exporting over OTLP/gRPC, with fault scenarios at configurable rates."""
